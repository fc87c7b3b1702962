"""CAME: confidence-guided adaptive memory-efficient optimisation (Luo et al., arXiv 2307.02047, Algorithm 1).

Adafactor's normalised, clipped update û (``optfit.optim.Adafactor`` with ρ = 1, no parameter scaling, no momentum),
then a momentum whose step is divided by the root of a factored EMA of its instability (û − m)²:

    ≥2-D (factored over the last two dims, m×n):
        R ← β₂R + (1−β₂)·mean_cols(g² + ε₁) ;  C ← β₂C + (1−β₂)·mean_rows(g² + ε₁) ;  V̂ = (R/mean(R)) ⊗ C
        u = g/√V̂ ;  û = u / max(1, RMS(u)/d)
        m ← β₁m + (1−β₁)û
        U = (û − m)² + ε₂
        R' ← β₃R' + (1−β₃)·mean_cols(U) ;  C' ← β₃C' + (1−β₃)·mean_rows(U) ;  Ŝ = (R'/mean(R')) ⊗ C'
        θ ← θ − η · m/√Ŝ
    vectors:  V ← β₂V + (1−β₂)(g² + ε₁) ;  û = clip(g/√V) ;  m ← β₁m + (1−β₁)û ;  θ ← θ − η·m

The paper writes R, C with row/column sums and V̂ = RC/(1ᵀR); with means the quotient is the same. Vectors take
no confidence factor, as in the authors' package ``came-pytorch`` (the paper states the algorithm for matrices).
``weight_decay`` is the package's θ ← θ(1 − ηλ) (``decay_mode="decoupled"``; the paper has none). The package's
``clip_threshold`` is ``d`` here, as in optfit's Adafactor. State: m (one tensor of the parameter's size) and
O(m+n) for the factored statistics of a matrix.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from .adafactor import Adafactor, factored_ema_, factored_rsqrt

__all__ = ["CAME"]

# Adafactor's kernel flags for û: no relative-RMS parameter scaling, no momentum, no weight decay
_ADAFACTOR_UPDATE_ONLY = (False, False, "none")


class CAME(Adafactor):
    """CAME (an Adafactor: its û, factored state and factored/vector batches are reused).

    ``lr`` is a plain learning rate (no relative step); ``betas = (β₁, β₂, β₃)`` for the momentum, the squared
    gradient and the instability; ``eps = (ε₁, ε₂)`` for the squared gradient and the instability. Complex
    parameters are rejected; for fp16 parameters pass ``state_dtype="float32"`` (ε₁ = 1e-30 underflows).
    """

    default_decay_mode = "decoupled"
    handles_weight_decay = False

    def __init__(self, params: Any, lr: float = 2e-4, betas: tuple[float, float, float] = (0.9, 0.999, 0.9999),
                 eps: tuple[float, float] = (1e-30, 1e-16), d: float = 1.0, weight_decay: float = 0.0,
                 **options: Any) -> None:
        ElementwiseOptimizer.__init__(self, params, dict(lr=lr, betas=betas, eps=eps, d=d,
                                                         weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "weight_decay")
        V.betas(group["betas"], 3)
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r} (expected a pair (eps1, eps2) of numbers >= 0)")
        V.nonneg("eps[0]", eps[0]), V.nonneg("eps[1]", eps[1])
        V.positive("d", group["d"])

    @staticmethod
    def _keys(group: dict[str, Any], factored: bool) -> tuple[str, ...]:
        if factored:
            return ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col")
        return ("exp_avg", "exp_avg_sq")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_res_row", "exp_avg_res_col", "exp_avg_sq")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state({**group, "beta1": None}, p, state)  # Adafactor's second-moment state
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if p.ndim >= 2:
            state["exp_avg_res_row"] = p.new_zeros(p.shape[:-1])
            state["exp_avg_res_col"] = p.new_zeros(p.shape[:-2] + p.shape[-1:])

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2, b3 = group["betas"]
        # rho/beta2/eps1/d are read by Adafactor's kernel (ρ = 1: the lr is applied after the confidence factor)
        return {"lr": group["lr"], "rho": 1.0, "beta2": b2, "eps1": group["eps"][0], "d": group["d"],
                "b1": b1, "b3": b3, "eps_res": group["eps"][1]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return ()

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        u = Adafactor._update(p, g, st, c, _ADAFACTOR_UPDATE_ONLY)
        m = st["exp_avg"]
        m.mul_(c["b1"]).add_(u * (1 - c["b1"]))
        if p.ndim < 2:
            return c["lr"] * m
        instability = (u - m).square() + c["eps_res"]
        factored_ema_(st["exp_avg_res_row"], st["exp_avg_res_col"], instability, c["b3"])
        return c["lr"] * (m * factored_rsqrt(st["exp_avg_res_row"], st["exp_avg_res_col"]))


register(OptimizerInfo(
    name="came", cls=CAME, family="adaptive", paper="arXiv:2307.02047",
    description="CAME: Adafactor's factored, clipped update with momentum, each step divided by the root of a "
                "factored EMA of the instability (û − m)² (O(m+n) per m×n matrix beside the momentum).",
    state_tensors=1, has_betas=True, has_momentum=True,
    supports_complex=False, supports_foreach=False,
    test_hparams={"lr": 0.01},
))
