"""Prodigy (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML 2024,
arXiv 2306.06101, the paper's Adam version): D-Adaptation whose distance estimate weights each step's evidence
by d_k² instead of d_k, which lets d grow faster from a small d₀. With λ_k = lr·d_k·bc_k (bc_k =
√(1−β₂ᵏ)/(1−β₁ᵏ) if ``use_bias_correction`` else 1; lr is a multiplier, default 1):

    m_{k+1} = β₁m_k + (1−β₁) d_k g_k ;  v_{k+1} = β₂v_k + (1−β₂) d_k² g_k²
    r_{k+1} = β₃r_k + (d_k/d₀) λ_k ⟨g_k, x₀ − x_k⟩
    s_{k+1} = β₃s_k + (d_k/d₀) λ_k g_k             ((d_k/d₀)·d_k with ``safeguard_warmup``: no lr, no bc)
    x_{k+1} = x_k − λ_k m_{k+1} / (√v_{k+1} + d_k ε)
    d̂ = d_coef · r_{k+1} / ‖s_{k+1}‖₁
    d_{k+1} = min(d_max, d_k·growth_rate),  d_max = max(d_max, d̂)    (the first rise, from d₀, is not capped)

β₃ defaults to √β₂. The paper's (1−β₃) factors and its d_k² weight are written (as in the authors' package
``prodigyopt`` 1.1.2) as the constant-free (d_k/d₀)·λ_k: the constants cancel in r/‖s‖₁ and 1/d₀ keeps the sums
away from underflow. r and ‖s‖₁ run over every parameter of every param group (a two-pass step: each group's
share is collected, then d is updated once). ``slice_p`` = k > 1 keeps s and x₀ for every k-th entry of each
flattened tensor only (an approximation that saves memory). A parameter that is all zeros at its first step keeps
x₀ as a 0-d zero (as the package does).

The estimate's state lives in the param groups as in the package: ``group["d"]`` (the same in every group; d·lr
is the effective learning rate), ``group["d_max"]``, ``group["d_numerator"]`` (r). torch's state_dict carries
them, so a resumed run continues bit for bit. ``beta3``, ``d0``, ``d_coef`` and ``growth_rate`` shape that single
estimate and must be equal in every group (β₃ = √β₂ of the first group when None).

Where this follows or leaves the package, and why:

* The step's ε term is d_k·ε and, with β₁ = 0, the step is λ_k·d_k·g/(√v + d_kε), as the paper's algorithm
  writes it (m_{k+1} = d_k g_k at β₁ = 0). The package uses the freshly updated d_{k+1} in both places; with
  the default ε = 1e-8 and β₁ = 0.9 the two differ only in the ε term.
* ``d_coef``, ``growth_rate``, ``safeguard_warmup``, ``slice_p``, ``use_bias_correction`` and weight decay are
  the package's additions, kept with its defaults (each is the paper's method at its default).
* Param-group lr: the package takes lr = the largest group lr for every group and allows other groups only
  lr = 0 (skipped: no statistics, no state update). Here λ_k uses each group's own lr — the same whenever the
  lrs are equal or 0 — and a group at lr = 0 is skipped as in the package, but is also not decayed.
* Weight decay: ``decouple`` (the package's flag; default here None = follow ``decay_mode``, whose default
  "decoupled" is the package's ``decouple=True``) sets ``decay_mode``: True = θ ← θ(1 − λ_wd·λ_k) before the
  step, False = L2 (into g before every statistic); "independent" is θ ← θ(1 − λ_wd·lr/initial_lr). Each group
  uses its own weight_decay, eps, betas, use_bias_correction, safeguard_warmup and slice_p.
* When ‖s‖₁ is 0 (no gradient yet) d and r are left unchanged (the package returns early there).
* Left out: ``fsdp_in_use`` (sharded parameters: d would need an all-reduce of r and ‖s‖₁; not supported).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from .dadapt import (DistanceEstimator, apply_decouple, check_growth_rate, dots, l1_norms, pending_totals,
                     scaled_add_)

__all__ = ["Prodigy"]


def _sliced(t: Tensor, every: int) -> Tensor:
    """Every ``every``-th entry of the flattened tensor (the tensor itself when ``every`` is 1)."""
    return t if every == 1 else t.reshape(-1)[::every]


class Prodigy(DistanceEstimator):
    """Adam with the Prodigy step size d·lr (lr a multiplier, default 1); ``group["d"]`` holds d."""

    default_decay_mode = "decoupled"
    GLOBAL_KEYS = ("beta3", "d0", "d_coef", "growth_rate")

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999),
                 beta3: float | None = None, eps: float = 1e-8, weight_decay: float = 0.0,
                 decouple: bool | None = None, use_bias_correction: bool = False, safeguard_warmup: bool = False,
                 d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float = float("inf"), slice_p: int = 1,
                 **options: Any) -> None:
        defaults = dict(lr=lr, betas=betas, beta3=beta3, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, safeguard_warmup=safeguard_warmup, d0=d0,
                        d_coef=d_coef, growth_rate=growth_rate, slice_p=slice_p)
        super().__init__(params, {**defaults, **self.initial_estimate(d0)}, **options)

    @staticmethod
    def initial_estimate(d0: float) -> dict[str, Any]:
        return {"d": d0, "d_max": d0, "d_numerator": 0.0}

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "weight_decay")
        if group["beta3"] is not None:
            V.beta("beta3", group["beta3"])
        V.positive("eps", group["eps"])
        V.positive("d0", group["d0"])
        V.positive("d_coef", group["d_coef"])
        check_growth_rate(group["growth_rate"])
        V.integer("slice_p", group["slice_p"], minimum=1)
        V.flag("use_bias_correction", group["use_bias_correction"])
        V.flag("safeguard_warmup", group["safeguard_warmup"])
        apply_decouple(group)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (("exp_avg",) if group["betas"][0] > 0 else ()) + ("exp_avg_sq",)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        every = group["slice_p"]
        kept = _sliced(p.detach(), every)
        state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format) if every == 1 else torch.zeros_like(kept)
        if p.any():
            state["p0"] = kept.clone(memory_format=torch.preserve_format)
        else:  # x₀ = 0: no copy needed
            state["p0"] = torch.zeros((), dtype=p.dtype, device=p.device)

    def _beta3(self) -> float:
        first = self.param_groups[0]
        return first["beta3"] if first["beta3"] is not None else math.sqrt(first["betas"][1])

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        first = self.param_groups[0]
        d, d0 = first["d"], first["d0"]
        bc = math.sqrt(1 - b2**step) / (1 - b1**step) if group["use_bias_correction"] else 1.0
        dlr = d * group["lr"] * bc
        return {"lr": group["lr"], "dlr": dlr, "b1": b1, "b2": b2, "m_scale": d * (1 - b1),
                "v_scale": d * d * (1 - b2), "d_eps": d * group["eps"], "beta3": self._beta3(),
                "r_weight": (d / d0) * dlr, "s_scale": (d / d0) * (d if group["safeguard_warmup"] else dlr)}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["betas"][0] > 0,)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """Adam's moments of d·g and the step ``λ·m / (√v + dε)``; r and s are the first pass's."""
        v = st["exp_avg_sq"]
        v.mul_(c["b2"]).addcmul_(g, g, value=c["v_scale"])
        if flags[0]:
            m = st["exp_avg"]
            m.mul_(c["b1"]).add_(g, alpha=c["m_scale"])
        else:
            m = g * c["m_scale"]
        return m / (v.sqrt() + c["d_eps"]) * c["dlr"]

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        v = st["exp_avg_sq"]  # in place, no temporaries: a fresh tensor per step costs page faults on large models
        torch._foreach_mul_(v, c["b2"])
        torch._foreach_addcmul_(v, gs, gs, value=c["v_scale"])
        if flags[0]:
            m = st["exp_avg"]
            torch._foreach_mul_(m, c["b1"])
            torch._foreach_add_(m, gs, alpha=c["m_scale"])
        else:
            m = torch._foreach_mul(gs, c["m_scale"])
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, c["d_eps"])
        steps = torch._foreach_div(m, denom)
        torch._foreach_mul_(steps, c["dlr"])
        return steps

    # ------------------------------------------------------------- two passes: r and ‖s‖₁, then d
    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """This bucket's share of r (at x_k, before the step), s and its ‖·‖₁, then the Adam step."""
        if group["lr"] == 0:
            return  # lr = 0: the group is frozen (no statistics, state, move or decay)
        every, foreach = group["slice_p"], self._impl(group, ps) == "foreach"
        g_kept = [_sliced(g, every) for g in gs]
        to_start = dots(g_kept, [st["p0"] - _sliced(p, every) for p, st in zip(ps, sts)]).sum()  # ⟨g, x₀ − x⟩
        ss = [st["s"] for st in sts]
        scaled_add_(ss, g_kept, c["beta3"], c["s_scale"], foreach)
        if group["decay_mode"] == "decoupled":
            c["decay"] = 1.0 - group["weight_decay"] * c["dlr"]
        extra = self._step_bucket(group, ps, gs, sts, keys, c, to_start)
        self._pending.append(torch.stack([c["r_weight"] * to_start, l1_norms(ss, foreach).sum(), *extra]))

    def _step_bucket(self, group, ps, gs, sts, keys, c, to_start) -> list:
        """The Adam step of one bucket; a subclass may return more per-bucket sums for its second pass (auto)."""
        super()._run_kernel(group, ps, gs, sts, keys, c)
        return []

    def _second_pass(self, pending: list, loss: Any) -> None:
        r_share, s_l1 = pending_totals(pending)[:2]
        self._update_distance(r_share, s_l1)

    def _update_distance(self, r_share: float, s_l1: float) -> None:
        """d from this step's share of r and ‖s‖₁ (both over every parameter); unchanged while ‖s‖₁ = 0."""
        if s_l1 == 0:
            return
        first = self.param_groups[0]
        r = self._beta3() * first["d_numerator"] + r_share
        d, d_max = first["d"], first["d_max"]
        d_hat = first["d_coef"] * r / s_l1
        if d == first["d0"]:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        self._store_estimate(d=min(d_max, d * first["growth_rate"]), d_max=d_max, d_numerator=r)


register(OptimizerInfo(
    name="prodigy", cls=Prodigy, family="learning-rate-free", paper="arXiv:2306.06101",
    description="Prodigy: Adam with step d·lr, d a D-Adaptation estimate of ‖x₀ − x*‖ weighted by d² toward recent "
                "steps, over all parameters (lr a multiplier, default 1); decoupled decay.",
    state_tensors=4, has_betas=True, has_momentum=True, test_hparams={},
))
