"""Gravity (Bahrami & Zadeh, arXiv 2101.09192): a bounded transform of the gradient fed into a velocity whose
momentum coefficient grows with the step count:

    v₀ ~ N(0, (α/η)²)                  (drawn once, at the first step, from a seeded generator)
    β̂ = (βk + 1)/(k + 2)               (k = number of previous steps: 0.5, 0.633, 0.7, … → β)
    ζ = g / (1 + (g·max|g|)²)          (max over the tensor; = g / (1 + (g/M)²) with M = 1/max|g|)
    v ← β̂v + (1 − β̂)ζ
    θ ← θ − ηv

Defaults are the Keras reference's (lr 0.1, α 0.01, β 0.9). For |g| ≪ 1/max|g| it is EMA-momentum SGD; large
components are damped ∝ 1/g³, so the method is not scale invariant (loss scaling changes it). An all-zero
gradient gives ζ = 0 (the product form never divides by max|g|). ``weight_decay`` (not in the paper) is decoupled.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["Gravity"]

_MIX = 0x9E3779B97F4A7C15  # odd 64-bit constant: spreads (seed, parameter index) over the seed space


def beta_hat(beta: float, k: int) -> float:
    """The momentum coefficient after ``k`` previous steps, ``(βk + 1)/(k + 2)``."""
    return (beta * k + 1.0) / (k + 2.0)


def velocity_seed(seed: int, index: int) -> int:
    """The generator seed of the initial velocity of parameter ``index`` (its position in the optimizer)."""
    return (seed * _MIX + index) % (1 << 63)


class Gravity(ElementwiseOptimizer):
    """Gravity. The initial velocity of parameter ``i`` (flat position over all param groups) is drawn in float64
    on the CPU from ``torch.Generator().manual_seed(velocity_seed(seed, i))`` with the group's lr at that step
    (v₀ = 0 if that lr is 0), so runs are reproducible across devices and a state_dict resume is bit-exact."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 0.1, alpha: float = 0.01, beta: float = 0.9,
                 weight_decay: float = 0.0, seed: int = 0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, beta=beta, weight_decay=weight_decay, seed=seed),
                         **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("alpha", group["alpha"])
        V.beta("beta", group["beta"])
        V.nonneg("weight_decay", group["weight_decay"])
        V.integer("seed", group["seed"], 0)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("velocity",)

    def _step_group(self, group: dict[str, Any], items: list, loss: Any) -> None:
        # the base creates state inside _step_group without the parameter's index: remember it by state dict
        self._new_index = {id(self.state[p]): i for i, p, _ in items}
        try:
            super()._step_group(group, items, loss)
        finally:
            self._new_index = {}

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        lr, alpha = group["lr"], group["alpha"]
        std = alpha / lr if lr > 0 else 0.0
        gen = torch.Generator().manual_seed(velocity_seed(group["seed"], self._new_index[id(state)]))
        v = torch.randn(p.shape, generator=gen, dtype=torch.float64).mul_(std)
        state["velocity"] = v.to(device=p.device, dtype=p.dtype)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b = beta_hat(group["beta"], step - 1)
        return {"lr": group["lr"], "keep": b, "mix": 1.0 - b}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        v = st["velocity"]
        if g.numel() == 0:
            return v * c["lr"]
        gm = g * g.abs().amax()
        v.mul_(c["keep"]).add_(g / (1 + gm * gm) * c["mix"])
        return c["lr"] * v

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        v = st["velocity"]
        if all(g.numel() for g in gs):
            gmax = torch._foreach_norm(gs, math.inf)
        else:  # the infinity norm of an empty tensor is undefined
            gmax = [g.abs().amax() if g.numel() else g.new_zeros(()) for g in gs]
        denom = torch._foreach_mul(gs, gmax)
        torch._foreach_mul_(denom, denom)
        torch._foreach_add_(denom, 1.0)
        zeta = torch._foreach_div(gs, denom)
        torch._foreach_mul_(v, c["keep"])
        torch._foreach_add_(v, zeta, alpha=c["mix"])
        return torch._foreach_mul(v, c["lr"])


register(OptimizerInfo(
    name="gravity", cls=Gravity, family="first-order", paper="arXiv:2101.09192",
    description="Gravity: EMA velocity (β̂ = (βk+1)/(k+2)) of g/(1 + (g·max|g|)²); seeded random v₀ ~ N(0, (α/η)²).",
    state_tensors=1, has_momentum=False,  # "beta" only bounds β̂ = (βk+1)/(k+2): not a momentum to cycle
    test_hparams={"lr": 1.0},
))
