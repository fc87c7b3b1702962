"""AdaBound and AMSBound (Luo et al., ICLR 2019, arXiv 1902.09843): Adam whose per-coordinate step size is
clipped into bounds that converge to a constant SGD step:

    g ← g + λθ                                     (coupled L2 by default; "decoupled" gives AdaBoundW)
    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g² ;  v̂ = max(v̂, v) (amsbound) or v
    a_t = η√(1−β₂ᵗ)/(1−β₁ᵗ) / (√v̂ + ε)            (bias corrections folded into the step size)
    η*  = final_lr · η/η₀                          (η₀ = the group's initial lr: schedulers rescale the bounds)
    lo_t = η*(1 − 1/(γt + 1)) ;  hi_t = η*(1 + 1/(γt))
    θ ← θ − clip(a_t, lo_t, hi_t) ⊙ m

With γ = 0 there is no bound (hi = ∞, lo = 0): Adam with the step size above.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import LR0, ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach

__all__ = ["AdaBound"]


class AdaBound(ElementwiseOptimizer):
    """AdaBound (``amsbound=True``: AMSBound). Changing a group's ``lr`` moves the bounds with it; a group
    built with ``lr=0`` has no reference lr, so its bounds are ``final_lr`` whenever ``lr > 0``."""

    default_decay_mode = "coupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 final_lr: float = 0.1, gamma: float = 1e-3, eps: float = 1e-8, weight_decay: float = 0.0,
                 amsbound: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, final_lr=final_lr, gamma=gamma, eps=eps,
                                      weight_decay=weight_decay, amsbound=amsbound), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.nonneg("final_lr", group["final_lr"])
        V.in_range("gamma", group["gamma"], 0.0, 1.0)
        V.flag("amsbound", group["amsbound"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsbound"] else ())

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        lr, (b1, b2), gamma = group["lr"], group["betas"], group["gamma"]
        lr0 = group[LR0]  # the lr at construction, as the reference's base_lr
        ratio = lr / lr0 if lr0 > 0 else float(lr > 0)
        target = group["final_lr"] * ratio
        return {"b1": b1, "b2": b2, "eps": group["eps"],
                "step_size": lr * math.sqrt(1 - b2**step) / (1 - b1**step),
                "lower": target * (1 - 1 / (gamma * step + 1)),
                "upper": target * (1 + 1 / (gamma * step)) if gamma > 0 else math.inf}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["amsbound"],)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = adam_moments(g, st, c, amsgrad=flags[0])
        rate = c["step_size"] / (v.sqrt() + c["eps"])
        return torch.clamp(rate, min=c["lower"], max=c["upper"]) * m

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = adam_moments_foreach(gs, st, c, amsgrad=flags[0])
        rate = torch._foreach_sqrt(v)
        torch._foreach_add_(rate, c["eps"])
        torch._foreach_reciprocal_(rate)
        torch._foreach_mul_(rate, c["step_size"])
        torch._foreach_clamp_min_(rate, c["lower"])
        torch._foreach_clamp_max_(rate, c["upper"])
        torch._foreach_mul_(rate, m)
        return rate


_BOUND = dict(family="adaptive", paper="arXiv:1902.09843", has_betas=True, has_momentum=True,
              test_hparams={"lr": 0.05})
register(OptimizerInfo(name="adabound", cls=AdaBound, state_tensors=2,
                       description="AdaBound: Adam step sizes clipped into bounds converging to final_lr (SGD).",
                       **_BOUND))
register(OptimizerInfo(name="amsbound", cls=AdaBound, preset={"amsbound": True}, state_tensors=3,
                       description="AMSBound: AdaBound with the running maximum of v.", **_BOUND))
