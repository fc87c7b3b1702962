"""NAdam: Adam with Nesterov momentum and a warming momentum schedule (Dozat 2016, "Incorporating Nesterov
Momentum into Adam", ICLR workshop), in torch.optim.NAdam's convention:

    μ_t = β₁(1 − ½·0.96^(tψ)) ;  Π_t = Π_{t−1}·μ_t   (Π_0 = 1, kept per parameter as ``mu_product``)
    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g² ;  v̂ = v/(1−β₂ᵗ)
    θ ← θ − η [(1−μ_t)/(1−Π_t) · g + μ_{t+1}/(1−Π_t μ_{t+1}) · m] / (√v̂ + ε)

``weight_decay`` is L2 unless ``decoupled_weight_decay=True`` (NAdamW, ``θ ← θ(1 − ηλ)``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach

__all__ = ["NAdam"]


class DecoupledFlagMixin:
    """torch's ``decoupled_weight_decay`` flag, mapped onto the shared ``decay_mode`` option: the flag picks the
    default mode ("decoupled" if set, else "coupled"); an explicitly given ``decay_mode`` wins. Resolved when
    a group is created (constructor defaults, or a group dict naming the flag but no ``decay_mode``)."""

    @staticmethod
    def _mode_from_flag(options: dict[str, Any], flag: Any) -> dict[str, Any]:
        if "decay_mode" not in options and isinstance(flag, bool):
            options = {**options, "decay_mode": "decoupled" if flag else "coupled"}
        return options

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if "decoupled_weight_decay" in param_group:
            param_group = self._mode_from_flag(param_group, param_group["decoupled_weight_decay"])
        super().add_param_group(param_group)


class NAdam(DecoupledFlagMixin, ElementwiseOptimizer):
    """NAdam (torch defaults: lr 2e-3, ψ = ``momentum_decay`` 4e-3); ``decoupled_weight_decay=True`` is NAdamW."""

    default_decay_mode = "coupled"

    def __init__(self, params: Any, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay, decoupled_weight_decay=decoupled_weight_decay),
                         **self._mode_from_flag(options, decoupled_weight_decay))

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.nonneg("momentum_decay", group["momentum_decay"])
        V.flag("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "mu_product")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        # a float32 0-d scalar like torch's (parity needs the same rounding of the product)
        state["mu_product"] = torch.ones((), dtype=torch.float32, device=p.device)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As the base; a ``mu_product`` cast to bf16/fp16 with a low-precision parameter goes back to float32."""
        super().load_state_dict(state_dict)
        for st in self.state.values():
            pi = st.get("mu_product")
            if isinstance(pi, Tensor) and pi.dtype in (torch.bfloat16, torch.float16):
                st["mu_product"] = pi.float()

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        psi = group["momentum_decay"]
        return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "bc2": 1 - b2**step,
                "mu": b1 * (1.0 - 0.5 * 0.96 ** (step * psi)),
                "mu_next": b1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * psi))}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = adam_moments(g, st, c)
        pi = st["mu_product"]
        pi.mul_(c["mu"])
        prod = pi.to(torch.float64)  # 0-d: the coefficients are formed in double, like torch's Python floats
        coef_g = c["lr"] * (1 - c["mu"]) / (1 - prod)
        coef_m = c["lr"] * c["mu_next"] / (1 - prod * c["mu_next"])
        return (g * coef_g + m * coef_m) / ((v / c["bc2"]).sqrt() + c["eps"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = adam_moments_foreach(gs, st, c)
        pis = st["mu_product"]
        torch._foreach_mul_(pis, c["mu"])
        prods = torch.stack([x.to(torch.float64) for x in pis]).tolist()
        lr, mu, mu_next = c["lr"], c["mu"], c["mu_next"]
        denom = torch._foreach_div(v, c["bc2"])
        torch._foreach_sqrt_(denom)
        torch._foreach_add_(denom, c["eps"])
        steps = torch._foreach_mul(gs, [lr * (1 - mu) / (1 - x) for x in prods])
        torch._foreach_add_(steps, torch._foreach_mul(m, [lr * mu_next / (1 - x * mu_next) for x in prods]))
        torch._foreach_div_(steps, denom)
        return steps


_NADAM = dict(family="adaptive", state_tensors=2, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05})
register(OptimizerInfo(name="nadam", cls=NAdam, paper="Dozat 2016 (ICLR workshop); torch.optim.NAdam",
                       description="Adam with Nesterov momentum and the μ_t warm-up schedule; L2 weight decay.",
                       torch_equivalent=("NAdam", {}), **_NADAM))
register(OptimizerInfo(name="nadamw", cls=NAdam, preset={"decoupled_weight_decay": True},
                       paper="Dozat 2016; arXiv:1711.05101",
                       description="NAdam with decoupled weight decay θ ← θ(1 − ηλ).",
                       torch_equivalent=("NAdam", {"decoupled_weight_decay": True}), **_NADAM))
