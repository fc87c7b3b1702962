"""Adam with critical momenta, Adam+CM (Malviya, Mordido, Baratin, Harikandeh, Huang, Lacoste-Julien, Pascanu &
Chandar, "Promoting Exploration in Memory-Augmented Adam using Critical Momenta", TMLR 2024, arXiv 2307.09638).

Adam keeps, per tensor, a buffer of up to C past momenta ("critical momenta"), each with a priority: the norm of
the gradient it came with, decayed by λ every step. The buffer's mean is added to the momentum, so a step keeps
the push of the large-gradient moments it remembers and overshoots basins that are not wide enough:

    m_t = β₁ m_{t−1} + (1−β₁) g_t
    m̃_t = m_t + mean(B)                     (B before this step's insertion; m̃_t = m_t while B is empty)
    B ← m_t with priority π_t = ‖g_t‖        (into a free slot; once B is full, in place of its lowest-priority
                                              entry when π_t exceeds that priority, else B is unchanged)
    v_t = β₂ v_{t−1} + (1−β₂) m̃_t²          (the second moment of the aggregated momentum, not of g)
    θ_t = θ_{t−1} − η/(1−β₁ᵗ) · m̃_t / (√v_t/√(1−β₂ᵗ) + ε)
    priorities ← λ · priorities              (λ = ``priority_decay``; the new entry's included)

``priority_scope="group"`` (default, the authors' ``synced=True``): π_t is the same number for every tensor of the
param group, Σ_p ‖g_p‖₂ over the tensors stepping together (the sum of the per-tensor norms, as the authors' code
computes it), so all tensors of a group replace their entries at the same steps; ``"tensor"``: π_t = ‖g_t‖₂ of the
tensor itself. Defaults are the authors' (C = ``buffer_size`` = 5, λ = 0.7, Adam's η, β, ε).

The authors' code (chandar-lab/CMOptimizer, ``Adam_CM``) is followed except where it departs from the paper's
algorithm: its first step moves nothing (it creates the state, stores the raw gradient g₁ as the first buffer entry
and advances the bias-correction counter); here step 1 is Adam's first step and the first entry is m₁. Its
``kappa`` (only an on/off switch: 0 crashes), ``critical_test`` (a random FIFO replacement, off by default),
``amsgrad`` and ``buffer_dtype`` are left out. Weight decay is decoupled, as there.

State per tensor: ``exp_avg``, ``exp_avg_sq``, ``critical_momenta`` (C × the tensor's shape, empty slots zero) and
``critical_priorities`` (C numbers; −inf marks an empty slot, so the first free slot is also the lowest priority
and one rule fills and replaces).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import _LOW_PRECISION, ElementwiseOptimizer, as_number

__all__ = ["AdamCM"]

PRIORITY_SCOPES = ("group", "tensor")


def _norm(g: Tensor) -> Tensor:
    """‖g‖₂ in float32 at least (a bf16 norm rounds too coarsely to rank gradients)."""
    return torch.linalg.vector_norm(g, dtype=torch.float32 if g.dtype in _LOW_PRECISION else None)


def aggregate(m: Tensor, buffer: Tensor, priorities: Tensor) -> Tensor:
    """``m + mean`` of the buffer's filled slots (``m`` itself while the buffer is empty)."""
    filled = (priorities > float("-inf")).sum().clamp_min(1)
    return m + buffer.sum(0) / filled.to(m.dtype)


def insert(buffer: Tensor, priorities: Tensor, m: Tensor, priority: Any) -> None:
    """Put ``m`` in the lowest-priority slot (a free one while any is left) if ``priority`` exceeds that slot's."""
    slot = torch.argmin(priorities)  # the first minimum: the first free slot while the buffer fills
    new = torch.as_tensor(priority, dtype=priorities.dtype, device=priorities.device)
    take = new > priorities[slot]
    buffer[slot] = torch.where(take, m, buffer[slot])
    priorities[slot] = torch.where(take, new, priorities[slot])


class AdamCM(ElementwiseOptimizer):
    """Adam+CM; ``buffer_size`` critical momenta per tensor, priorities decayed by ``priority_decay``."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, buffer_size: int = 5, priority_decay: float = 0.7,
                 priority_scope: str = "group", **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, buffer_size=buffer_size,
                                      priority_decay=priority_decay, priority_scope=priority_scope), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.integer("buffer_size", group["buffer_size"], minimum=1)
        V.beta("priority_decay", group["priority_decay"])
        V.choice("priority_scope", group["priority_scope"], PRIORITY_SCOPES)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "critical_momenta", "critical_priorities")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        size = group["buffer_size"]
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["critical_momenta"] = p.new_zeros((size, *p.shape))
        state["critical_priorities"] = p.new_full((size,), float("-inf"))

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        lr = as_number(group["lr"])
        return {"lr": lr, "b1": b1, "b2": b2, "eps": group["eps"], "step_size": lr / (1 - b1**step),
                "bc2_sqrt": math.sqrt(1 - b2**step), "priority_decay": group["priority_decay"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["priority_scope"] == "tensor",)

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """The group's priority Σ‖g‖ (one number for the tensors stepping together), then the kernels."""
        if group["priority_scope"] == "group":
            c = {**c, "priority": float(sum(_norm(g).double() for g in gs))}
        super()._run_kernel(group, ps, gs, sts, keys, c)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        (per_tensor,) = flags
        m, v = st["exp_avg"], st["exp_avg_sq"]
        buffer, priorities = st["critical_momenta"], st["critical_priorities"]
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        agg = aggregate(m, buffer, priorities)
        insert(buffer, priorities, m, _norm(g) if per_tensor else c["priority"])
        v.mul_(c["b2"]).add_(agg * agg * (1 - c["b2"]))
        priorities.mul_(c["priority_decay"])
        return agg / (v.sqrt() / c["bc2_sqrt"] + c["eps"]) * c["step_size"]

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        (per_tensor,) = flags
        m, v = st["exp_avg"], st["exp_avg_sq"]
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, torch._foreach_mul(gs, 1 - c["b1"]))
        aggs = []
        for g, mi, buffer, priorities in zip(gs, m, st["critical_momenta"], st["critical_priorities"]):
            aggs.append(aggregate(mi, buffer, priorities))
            insert(buffer, priorities, mi, _norm(g) if per_tensor else c["priority"])
        sq = torch._foreach_mul(aggs, aggs)
        torch._foreach_mul_(sq, 1 - c["b2"])
        torch._foreach_mul_(v, c["b2"])
        torch._foreach_add_(v, sq)
        torch._foreach_mul_(st["critical_priorities"], c["priority_decay"])
        denom = torch._foreach_sqrt(v)  # the reference's operations, in its order (same rounding)
        torch._foreach_div_(denom, c["bc2_sqrt"])
        torch._foreach_add_(denom, c["eps"])
        steps = torch._foreach_div(aggs, denom)
        torch._foreach_mul_(steps, c["step_size"])
        return steps


register(OptimizerInfo(
    name="adam-cm", cls=AdamCM, family="adaptive", paper="arXiv:2307.09638",
    description="Adam+CM: Adam whose momentum is aggregated with a buffer of C critical momenta (priority ‖g‖, "
                "decayed by λ each step); v tracks the aggregated momentum.",
    state_tensors=7, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
