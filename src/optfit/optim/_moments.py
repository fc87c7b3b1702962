"""Adam's two moment EMAs, written once for the Adam family (per tensor, and over tensor lists):

    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g² ;  v_max ← max(v_max, v) (amsgrad; then v̂ = v_max)

and Adam's bias-corrected step ``s = η/(1−β₁ᵗ) · m / (√v̂/√(1−β₂ᵗ) + ε)`` from ``c["step_size"]``,
``c["bc2_sqrt"]`` and ``c["eps"]``. State keys ``exp_avg``, ``exp_avg_sq`` and ``max_exp_avg_sq`` as in torch.optim; ``c`` holds ``b1`` and ``b2``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def adam_moments(g: Tensor, st: dict[str, Tensor], c: dict[str, Any], amsgrad: bool = False) -> tuple[Tensor, Tensor]:
    """Update the moments of one tensor in place; return ``(m, v̂)``."""
    m, v = st["exp_avg"], st["exp_avg_sq"]
    m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
    v.mul_(c["b2"]).add_(g * g * (1 - c["b2"]))
    if amsgrad:
        st["max_exp_avg_sq"].copy_(torch.maximum(st["max_exp_avg_sq"], v))
        v = st["max_exp_avg_sq"]
    return m, v


def adam_moments_foreach(gs: list[Tensor], st: dict[str, list[Tensor]], c: dict[str, Any],
                         amsgrad: bool = False) -> tuple[list[Tensor], list[Tensor]]:
    """The same over lists of tensors with ``torch._foreach_*`` ops; return ``(m, v̂)`` lists."""
    m, v = st["exp_avg"], st["exp_avg_sq"]
    torch._foreach_lerp_(m, gs, 1 - c["b1"])
    torch._foreach_mul_(v, c["b2"])
    torch._foreach_addcmul_(v, gs, gs, 1 - c["b2"])
    if amsgrad:
        torch._foreach_maximum_(st["max_exp_avg_sq"], v)
        v = st["max_exp_avg_sq"]
    return m, v


def adam_step(m: Tensor, v: Tensor, c: dict[str, Any]) -> Tensor:
    """``step_size · m / (√v / bc2_sqrt + eps)`` for one tensor."""
    return c["step_size"] * m / (v.sqrt() / c["bc2_sqrt"] + c["eps"])


def adam_step_foreach(m: list[Tensor], v: list[Tensor], c: dict[str, Any]) -> list[Tensor]:
    """The same over lists of tensors."""
    denom = torch._foreach_sqrt(v)
    torch._foreach_div_(denom, c["bc2_sqrt"])
    torch._foreach_add_(denom, c["eps"])
    steps = torch._foreach_div(m, denom)
    torch._foreach_mul_(steps, c["step_size"])
    return steps
