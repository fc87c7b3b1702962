"""RAdam: Adam with the variance of the adaptive lr rectified (Liu et al., arXiv 1908.03265), in
torch.optim.RAdam's convention (rectify when ρ_t > 5, ε added to √v before the √(1−β₂ᵗ) correction):

    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g² ;  m̂ = m/(1−β₁ᵗ)
    ρ_∞ = 2/(1−β₂) − 1 ;  ρ_t = ρ_∞ − 2tβ₂ᵗ/(1−β₂ᵗ)
    ρ_t > 5:  r_t = √[(ρ_t−4)(ρ_t−2)ρ_∞ / ((ρ_∞−4)(ρ_∞−2)ρ_t)] ;  θ ← θ − η r_t m̂ √(1−β₂ᵗ)/(√v + ε)
    else:     θ ← θ − η m̂            (un-normalised momentum SGD: the first 5 steps with β₂ = 0.999)

``weight_decay`` is L2 unless ``decoupled_weight_decay=True`` (``θ ← θ(1 − ηλ)``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach
from .nadam import DecoupledFlagMixin

__all__ = ["RAdam"]


class RAdam(DecoupledFlagMixin, ElementwiseOptimizer):
    """RAdam (torch defaults: lr 1e-3, β (0.9, 0.999), ε 1e-8)."""

    default_decay_mode = "coupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decoupled_weight_decay: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay),
                         **self._mode_from_flag(options, decoupled_weight_decay))

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.flag("decoupled_weight_decay", group["decoupled_weight_decay"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    @staticmethod
    def rho(step: int, beta2: float) -> float:
        """The length ρ_t of the approximated simple moving average."""
        rho_inf = 2 / (1 - beta2) - 1
        return rho_inf - 2 * step * beta2**step / (1 - beta2**step)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        b1, b2 = group["betas"]
        lr, bc1, bc2 = group["lr"], 1 - b1**step, 1 - b2**step
        rho_inf, rho_t = 2 / (1 - b2) - 1, self.rho(step, b2)
        rectify = rho_t > 5.0
        rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) \
            if rectify else 0.0
        # ``rectify`` is a Python bool: the compiled path specialises on it (two graphs in all)
        return {"lr": lr, "b1": b1, "b2": b2, "eps": group["eps"], "rectify": rectify,
                "step_size": lr * rect * math.sqrt(bc2) / bc1 if rectify else lr / bc1}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = adam_moments(g, st, c)
        if c["rectify"]:
            return c["step_size"] * m / (v.sqrt() + c["eps"])
        return c["step_size"] * m

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = adam_moments_foreach(gs, st, c)
        steps = torch._foreach_mul(m, c["step_size"])
        if c["rectify"]:
            denom = torch._foreach_sqrt(v)
            torch._foreach_add_(denom, c["eps"])
            torch._foreach_div_(steps, denom)
        return steps


register(OptimizerInfo(
    name="radam", cls=RAdam, family="adaptive", paper="arXiv:1908.03265; torch.optim.RAdam",
    description="Rectified Adam: momentum SGD while ρ_t ≤ 5, then Adam with the variance rectification r_t.",
    state_tensors=2, has_betas=True, has_momentum=True, torch_equivalent=("RAdam", {}),
    test_hparams={"lr": 0.05},
))
