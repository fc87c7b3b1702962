"""SGD with heavy-ball or Nesterov momentum (Sutskever et al., ICML 2013; torch.optim.SGD convention).

    g ← g + λθ                                   (coupled L2 by default)
    b ← g at the first step, then b ← μ b + (1 − τ) g
    d ← g + μ b (Nesterov) | b (heavy ball) | g (μ = 0)
    θ ← θ − η d

The default path (``impl="auto"`` on CPU, or ``impl="fused"``) runs ``torch._fused_sgd_`` wherever it computes
this update (:mod:`optfit.optim._fused`); ``_update`` stays the reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import IMPLS, ElementwiseOptimizer

__all__ = ["SGD"]


class SGD(ElementwiseOptimizer):
    """Stochastic gradient descent; ``lr`` defaults to 1e-3 like torch ≥ 2.2."""

    default_decay_mode = "coupled"
    fused_kind = "sgd"  # impl="fused" (and "auto" on CPU): torch._fused_sgd_
    IMPLS = (*IMPLS, "fused")

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("momentum", group["momentum"])
        V.in_range("dampening", group["dampening"], 0.0, 1.0, hi_open=False)
        V.nonneg("weight_decay", group["weight_decay"])
        V.flag("nesterov", group["nesterov"])
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0 and dampening = 0")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] > 0 else ()

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        # at the first step the buffer is set to g: encode as b ← 0·b + 1·g
        first = step == 1
        return {"lr": group["lr"], "mu": group["momentum"],
                "keep": 0.0 if first else group["momentum"], "mix": 1.0 if first else 1.0 - group["dampening"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["momentum"] > 0, group["nesterov"])

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        has_momentum, nesterov = flags
        d = g
        if has_momentum:
            b = st["momentum_buffer"]
            b.mul_(c["keep"]).add_(g * c["mix"])
            d = g + c["mu"] * b if nesterov else b
        return c["lr"] * d

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        has_momentum, nesterov = flags
        d = gs
        if has_momentum:
            bufs = st["momentum_buffer"]
            torch._foreach_mul_(bufs, c["keep"])
            torch._foreach_add_(bufs, gs, alpha=c["mix"])
            d = torch._foreach_add(gs, bufs, alpha=c["mu"]) if nesterov else bufs
        return torch._foreach_mul(d, c["lr"])


register(OptimizerInfo(
    name="sgd", cls=SGD, family="first-order", paper="Sutskever et al. 2013 (ICML); torch.optim.SGD",
    description="SGD with heavy-ball or Nesterov momentum, dampening, coupled L2 decay.",
    state_tensors=0, has_momentum=True, torch_equivalent=("SGD", {}),
    test_hparams={"lr": 0.1, "momentum": 0.9, "nesterov": True},
))
