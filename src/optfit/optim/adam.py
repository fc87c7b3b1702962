"""Adam (Kingma & Ba, arXiv 1412.6980), AdamW (Loshchilov & Hutter, arXiv 1711.05101) and the AMSGrad flag
(Reddi et al., ICLR 2018), in torch.optim's convention (ε after the square root of the bias-corrected v):

    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g² ;  v_max ← max(v_max, v)   (amsgrad)
    θ ← θ − η/(1−β₁ᵗ) · m / (√v̂/√(1−β₂ᵗ) + ε)      with v̂ = v_max or v

``Adam`` couples weight decay (L2) by default, ``AdamW`` decouples it (``θ ← θ(1 − ηλ)``). The default path
(``impl="auto"`` on CPU, or ``impl="fused"``) runs torch's fused kernel wherever it computes this update
(:mod:`optfit.optim._fused` lists where); ``_update`` stays the reference every path is tested against.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import IMPLS, ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach, adam_step, adam_step_foreach

__all__ = ["Adam", "AdamW"]


class Adam(ElementwiseOptimizer):
    """Adam; ``weight_decay`` is L2 (``decay_mode="coupled"``) unless told otherwise."""

    default_decay_mode = "coupled"
    fused_kind = "adam"  # impl="fused" (and "auto" on CPU): torch._fused_adam_/_fused_adamw_
    IMPLS = (*IMPLS, "fused")

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad),
                         **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.flag("amsgrad", group["amsgrad"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
                "step_size": group["lr"] / (1 - b1**step), "bc2_sqrt": math.sqrt(1 - b2**step)}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["amsgrad"],)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = adam_moments(g, st, c, amsgrad=flags[0])
        return adam_step(m, v, c)

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = adam_moments_foreach(gs, st, c, amsgrad=flags[0])
        return adam_step_foreach(m, v, c)


class AdamW(Adam):
    """Adam with decoupled weight decay ``θ ← θ(1 − ηλ)``; torch's default ``weight_decay=1e-2``."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, **options: Any) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, **options)


_ADAM = dict(family="adaptive", has_betas=True, has_momentum=True, test_hparams={"lr": 0.05})
register(OptimizerInfo(name="adam", cls=Adam, paper="arXiv:1412.6980", state_tensors=2,
                       description="Adam with coupled L2 weight decay.", torch_equivalent=("Adam", {}), **_ADAM))
register(OptimizerInfo(name="adamw", cls=AdamW, paper="arXiv:1711.05101", state_tensors=2,
                       description="Adam with decoupled weight decay θ ← θ(1 − ηλ).",
                       torch_equivalent=("AdamW", {}), **_ADAM))
register(OptimizerInfo(name="amsgrad", cls=Adam, preset={"amsgrad": True}, paper="arXiv:1904.09237",
                       state_tensors=3, description="Adam with the running maximum of v (AMSGrad).",
                       torch_equivalent=("Adam", {"amsgrad": True}), **_ADAM))
register(OptimizerInfo(name="cadamw", cls=AdamW, preset={"cautious": True}, paper="arXiv:2411.16085",
                       state_tensors=2, description="Cautious AdamW: updates disagreeing in sign with g are masked.",
                       **_ADAM))
