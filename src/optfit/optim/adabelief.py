"""AdaBelief (Zhuang et al., NeurIPS 2020, arXiv 2010.07468), adabelief-pytorch 0.2 semantics:

    m ← β₁m + (1−β₁)g ;  s ← β₂s + (1−β₂)(g − m)² + ε        (updated m; ε enters the state every step)
    ŝ = max(ŝ, s) with amsgrad, else s
    rectify=False:  θ ← θ − η/(1−β₁ᵗ) · m / (√ŝ/√(1−β₂ᵗ) + ε)
    rectify=True (RAdam, ρ_∞ = 2/(1−β₂) − 1, ρ_t = ρ_∞ − 2tβ₂ᵗ/(1−β₂ᵗ)):
        ρ_t ≥ 5:  θ ← θ − η r_t √(1−β₂ᵗ)/(1−β₁ᵗ) · m/(√ŝ + ε),
                  r_t = √[(ρ_t−4)(ρ_t−2)ρ_∞ / ((ρ_∞−4)(ρ_∞−2)ρ_t)]
        else:     θ ← θ − η/(1−β₁ᵗ) · m   (degenerated_to_sgd; no update when it is False)

The reference's ``weight_decouple=True`` is ``decay_mode="decoupled"`` (the default, θ ← θ(1−ηλ)) and
``weight_decouple=False`` is ``decay_mode="coupled"`` (L2); ``fixed_decay=True`` makes the decoupled decay
θ ← θ(1−λ), independent of the lr.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from ._moments import adam_step, adam_step_foreach

__all__ = ["AdaBelief"]


class AdaBelief(ElementwiseOptimizer):
    """AdaBelief; note the small default ε = 1e-16 (ε is added to s every step, so ε_AdaBelief ≈ ε_Adam²)."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-16, weight_decay: float = 0.0, amsgrad: bool = False, rectify: bool = True,
                 degenerated_to_sgd: bool = True, fixed_decay: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      rectify=rectify, degenerated_to_sgd=degenerated_to_sgd,
                                      fixed_decay=fixed_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        for key in ("amsgrad", "rectify", "degenerated_to_sgd", "fixed_decay"):
            V.flag(key, group[key])
        if group["fixed_decay"] and group.get("decay_mode") != "decoupled":
            raise ValueError(f"Invalid fixed_decay: True needs decay_mode='decoupled', got {group.get('decay_mode')!r}")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_var") + (("max_exp_avg_var",) if group["amsgrad"] else ())

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        lr, (b1, b2) = group["lr"], group["betas"]
        bc1, bc2 = 1 - b1**step, 1 - b2**step
        c = {"b1": b1, "b2": b2, "eps": group["eps"], "adaptive": True,
             "step_size": lr / bc1, "bc2_sqrt": math.sqrt(bc2), "sgd_size": 0.0}
        if group["rectify"]:
            rho_inf = 2 / (1 - b2) - 1
            rho = rho_inf - 2 * step * b2**step / bc2
            if rho >= 5:
                r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                c.update(step_size=lr * r * math.sqrt(bc2) / bc1, bc2_sqrt=1.0)
            else:
                c.update(adaptive=False, sgd_size=lr / bc1 if group["degenerated_to_sgd"] else 0.0)
        return c

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        if group["fixed_decay"] and group["weight_decay"]:
            c = {**c, "decay": 1.0 - group["weight_decay"]}
        super()._run_kernel(group, ps, gs, sts, keys, c)

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["amsgrad"],)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, s = st["exp_avg"], st["exp_avg_var"]
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        r = g - m
        s.mul_(c["b2"]).add_(r * r * (1 - c["b2"])).add_(c["eps"])
        if flags[0]:
            st["max_exp_avg_var"].copy_(torch.maximum(st["max_exp_avg_var"], s))
            s = st["max_exp_avg_var"]
        if c["adaptive"]:  # a Python bool: one compiled graph per branch
            return adam_step(m, s, c)
        return c["sgd_size"] * m

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, s = st["exp_avg"], st["exp_avg_var"]
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, gs, alpha=1 - c["b1"])
        r = torch._foreach_sub(gs, m)
        torch._foreach_mul_(s, c["b2"])
        torch._foreach_addcmul_(s, r, r, 1 - c["b2"])
        torch._foreach_add_(s, c["eps"])
        if flags[0]:
            torch._foreach_maximum_(st["max_exp_avg_var"], s)
            s = st["max_exp_avg_var"]
        if not c["adaptive"]:
            return torch._foreach_mul(m, c["sgd_size"])
        return adam_step_foreach(m, s, c)


register(OptimizerInfo(
    name="adabelief", cls=AdaBelief, family="adaptive", paper="arXiv:2010.07468",
    description="AdaBelief: Adam with the EMA of (g − m)² (+ε each step) as second moment; RAdam-style "
                "rectification by default, decoupled weight decay.",
    state_tensors=2, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
