"""Lion, EvoLved Sign Momentum (Chen et al., arXiv 2302.06675), and its cautious variant C-Lion
(Liang et al., arXiv 2411.16085):

    θ ← θ(1 − ηλ)                      (decoupled decay, applied by the base)
    c = β₁m + (1−β₁)g                  (interpolation used for the step)
    θ ← θ − η sign(c)
    m ← β₂m + (1−β₂)g                  (momentum tracked with β₂, after c is formed)

Every coordinate moves by exactly ±η (0 where c = 0); there is no ε. Use an lr 3–10× smaller and a
λ 3–10× larger than AdamW's. ``decay_mode="independent"`` gives lucidrains' ``decoupled_weight_decay=True``
(decay λ·η/η₀). ``clion`` = ``Lion(cautious=True)``: with the base's caution the mask φ = 1[sign(c)⊙g > 0] is
rescaled by 1/max(mean φ, 1e-3) per tensor (the C-Optim repository's current rule), not by the paper's
original numel/(Σφ + 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["Lion"]


class Lion(ElementwiseOptimizer):
    """Lion; ``weight_decay`` is decoupled (``θ ← θ(1 − ηλ)``) by default."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.betas(group["betas"])
        V.nonneg("weight_decay", group["weight_decay"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg",)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        return {"lr": group["lr"], "b1": b1, "b2": b2}

    @staticmethod
    def _interpolate(g: Tensor, st: dict[str, Tensor], c: dict[str, Any]) -> Tensor:
        """``c = β₁m + (1−β₁)g``, then ``m ← β₂m + (1−β₂)g`` in place; returns c."""
        m = st["exp_avg"]
        mix = m * c["b1"] + g * (1 - c["b1"])
        m.mul_(c["b2"]).add_(g * (1 - c["b2"]))
        return mix

    @staticmethod
    def _interpolate_foreach(gs, st, c):
        m = st["exp_avg"]
        mix = torch._foreach_mul(m, c["b1"])
        torch._foreach_add_(mix, torch._foreach_mul(gs, 1 - c["b1"]))
        torch._foreach_mul_(m, c["b2"])
        torch._foreach_add_(m, torch._foreach_mul(gs, 1 - c["b2"]))
        return mix

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        return c["lr"] * Lion._interpolate(g, st, c).sign()

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        steps = torch._foreach_sign(Lion._interpolate_foreach(gs, st, c))
        torch._foreach_mul_(steps, c["lr"])
        return steps


_LION = dict(family="sign-based", state_tensors=1, has_betas=True, has_momentum=True,
             test_hparams={"lr": 0.02})
register(OptimizerInfo(name="lion", cls=Lion, paper="arXiv:2302.06675",
                       description="Lion: η·sign(β₁m + (1−β₁)g), momentum tracked with β₂; decoupled decay.",
                       **_LION))
register(OptimizerInfo(name="clion", cls=Lion, preset={"cautious": True}, paper="arXiv:2411.16085",
                       description="Cautious Lion: coordinates where sign(c) disagrees with g are masked; the "
                                   "mask is rescaled by 1/max(mean φ, 1e-3) per tensor.", **_LION))
