"""Roaree, Lion with a smooth sign (Garmonina & Chan, "From Rattle to Roar", arXiv 2508.04707):

    θ ← θ(1 − ηλ)                      (decoupled decay, applied by the base)
    c = β₁m + (1−β₁)g
    θ ← θ − η s(κc)                    (κ = ``curv``)
    m ← β₂m + (1−β₂)g

Surrogates ``s``: ``tanh``, ``arctan`` (range ±π/2, so up to 1.57η), ``softsign`` x/(1+|x|), ``erf``,
``norm`` x/√(1+x²), and ``sigmoid`` offered *recentred* as 2σ(x) − 1 (= tanh(x/2)): the plain σ of the
reference notebook lies in (0, 1) and would move every coordinate the same way whatever the gradient,
so we implement the paper's intent (an odd, sign-like surrogate). κ → ∞ recovers Lion; for κ|c| ≪ 1 the step is
≈ ηκc (momentum SGD with lr ηκ; ×2/√π for erf, ×½ for the recentred sigmoid).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from .lion import Lion

__all__ = ["Roaree"]


def _softsign(x: Tensor) -> Tensor:
    return x / (1 + x.abs())


def _norm(x: Tensor) -> Tensor:
    return x / (1 + x * x).sqrt()


def _sigmoid(x: Tensor) -> Tensor:
    return 2 * torch.sigmoid(x) - 1


def _softsign_foreach(xs):
    den = torch._foreach_abs(xs)
    torch._foreach_add_(den, 1.0)
    return torch._foreach_div(xs, den)


def _norm_foreach(xs):
    den = torch._foreach_mul(xs, xs)
    torch._foreach_add_(den, 1.0)
    torch._foreach_sqrt_(den)
    return torch._foreach_div(xs, den)


def _sigmoid_foreach(xs):
    out = torch._foreach_sigmoid(xs)
    torch._foreach_mul_(out, 2.0)
    torch._foreach_sub_(out, 1.0)
    return out


_REFERENCE = {"tanh": torch.tanh, "arctan": torch.atan, "softsign": _softsign, "erf": torch.erf,
              "norm": _norm, "sigmoid": _sigmoid}
_FOREACH = {"tanh": torch._foreach_tanh, "arctan": torch._foreach_atan, "softsign": _softsign_foreach,
            "erf": torch._foreach_erf, "norm": _norm_foreach, "sigmoid": _sigmoid_foreach}
SURROGATES = tuple(_REFERENCE)


class Roaree(Lion):
    """Smoothed-sign Lion; ``curv`` (κ) sets how sharply ``surrogate`` approaches sign."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, curv: float = 100.0, surrogate: str = "tanh",
                 **options: Any) -> None:
        super(Lion, self).__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, curv=curv,
                                                surrogate=surrogate), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        super()._validate(group)
        V.positive("curv", group["curv"])
        V.choice("surrogate", group["surrogate"], SURROGATES)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {**super()._coefficients(group, step), "curv": group["curv"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["surrogate"],)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        return c["lr"] * _REFERENCE[flags[0]](Lion._interpolate(g, st, c) * c["curv"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        mix = Lion._interpolate_foreach(gs, st, c)
        torch._foreach_mul_(mix, c["curv"])
        steps = _FOREACH[flags[0]](mix)
        torch._foreach_mul_(steps, c["lr"])
        return steps


register(OptimizerInfo(
    name="roaree", cls=Roaree, family="sign-based", paper="arXiv:2508.04707", state_tensors=1,
    description="Lion with sign replaced by a smooth odd surrogate s(κc) (tanh, arctan, softsign, erf, norm, "
                "recentred sigmoid).",
    has_betas=True, has_momentum=True, test_hparams={"lr": 0.02},
))
