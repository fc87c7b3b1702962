"""Adafactor (Shazeer & Stern, arXiv 1804.04235), in the paper's / HF-fairseq form:

    ρ_t  = min(1e-2, 1/√t)   (warmup_init: min(1e-6·t, 1/√t));   ρ_t = lr when relative_step=False
    α_t  = max(ε₂, RMS(θ_{t−1}))·ρ_t   if scale_parameter, else ρ_t
    β̂₂_t = 1 − t^c                     (c = beta2_decay, −0.8)
    G = g² + ε₁
    ≥2-D (factored over the last two dims, m×n):
        R ← β̂₂R + (1−β̂₂)·mean_cols(G) ;  C ← β̂₂C + (1−β̂₂)·mean_rows(G) ;  V̂ = (R/mean(R)) ⊗ C
    vectors:  V ← β̂₂V + (1−β̂₂)G ;  V̂ = V
    U = g/√V̂ ;  U ← α_t · U / max(1, RMS(U)/d)
    beta1 set:  M ← β₁M + (1−β₁)U ;  U = M
    θ ← θ − λα_tθ − U

torch.optim's names are used where torch has the concept: ``beta2_decay`` (HF ``decay_rate``), ``d``
(HF ``clip_threshold``), ``eps=(ε₁, ε₂)``. ``torch.optim.Adafactor`` itself differs (lr caps ρ_t, ε₁
clamps V̂ instead of being added to g², no momentum), so it is not a parity target.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["Adafactor"]


def factored_ema_(row: Tensor, col: Tensor, x: Tensor, beta: Any) -> None:
    """row ← β·row + (1−β)·mean over the last dim of x ; col ← β·col + (1−β)·mean over the second-to-last dim."""
    row.mul_(beta).add_(x.mean(dim=-1) * (1 - beta))
    col.mul_(beta).add_(x.mean(dim=-2) * (1 - beta))


def factored_rsqrt_factors(row: Tensor, col: Tensor) -> tuple[Tensor, Tensor]:
    """The two broadcastable factors of 1/√V̂ for the rank-one V̂ = (row/mean(row)) ⊗ col."""
    return (row / row.mean(dim=-1, keepdim=True)).rsqrt().unsqueeze(-1), col.rsqrt().unsqueeze(-2)


def factored_rsqrt(row: Tensor, col: Tensor) -> Tensor:
    """1/√V̂ for the rank-one V̂ = (row/mean(row)) ⊗ col, broadcast to the matrix shape."""
    r, c = factored_rsqrt_factors(row, col)
    return r * c


class Adafactor(ElementwiseOptimizer):
    """Adafactor with factored second moments: O(m+n) state per matrix instead of m·n.

    ``lr`` is used only when ``relative_step=False``; with the default ``relative_step=True`` the step
    ρ_t is the paper's schedule and ``lr`` (and hence any lr scheduler) is ignored. ``weight_decay`` is
    the paper's ``θ ← θ − λα_tθ`` (``decay_mode="decoupled"``, not masked by ``cautious``) or L2 on the
    gradient (``"coupled"``). Complex parameters are rejected. For fp16 parameters pass
    ``state_dtype="float32"`` (ε₁ = 1e-30 underflows in fp16).
    """

    default_decay_mode = "decoupled"
    supports_complex = False
    handles_weight_decay = True

    def __init__(self, params: Any, lr: float = 1e-2, eps: tuple[float, float] = (1e-30, 1e-3),
                 d: float = 1.0, beta2_decay: float = -0.8, beta1: float | None = None,
                 weight_decay: float = 0.0, relative_step: bool = True, scale_parameter: bool = True,
                 warmup_init: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, eps=eps, d=d, beta2_decay=beta2_decay, beta1=beta1,
                                      weight_decay=weight_decay, relative_step=relative_step,
                                      scale_parameter=scale_parameter, warmup_init=warmup_init), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        eps = group["eps"]
        if not isinstance(eps, (tuple, list)) or len(eps) != 2:
            raise ValueError(f"Invalid eps: {eps!r} (expected a pair (eps1, eps2) of numbers >= 0)")
        V.nonneg("eps[0]", eps[0]), V.nonneg("eps[1]", eps[1])
        V.positive("d", group["d"])
        if V._num("beta2_decay", group["beta2_decay"]) > 0:
            raise ValueError(f"Invalid beta2_decay: {group['beta2_decay']!r} (must be <= 0)")
        if group["beta1"] is not None:
            V.beta("beta1", group["beta1"])
        V.nonneg("weight_decay", group["weight_decay"])
        for key in ("relative_step", "scale_parameter", "warmup_init"):
            V.flag(key, group[key])
        if group["warmup_init"] and not group["relative_step"]:
            raise ValueError("Invalid warmup_init: True requires relative_step=True")
        if group.get("decay_mode") not in ("decoupled", "coupled"):
            raise ValueError(f"Invalid decay_mode: {group.get('decay_mode')!r} for Adafactor (choose 'decoupled' "
                             "for θ ← θ − λα_tθ or 'coupled' for L2)")

    @staticmethod
    def _keys(group: dict[str, Any], factored: bool) -> tuple[str, ...]:
        second = ("exp_avg_sq_row", "exp_avg_sq_col") if factored else ("exp_avg_sq",)
        return second + (("exp_avg",) if group["beta1"] is not None else ())

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg_sq_row", "exp_avg_sq_col", "exp_avg_sq") + (("exp_avg",) if group["beta1"] is not None else ())

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        if p.ndim >= 2:
            state["exp_avg_sq_row"] = p.new_zeros(p.shape[:-1])
            state["exp_avg_sq_col"] = p.new_zeros(p.shape[:-2] + p.shape[-1:])
        else:
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["beta1"] is not None:
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        if group["relative_step"]:
            rho = min(1e-6 * step if group["warmup_init"] else 1e-2, 1.0 / math.sqrt(step))
        else:
            rho = group["lr"]
        b1 = group["beta1"]
        return {"rho": rho, "beta2": 1.0 - step ** group["beta2_decay"], "eps1": group["eps"][0],
                "eps2": group["eps"][1], "d": group["d"], "beta1": 0.0 if b1 is None else b1,
                "wd": group["weight_decay"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        decay = group["decay_mode"] if group["weight_decay"] else "none"
        return (group["scale_parameter"], group["beta1"] is not None, decay)

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        # factored (≥2-D) and vector parameters keep different state keys: run them as two batches
        for factored in (True, False):
            idx = [i for i, p in enumerate(ps) if (p.ndim >= 2) == factored]
            if idx:
                super()._run_kernel(group, [ps[i] for i in idx], [gs[i] for i in idx], [sts[i] for i in idx],
                                    self._keys(group, factored), c)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        scale_parameter, momentum, decay = flags
        alpha = c["rho"]
        if scale_parameter:
            alpha = torch.clamp(p.square().mean().sqrt(), min=c["eps2"]) * c["rho"]
        if decay == "coupled":
            g = g + c["wd"] * p
        g2 = g * g + c["eps1"]
        if p.ndim >= 2:
            row, col = st["exp_avg_sq_row"], st["exp_avg_sq_col"]
            factored_ema_(row, col, g2, c["beta2"])
            row_factor, col_factor = factored_rsqrt_factors(row, col)
            u = g * row_factor * col_factor
        else:
            v = st["exp_avg_sq"]
            v.mul_(c["beta2"]).add_(g2 * (1 - c["beta2"]))
            u = g * v.rsqrt()
        u = u * (alpha / torch.clamp(u.square().mean().sqrt() / c["d"], min=1.0))
        if momentum:
            m = st["exp_avg"]
            m.mul_(c["beta1"]).add_(u * (1 - c["beta1"]))
            u = m
        if decay == "decoupled":
            p.mul_(1 - c["wd"] * alpha)
        return u


register(OptimizerInfo(
    name="adafactor", cls=Adafactor, family="adaptive", paper="arXiv:1804.04235",
    description="Adafactor: factored second moment (O(m+n) per m×n matrix, full for vectors), relative step "
                "sizes, update clipping, optional β₁ momentum; relative_step=True ignores lr.",
    state_tensors=0, has_momentum=False,  # the optional β₁ is "beta1" (None by default), not betas/momentum
    supports_complex=False, supports_foreach=False,
    test_hparams={"relative_step": False, "lr": 0.1},
))
