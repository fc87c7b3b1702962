"""EXAdam (Adly, arXiv 2412.20302), the latest official form (no ln-schedule on the step size):

    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g²
    d₁ = 1 + β₂ᵗ · v/(v + ε) ;  d₂ = 1 + β₁ᵗ · m²/(m² + ε)
    m̃ = d₁ m/(1−β₁ᵗ) ;  g̃ = d₁ g/(1−β₁ᵗ) ;  ṽ = d₂ v/(1−β₂ᵗ)
    θ ← θ(1 − ηλ) − η (m̃ + g̃)/(√ṽ + ε)

The bias-corrected current gradient g̃ makes the early steps large: with a constant gradient the step is
15.95η, 9.30η, 7.12η, … and tends to 2η (twice Adam's), so use warmup and a smaller lr than Adam's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach

__all__ = ["EXAdam"]


class EXAdam(ElementwiseOptimizer):
    """EXAdam; ``eps`` (> 0) also smooths the debiasing ratios; ``weight_decay`` decoupled."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.betas(group["betas"])
        V.positive("eps", group["eps"])  # v/(v + ε) is 0/0 for a never-seen coordinate when ε = 0
        V.nonneg("weight_decay", group["weight_decay"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "b1t": b1**step, "b2t": b2**step,
                "step_size": group["lr"] / (1 - b1**step), "bc2": 1 - b2**step}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = adam_moments(g, st, c)
        m2 = m * m
        d1 = 1 + c["b2t"] * (v / (v + c["eps"]))
        d2 = 1 + c["b1t"] * (m2 / (m2 + c["eps"]))
        denom = (d2 * v / c["bc2"]).sqrt() + c["eps"]
        return c["step_size"] * (d1 * (m + g)) / denom

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = adam_moments_foreach(gs, st, c)
        m2 = torch._foreach_mul(m, m)
        d1 = torch._foreach_div(v, torch._foreach_add(v, c["eps"]))       # v/(v + ε)
        torch._foreach_mul_(d1, c["b2t"])
        torch._foreach_add_(d1, 1.0)
        d2 = torch._foreach_div(m2, torch._foreach_add(m2, c["eps"]))     # m²/(m² + ε)
        torch._foreach_mul_(d2, c["b1t"])
        torch._foreach_add_(d2, 1.0)
        torch._foreach_mul_(d2, v)
        torch._foreach_div_(d2, c["bc2"])
        torch._foreach_sqrt_(d2)
        torch._foreach_add_(d2, c["eps"])
        steps = torch._foreach_add(m, gs)
        torch._foreach_mul_(steps, d1)
        torch._foreach_div_(steps, d2)
        torch._foreach_mul_(steps, c["step_size"])
        return steps


register(OptimizerInfo(
    name="exadam", cls=EXAdam, family="adaptive", paper="arXiv:2412.20302", state_tensors=2,
    description="EXAdam: Adam with cross-moment debiasing d₁, d₂ and the bias-corrected gradient added to the "
                "numerator (steady-state step 2η).",
    has_betas=True, has_momentum=True, test_hparams={"lr": 0.02},
))
