"""The induced-metric optimisers (Harvey, "The Optimiser Hidden in Plain Sight: Training with the Loss Landscape's
Induced Metric", arXiv 2509.03594; the author's code: github.com/harveyThomas4692/Induced-Metric-Optimiser).

Embedding the loss landscape as the graph (θ, φ(L(θ))) induces the metric G = P + ξ∇φ∇φᵀ on parameter space
(P the preconditioner's metric). By Sherman–Morrison the natural-gradient step G⁻¹∇φ is P⁻¹∇φ/(1 + ξ∇φᵀP⁻¹∇φ):
the preconditioned step, shrunk where the landscape is steep (a smooth gradient clipping). With momentum and a
bias-corrected EMA of the scalar τ = ξ∇φᵀP⁻¹∇φ, at step t:

    m ← β₁m + (1−β₁)g ;  m̂ = m/(1−β₁ᵗ)
    preconditioner="sgd":   P = I                       d = m̂               τ = ξ Σ g²
    preconditioner="adam":  v ← β₂v + (1−β₂)g², v̂ = v/(1−β₂ᵗ), D = √v̂ + ε
                                                         d = m̂/D            τ = ξ Σ g²/D
    τ̄ ← βτ̄ + (1−β)τ ;  τ̂ = τ̄/(1−βᵗ)            (β = metric_beta)
    graph embedding φ = L:     a = 1/(1 + τ̂)                                  (InducedMetric)
    log embedding   φ = log L: a = L/(L² + τ̂)   (∇log L = g/L; needs the loss)  (InducedMetricLog)
    θ ← θ(1 − ηλ) − η·a·d                         (decoupled decay, the paper's natural choice)

τ sums over every parameter of every group (as the author's JAX code, which ran the experiments; his PyTorch
port sums per group): each parameter keeps its own EMA of its share (0-d state ``metric_ema``) and τ̂ is their
sum, equal to the EMA of the total by linearity; a group's ``xi`` weights its own parameters. Hyperparameter
names: ``betas`` = (the author's ``momentum``, ``beta_rms``), ``metric_beta`` = his ``beta``. Defaults are his
(β₁ = 0.9, β₂ = 0.99, ξ = 0.1, β = 0.8, ε = 1e-8) except ``lr``: 1e-3 for the Adam-preconditioned default (his
0.1 is an SGD learning rate), 0.1 for ``InducedMetricLog`` (SGD-preconditioned, as in his code).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _features as F
from . import _validation as V
from ._base import ElementwiseOptimizer, as_number
from ..registry import OptimizerInfo, register

__all__ = ["InducedMetric", "InducedMetricLog"]

PRECONDITIONERS = ("adam", "sgd")


class InducedMetric(ElementwiseOptimizer):
    """Induced-metric optimiser with the graph embedding, over Adam's preconditioner (default) or SGD's;
    ``last_scale`` holds the metric factor a of the latest step."""

    default_decay_mode = "decoupled"
    two_pass = True
    log_embedding = False
    last_scale: float | None = None

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 xi: float = 0.1, metric_beta: float = 0.8, weight_decay: float = 0.0, preconditioner: str = "adam",
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, xi=xi, metric_beta=metric_beta,
                                      weight_decay=weight_decay, preconditioner=preconditioner), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.nonneg("xi", group["xi"])
        V.beta("metric_beta", group["metric_beta"])
        V.choice("preconditioner", group["preconditioner"], PRECONDITIONERS)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg",) + (("exp_avg_sq",) if group["preconditioner"] == "adam" else ()) + ("metric_ema",)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        for key in self._state_keys(group):
            scalar = key == "metric_ema"
            state[key] = p.new_zeros(()) if scalar else torch.zeros_like(p, memory_format=torch.preserve_format)

    def _working_set(self, group: dict[str, Any], items: list) -> tuple[list, list, list, list]:
        """The base's, plus zeros for v when a group switches to ``preconditioner="adam"`` mid-run."""
        out = super()._working_set(group, items)
        for wp, st in zip(out[1], out[3]):
            if group["preconditioner"] == "adam" and "exp_avg_sq" not in st:
                st["exp_avg_sq"] = torch.zeros_like(wp, memory_format=torch.preserve_format)
        return out

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        mb = group["metric_beta"]
        return {"lr": group["lr"], "b1": b1, "bc1": 1.0 - b1**step, "b2": b2, "bc2": 1.0 - b2**step,
                "eps": group["eps"], "xi": group["xi"], "mb": mb, "mbc": 1.0 - mb**step}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["preconditioner"] == "adam",)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """Update m (and v) and this parameter's τ̄ in place; return the direction d (the metric factor is global)."""
        m = st["exp_avg"]
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        sq = g * g
        if flags[0]:
            v = st["exp_avg_sq"]
            v.mul_(c["b2"]).add_(sq * (1 - c["b2"]))
            denom = (v / c["bc2"]).sqrt() + c["eps"]
            d, share = (m / c["bc1"]) / denom, sq / denom
        else:
            d, share = m / c["bc1"], sq
        st["metric_ema"].mul_(c["mb"]).add_(share.sum() * c["xi"] * (1 - c["mb"]))
        return d

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m = st["exp_avg"]
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, torch._foreach_mul(gs, 1 - c["b1"]))
        sq = torch._foreach_mul(gs, gs)
        d = torch._foreach_div(m, c["bc1"])
        if flags[0]:
            v = st["exp_avg_sq"]
            torch._foreach_mul_(v, c["b2"])
            torch._foreach_add_(v, torch._foreach_mul(sq, 1 - c["b2"]))
            denom = torch._foreach_div(v, c["bc2"])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, c["eps"])
            torch._foreach_div_(d, denom)
            torch._foreach_div_(sq, denom)
        ema = st["metric_ema"]
        torch._foreach_mul_(ema, c["mb"])
        torch._foreach_add_(ema, [x.sum() * c["xi"] * (1 - c["mb"]) for x in sq])
        return d

    # --------------------------------------------------------- two passes: directions and τ̂, then a·d
    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        ds = self._directions(group, ps, gs, sts, keys, c)
        shares = [st["metric_ema"] / c["mbc"] for st in sts]
        self._pending.append((group, ps, gs, ds, c, shares))

    def _metric_factor(self, tau: float, loss: Any) -> float:
        return 1.0 / (1.0 + tau)

    def _second_pass(self, pending: list, loss: Any) -> None:
        shares = [x.double() for *_, s in pending for x in s]
        tau = float(torch.stack([x.to(shares[0].device) for x in shares]).sum())
        a = self.last_scale = self._metric_factor(tau, loss)
        for group, ps, gs, ds, c, _ in pending:
            steps = torch._foreach_mul(ds, float(as_number(c["lr"])) * a)
            if group["cautious"]:
                steps = [F.cautious(s, g) for s, g in zip(steps, gs)]
            if c["decay"] != 1.0:
                torch._foreach_mul_(ps, c["decay"])
            torch._foreach_sub_(ps, steps)


class InducedMetricLog(InducedMetric):
    """Induced-metric optimiser with the log embedding φ = log L: a = L/(L² + τ̂), so ``step(closure)`` needs the
    loss, and it must be positive. SGD-preconditioned by default, as in the author's code."""

    needs_closure = True
    log_embedding = True
    maximize_unsupported = ("embeds log L, which needs the loss L > 0 of a minimisation (minimise −f with a closure "
                            "returning −f instead, if −f > 0)")

    def __init__(self, params: Any, lr: float = 0.1, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 xi: float = 0.1, metric_beta: float = 0.8, weight_decay: float = 0.0, preconditioner: str = "sgd",
                 **options: Any) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, xi=xi, metric_beta=metric_beta,
                         weight_decay=weight_decay, preconditioner=preconditioner, **options)

    def _step_group(self, group: dict[str, Any], items: list, loss: Any) -> None:
        """Refuse a missing or non-positive loss before the first group is touched (nothing is modified)."""
        value = None if loss is None else float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        if value is None or (math.isfinite(value) and value <= 0):
            raise ValueError(f"{type(self).__name__}: the loss is {value!r}; the log embedding needs the closure's "
                             "loss L > 0 (nothing was modified)")
        super()._step_group(group, items, loss)

    def _metric_factor(self, tau: float, loss: Any) -> float:
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        return value / (value * value + tau)


_PAPER = "arXiv:2509.03594"
_SHARED = dict(paper=_PAPER, has_betas=True, test_hparams={"lr": 0.05})
register(OptimizerInfo(
    name="induced-metric", cls=InducedMetric, family="adaptive", state_tensors=2, **_SHARED,
    description="Induced-metric optimiser: the preconditioned momentum step scaled by 1/(1 + τ̂), τ̂ the EMA of "
                "ξ·gᵀP⁻¹g over all parameters (smooth clipping); preconditioner 'adam' (default) or 'sgd'."))
register(OptimizerInfo(
    name="induced-metric-adam", cls=InducedMetric, preset={"preconditioner": "adam"}, family="adaptive",
    state_tensors=2, **_SHARED,
    description="Induced metric over Adam (the paper's RMS variant): m̂/(√v̂ + ε) scaled by 1/(1 + τ̂), "
                "τ = ξΣg²/(√v̂ + ε)."))
register(OptimizerInfo(
    name="induced-metric-sgd", cls=InducedMetric, preset={"preconditioner": "sgd"}, family="first-order",
    state_tensors=1, **_SHARED,
    description="Induced metric over SGD with momentum: m̂ scaled by 1/(1 + τ̂), τ = ξ‖g‖² over all parameters."))
register(OptimizerInfo(
    name="induced-metric-log", cls=InducedMetricLog, family="first-order", state_tensors=1, needs_closure=True,
    **_SHARED,
    description="Induced metric of the log-loss embedding: m̂ scaled by L/(L² + τ̂) (closure required, L > 0); "
                "SGD-preconditioned by default."))
