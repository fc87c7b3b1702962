"""Adan: adaptive Nesterov momentum (Xie, Zhou, Li, Lin & Yan, arXiv 2208.06677, Algorithm 1), in the authors'
released form (sail-sg/Adan), betas as EMA keep factors (β here = 1 − the paper's β; paper defaults 0.02, 0.08, 0.01):

    Δ = g − g_prev   (Δ = 0 at the first step and after a restart)
    m ← β₁m + (1−β₁)g ;  d ← β₂d + (1−β₂)Δ ;  n ← β₃n + (1−β₃)(g + β₂Δ)²
    s = η · (m/(1−β₁ᵗ) + β₂·d/(1−β₂ᵗ)) / (√(n/(1−β₃ᵗ)) + ε)
    θ ← (θ − s)/(1 + ηλ)            (the paper's proximal decoupled decay; no_prox=True: θ ← θ(1 − ηλ) − s)

``decay_mode="independent"`` replaces ηλ by λη/η₀ in both forms; ``"coupled"`` adds λθ to g instead.

The paper's Algorithm 1 writes the EMAs without bias correction and starts them from the first gradient
(m₀ = g₀, n₀ = g₀²); the authors' code, followed here and by ``pytorch_optimizer.Adan``, starts them at zero and
bias-corrects them. Both give the same first step (θ ← θ − η g/(|g| + ε)); they differ only in how the first few
EMA steps are weighted. The restart of Algorithm 1 (lines 8-10: the moments and the step count start again from
the next gradient) is ``Adan.restart()``, as the authors' ``restart_opt()``; when to restart is the caller's
condition. The authors' optional global gradient-norm clipping (``max_grad_norm``) is left to
``torch.nn.utils.clip_grad_norm_``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["Adan"]

_MOMENTS = ("exp_avg", "exp_avg_diff", "exp_avg_sq")


class Adan(ElementwiseOptimizer):
    """Adan with the paper's defaults β = (0.98, 0.92, 0.99) (the paper's 0.02, 0.08, 0.01), ε = 1e-8.

    ``weight_decay`` is the paper's proximal decoupled decay θ ← (θ − s)/(1 + ηλ) (``no_prox=True``: AdamW's
    θ ← θ(1 − ηλ) − s); it is never masked by ``cautious``.
    """

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float, float] = (0.98, 0.92, 0.99),
                 eps: float = 1e-8, weight_decay: float = 0.0, no_prox: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, no_prox=no_prox),
                         **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "eps", "weight_decay")
        V.betas(group["betas"], 3)
        V.flag("no_prox", group["no_prox"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return _MOMENTS + ("pre_grad",)

    @torch.no_grad()
    def restart(self) -> None:
        """Restart every parameter (Algorithm 1, lines 8-10): step counts and moments back to zero, so the next
        step starts the EMAs and their bias corrections afresh from its gradient (with Δ = 0)."""
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    st["step"].zero_()
                    for key in _MOMENTS:
                        st[key].zero_()

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2, b3 = group["betas"]
        return {"lr": group["lr"], "b1": b1, "b2": b2, "b3": b3, "eps": group["eps"],
                "bc1": 1 - b1**step, "bc2": 1 - b2**step, "bc3_sqrt": math.sqrt(1 - b3**step),
                "diff_on": 0.0 if step == 1 else 1.0}

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        # the base multiplies θ by c["decay"] = 1 − x before subtracting s; the proximal form wants
        # θ ← (θ − s)/(1 + x), i.e. the multiplier 1/(1 + x) and the step s/(1 + x)
        x = 1.0 - c["decay"]
        prox = 1.0 / (1.0 + x) if x and not group["no_prox"] else None
        c = {**c, "prox": 1.0 if prox is None else prox, "decay": c["decay"] if prox is None else prox}
        super()._run_kernel(group, ps, gs, sts, keys, c)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, d, n, prev = st["exp_avg"], st["exp_avg_diff"], st["exp_avg_sq"], st["pre_grad"]
        diff = (g - prev) * c["diff_on"]
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        d.mul_(c["b2"]).add_(diff * (1 - c["b2"]))
        nesterov = g + c["b2"] * diff
        n.mul_(c["b3"]).add_(nesterov * nesterov * (1 - c["b3"]))
        prev.copy_(g)
        direction = m / c["bc1"] + (c["b2"] / c["bc2"]) * d
        return (c["lr"] * c["prox"]) * direction / (n.sqrt() / c["bc3_sqrt"] + c["eps"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, d, n, prev = st["exp_avg"], st["exp_avg_diff"], st["exp_avg_sq"], st["pre_grad"]
        diff = torch._foreach_sub(gs, prev)
        torch._foreach_mul_(diff, c["diff_on"])
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, gs, alpha=1 - c["b1"])
        torch._foreach_mul_(d, c["b2"])
        torch._foreach_add_(d, diff, alpha=1 - c["b2"])
        nesterov = torch._foreach_add(gs, diff, alpha=c["b2"])
        torch._foreach_mul_(n, c["b3"])
        torch._foreach_addcmul_(n, nesterov, nesterov, value=1 - c["b3"])
        torch._foreach_copy_(prev, gs)
        direction = torch._foreach_div(m, c["bc1"])
        torch._foreach_add_(direction, d, alpha=c["b2"] / c["bc2"])
        denom = torch._foreach_sqrt(n)
        torch._foreach_div_(denom, c["bc3_sqrt"])
        torch._foreach_add_(denom, c["eps"])
        torch._foreach_div_(direction, denom)
        torch._foreach_mul_(direction, c["lr"] * c["prox"])
        return direction


register(OptimizerInfo(
    name="adan", cls=Adan, family="adaptive", paper="arXiv:2208.06677",
    description="Adan: Nesterov momentum estimation with EMAs of g, of g − g_prev and of (g + β₂Δ)², bias-corrected; "
                "the paper's proximal decoupled decay θ ← (θ − s)/(1 + ηλ) (no_prox=True: AdamW's).",
    state_tensors=4, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
