"""RMSProp (Hinton, Coursera "Neural Networks for ML", lecture 6e, 2012), in torch.optim.RMSprop's convention
(ε outside the square root, no bias correction, lr applied outside the momentum buffer):

    v ← αv + (1−α)g² ;  centered: ḡ ← αḡ + (1−α)g, ṽ = v − ḡ²  else ṽ = v
    d = g / (√ṽ + ε) ;  momentum μ > 0: b ← μb + d, θ ← θ − ηb   else θ ← θ − ηd

``weight_decay`` is L2 as in torch. Centered: ṽ is clamped at 0 (rounding could make it slightly negative
where torch would give NaN; identical otherwise).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["RMSprop"]


class RMSprop(ElementwiseOptimizer):
    """RMSprop (torch defaults: lr 1e-2, α 0.99, ε 1e-8, momentum 0, centered False)."""

    default_decay_mode = "coupled"

    def __init__(self, params: Any, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                                      centered=centered), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.beta("alpha", group["alpha"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])
        V.nonneg("momentum", group["momentum"])
        V.flag("centered", group["centered"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (("square_avg",) + (("momentum_buffer",) if group["momentum"] > 0 else ())
                + (("grad_avg",) if group["centered"] else ()))

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {"lr": group["lr"], "alpha": group["alpha"], "eps": group["eps"], "mu": group["momentum"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["centered"], group["momentum"] > 0)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        centered, has_momentum = flags
        v = st["square_avg"]
        v.mul_(c["alpha"]).add_(g * g * (1 - c["alpha"]))
        if centered:
            gbar = st["grad_avg"]
            gbar.mul_(c["alpha"]).add_(g * (1 - c["alpha"]))
            d = g / ((v - gbar * gbar).clamp_min(0).sqrt() + c["eps"])
        else:
            d = g / (v.sqrt() + c["eps"])
        if has_momentum:
            b = st["momentum_buffer"]
            b.mul_(c["mu"]).add_(d)
            d = b
        return c["lr"] * d

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        centered, has_momentum = flags
        v = st["square_avg"]
        torch._foreach_mul_(v, c["alpha"])
        torch._foreach_addcmul_(v, gs, gs, 1 - c["alpha"])
        if centered:
            gbar = st["grad_avg"]
            torch._foreach_lerp_(gbar, gs, 1 - c["alpha"])
            denom = torch._foreach_addcmul(v, gbar, gbar, -1)
            torch._foreach_clamp_min_(denom, 0.0)
            torch._foreach_sqrt_(denom)
        else:
            denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, c["eps"])
        d = torch._foreach_div(gs, denom)
        if has_momentum:
            b = st["momentum_buffer"]
            torch._foreach_mul_(b, c["mu"])
            torch._foreach_add_(b, d)
            d = b
        return torch._foreach_mul(d, c["lr"])


register(OptimizerInfo(
    name="rmsprop", cls=RMSprop, family="adaptive", paper="Hinton 2012 (Coursera lecture 6e); torch.optim.RMSprop",
    description="Steps g/(√EMA(g²) + ε), optionally centered (variance) and with heavy-ball momentum; L2 decay.",
    state_tensors=1, has_momentum=True, torch_equivalent=("RMSprop", {}), test_hparams={"lr": 0.01},
))
