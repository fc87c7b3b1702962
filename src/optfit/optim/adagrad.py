"""AdaGrad (Duchi, Hazan & Singer, JMLR 12, 2011), in torch.optim.Adagrad's convention:

    η̃ = η / (1 + (t−1)·lr_decay) ;  s ← s + g²   (s_0 = initial_accumulator_value)
    θ ← θ − η̃ g / (√s + ε)

``weight_decay`` is L2 (``g ← g + λθ``) as in torch. The default path (``impl="auto"`` on CPU, or
``impl="fused"``) runs ``torch._fused_adagrad_`` wherever it computes this update (:mod:`optfit.optim._fused`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import IMPLS, ElementwiseOptimizer

__all__ = ["Adagrad"]


class Adagrad(ElementwiseOptimizer):
    """AdaGrad (torch defaults: lr 1e-2, lr_decay 0, initial_accumulator_value 0, ε 1e-10)."""

    default_decay_mode = "coupled"
    fused_kind = "adagrad"  # impl="fused" (and "auto" on CPU): torch._fused_adagrad_
    IMPLS = (*IMPLS, "fused")

    def __init__(self, params: Any, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("lr_decay", group["lr_decay"])
        V.nonneg("weight_decay", group["weight_decay"])
        V.nonneg("initial_accumulator_value", group["initial_accumulator_value"])
        V.nonneg("eps", group["eps"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("sum",)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        # p is the real view for complex parameters: real and imaginary parts both start at the value
        state["sum"] = torch.full_like(p, group["initial_accumulator_value"], memory_format=torch.preserve_format)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {"lr": group["lr"], "eps": group["eps"], "clr": group["lr"] / (1 + (step - 1) * group["lr_decay"])}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        s = st["sum"]
        s.add_(g * g)
        return c["clr"] * g / (s.sqrt() + c["eps"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        s = st["sum"]
        torch._foreach_addcmul_(s, gs, gs)
        denom = torch._foreach_sqrt(s)
        torch._foreach_add_(denom, c["eps"])
        steps = torch._foreach_div(gs, denom)
        torch._foreach_mul_(steps, c["clr"])
        return steps


register(OptimizerInfo(
    name="adagrad", cls=Adagrad, family="adaptive", paper="Duchi et al., JMLR 2011; torch.optim.Adagrad",
    description="Per-coordinate step η/√(Σg²); optional lr_decay and initial accumulator; L2 weight decay.",
    state_tensors=1, torch_equivalent=("Adagrad", {}), test_hparams={"lr": 0.5},
))
