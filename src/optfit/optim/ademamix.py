"""AdEMAMix (Pagliardini, Ablin & Grangier, arXiv 2409.03137): Adam whose numerator adds a very slow,
uncorrected EMA of the gradient,

    m₁ ← β₁m₁ + (1−β₁)g      (β₁ = 0: m₁ := g, no buffer)
    m₂ ← β₃(t)m₂ + (1−β₃(t))g                (not bias-corrected)
    v  ← β₂v + (1−β₂)g²
    θ ← θ − η [ (m₁/(1−β₁ᵗ) + α(t) m₂) / (√v/√(1−β₂ᵗ) + ε) + λθ ]

with the optional warmups α(t) = α·min(1, t/T_α) and β₃(t) linear in half-life space:
f(β) = ln ½ / ln β − 1, β₃(t) = f⁻¹((1−s) f(β₁) + s f(β₃)), s = min(1, t/T_β₃), f⁻¹(h) = ½^(1/(h+1)).
``None`` warmups mean α and β₃ from the first step. The λθ term folded into the update is exactly the
decoupled decay θ(1 − ηλ). The paper's recipe: α 5–10 with both warmups set to the run length, λ 0.1.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["AdEMAMix"]


def _half_life(beta: float) -> float:
    return math.log(0.5) / math.log(beta) - 1 if beta > 0 else -1.0


def beta3_schedule(step: int, beta_start: float, beta_end: float, warmup: int | None) -> float:
    """β₃ at ``step``: linear interpolation of the half-lives of ``beta_start`` and ``beta_end``."""
    if warmup is None or step >= warmup:
        return beta_end
    s = step / warmup
    h = (1 - s) * _half_life(beta_start) + s * _half_life(beta_end)
    return 0.5 ** (1 / (h + 1)) if h > -1 else 0.0


class AdEMAMix(ElementwiseOptimizer):
    """AdEMAMix; ``betas = (β₁, β₂, β₃)``, ``weight_decay`` decoupled."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 alpha: float = 2.0, alpha_warmup: int | None = None, beta3_warmup: int | None = None,
                 eps: float = 1e-8, weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, alpha=alpha, alpha_warmup=alpha_warmup,
                                      beta3_warmup=beta3_warmup, eps=eps, weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.betas(group["betas"], n=3)
        V.nonneg("alpha", group["alpha"])
        for key in ("alpha_warmup", "beta3_warmup"):
            if group[key] is not None:
                V.integer(key, group[key], 1)
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (("exp_avg",) if group["betas"][0] > 0 else ()) + ("exp_avg_slow", "exp_avg_sq")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2, b3 = group["betas"]
        warm = group["alpha_warmup"]
        alpha = group["alpha"] * (1.0 if warm is None else min(1.0, step / warm))
        bc1 = 1 - b1**step
        # η/bc1 · (m₁ + α·bc1·m₂) / denom: with α = 0 this is AdamW's expression, operation for operation
        return {"lr": group["lr"], "b1": b1, "b2": b2, "b3": beta3_schedule(step, b1, b3, group["beta3_warmup"]),
                "eps": group["eps"], "step_size": group["lr"] / bc1, "alpha_bc1": alpha * bc1,
                "bc2_sqrt": math.sqrt(1 - b2**step)}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["betas"][0] > 0,)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        slow, v = st["exp_avg_slow"], st["exp_avg_sq"]
        m = g
        if flags[0]:
            m = st["exp_avg"]
            m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        slow.mul_(c["b3"]).add_(g * (1 - c["b3"]))
        v.mul_(c["b2"]).add_(g * g * (1 - c["b2"]))
        return c["step_size"] * (m + c["alpha_bc1"] * slow) / (v.sqrt() / c["bc2_sqrt"] + c["eps"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        slow, v = st["exp_avg_slow"], st["exp_avg_sq"]
        m = gs
        if flags[0]:
            m = st["exp_avg"]
            torch._foreach_lerp_(m, gs, 1 - c["b1"])
        torch._foreach_lerp_(slow, gs, 1 - c["b3"])
        torch._foreach_mul_(v, c["b2"])
        torch._foreach_addcmul_(v, gs, gs, 1 - c["b2"])
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, c["bc2_sqrt"])
        torch._foreach_add_(denom, c["eps"])
        steps = torch._foreach_add(m, slow, alpha=c["alpha_bc1"])
        torch._foreach_div_(steps, denom)
        torch._foreach_mul_(steps, c["step_size"])
        return steps


register(OptimizerInfo(
    name="ademamix", cls=AdEMAMix, family="adaptive", paper="arXiv:2409.03137", state_tensors=3,
    description="AdEMAMix: Adam plus α × a slow uncorrected EMA (β₃) in the numerator; optional α and "
                "half-life β₃ warmups; 2 state tensors when β₁ = 0.",
    has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
