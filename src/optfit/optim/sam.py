"""SAM (Foret, Kleiner, Mobahi & Neyshabur, arXiv 2010.01412), ASAM (Kwon, Kim, Park & Choi, arXiv 2102.11600) and
GSAM (Zhuang et al., arXiv 2203.08065): sharpness-aware wrappers around any optimizer.

``step(closure)`` calls the closure twice; the closure re-evaluates the loss and its gradients (``zero_grad``,
forward, ``backward``) wherever the parameters are:

    g    = ∇f(θ)                                   first call; its loss is what step() returns
    T    = 1 (SAM)   or   T = |θ| + η (ASAM: elementwise, ``adaptive=True``)
    ε    = ρ · T² g / (‖T g‖ + 1e-12)              one norm over every parameter of every param group
    g_p  = ∇f(θ + ε)                               second call, at the perturbed point
    GSAM: u = g_p / (‖g_p‖ + 1e-12),  g_⊥ = g − ⟨g, u⟩ u,  g_p ← g_p − α g_⊥        (⟨·,·⟩, ‖·‖ global too)
    θ ← the base optimizer's step from θ with the gradient g_p

θ is restored by copy (bit for bit) before the base steps. ``rho`` (and ``adaptive``, ``eta``, GSAM's ``alpha``, …)
may differ per param group (``{"params": ..., "rho": 0.1}``; stored under ``sam_rho``, ``sam_adaptive``,
``sam_eta``, ``gsam_alpha``, … so as not to clash with the base's own names): the norm stays global and each
group's ρ scales that group's share of ε. In ``maximize`` groups g is −∇f, so ε ascends −f.
The gradients the closure leaves in ``p.grad`` are those at θ + ε (GSAM hands the base its decomposed gradient
and puts the closure's back afterwards). Every call of the closure also updates BatchNorm running statistics;
freeze them around the second call yourself where that matters (the authors' code does).

GSAM's ρ follows the learning rate as in the paper and the authors' code: ρ_t = ρ_min + (ρ − ρ_min)(η_t − η_min) /
(η_max − η_min), with η_max the group's lr when the group was added (``lr_max`` overrides it), η_min = ``lr_min``
(0), and ρ_t = ρ when η_max = η_min; ``rho_min=None`` (the default) keeps ρ constant.

Non-finite gradients at θ follow the base's ``nonfinite`` policy before anything moves ("skip" skips the whole
step, counted in the base's ``skipped_steps``); those at θ + ε are the base's to check, after θ is restored.
A base that needs a closure of its own or ``create_graph`` gradients is refused.

Departures: ASAM's T = |θ| + η applies to every parameter of a group with ``adaptive=True`` (the official code
normalises only tensors whose name contains "weight"; put biases in a group with ``adaptive=False`` for that).
pytorch_optimizer 4.1.0 (the parity reference) computes the norm ‖g‖ in float32 whatever the dtype, and its
``SAM(adaptive=True)`` is ASAM with η = 0; its GSAM removes ε by subtraction rather than restoring θ by copy. The
defaults ρ = 0.05 (SAM), ρ = 0.5, η = 0.01 (ASAM) are the papers'; GSAM's α = 0.4 is pytorch_optimizer's (the
paper tunes α per task).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import as_number
from .lookahead import OptimizerWrapper, expose_base_hyperparameters, unhooked_step

__all__ = ["SAM", "ASAM", "GSAM"]

NORM_EPS = 1e-12  # added to the gradient norms (as the authors' code does), so a zero gradient gives ε = 0


def _real(t: Tensor) -> Tensor:
    return torch.view_as_real(t) if t.is_complex() else t


def _global_norm(tensors: list[Tensor]) -> Tensor:
    """‖(t₁, t₂, …)‖₂ as a float64 0-d tensor on the first tensor's device (low precision summed in float32)."""
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(t, dtype=torch.float32 if t.dtype in (torch.bfloat16, torch.float16) else None)
             .to(device=device, dtype=torch.float64) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    device = a[0].device
    return torch.stack([(x * y).sum().to(device=device, dtype=torch.float64) for x, y in zip(a, b)]).sum()


class SAM(OptimizerWrapper):
    """Sharpness-aware minimization around ``base`` (module docstring); ``adaptive=True`` is ASAM."""

    needs_closure = True
    GROUP_KEYS = {"rho": "sam_rho", "adaptive": "sam_adaptive", "eta": "sam_eta"}

    def __init__(self, params: Any, base: Any = "adamw", rho: float = 0.05, adaptive: bool = False,
                 eta: float = 0.01, **base_hparams: Any) -> None:
        self._setup(params, base, {"rho": rho, "adaptive": adaptive, "eta": eta}, base_hparams)

    def _setup(self, params: Any, base: Any, own: dict[str, Any], base_hparams: dict[str, Any]) -> None:
        super().__init__(params, base, own, base_hparams)
        inner = self.base_optimizer
        if getattr(inner, "needs_closure", False) or getattr(type(inner), "needs_create_graph", False):
            what = "a closure of its own" if getattr(inner, "needs_closure", False) else "create_graph gradients"
            raise ValueError(f"Invalid base: {type(inner).__name__} needs {what}; {type(self).__name__} steps its "
                             "base with the perturbed gradient and no closure")

    def _check_group(self, group: dict[str, Any]) -> None:
        V.nonneg("rho", group["sam_rho"])
        V.flag("adaptive", group["sam_adaptive"])
        V.nonneg("eta", group["sam_eta"])

    def _rho(self, group: dict[str, Any]) -> float:
        return as_number(group["sam_rho"])

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One SAM step; ``closure`` is called at θ and at θ + ε. Returns the loss at θ."""
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step() needs a closure that re-evaluates the loss and its "
                               "gradients (it is called at θ and at the perturbed point), e.g. `def closure(): "
                               "opt.zero_grad(); loss = f(); loss.backward(); return loss`")
        with torch.enable_grad():
            loss = closure()
        work = self._gather()
        if not self._finite_or_policy(work):
            return loss
        items = [(group, p, g) for group, its in work for _, p, g in its]
        if not items:
            return loss
        clean = self._clean_gradients(items)
        perturbation = self._perturbation(items)
        saved = [p.detach().clone() for _, p, _ in items]
        try:
            for (_, p, _), e in zip(items, perturbation):
                _real(p).add_(e)
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                closure()
        finally:
            for (_, p, _), theta in zip(items, saved):
                p.copy_(theta)
        self._base_step(clean)
        return loss

    def _perturbation(self, items: list[tuple[dict[str, Any], Tensor, Tensor]]) -> list[Tensor]:
        """ε for each (group, param, working gradient), as real views."""
        scales, scaled = [], []
        for group, p, g in items:
            g = _real(g)
            t = _real(p).abs().add_(group["sam_eta"]) if group["sam_adaptive"] else None
            scales.append(t)
            scaled.append(g if t is None else t * g)
        norm = _global_norm(scaled)
        out = []
        for (group, _, _), t, tg in zip(items, scales, scaled):
            factor = (self._rho(group) / (norm + NORM_EPS)).to(tg.dtype)
            out.append(tg * factor if t is None else t * tg * factor)
        return out

    def _clean_gradients(self, items: list) -> Any:
        return None

    def _base_step(self, clean: Any) -> None:
        unhooked_step(self.base_optimizer)()


class ASAM(SAM):
    """Adaptive SAM: ε = ρ T² g / ‖T g‖ with T = |θ| + η (SAM with ``adaptive=True`` and ASAM's defaults)."""

    def __init__(self, params: Any, base: Any = "adamw", rho: float = 0.5, eta: float = 0.01,
                 **base_hparams: Any) -> None:
        self._setup(params, base, {"rho": rho, "adaptive": True, "eta": eta}, base_hparams)


class GSAM(SAM):
    """Surrogate-gap guided SAM: the base steps with g_p − α g_⊥ (module docstring), ρ optionally tied to the lr."""

    GROUP_KEYS = {**SAM.GROUP_KEYS, "alpha": "gsam_alpha", "rho_min": "gsam_rho_min", "lr_max": "gsam_lr_max",
                  "lr_min": "gsam_lr_min"}

    def __init__(self, params: Any, base: Any = "adamw", rho: float = 0.05, alpha: float = 0.4,
                 rho_min: float | None = None, lr_max: float | None = None, lr_min: float = 0.0,
                 adaptive: bool = False, eta: float = 0.01, **base_hparams: Any) -> None:
        own = {"rho": rho, "adaptive": adaptive, "eta": eta, "alpha": alpha, "rho_min": rho_min, "lr_max": lr_max,
               "lr_min": lr_min}
        self._setup(params, base, own, base_hparams)

    def _init_group(self, group: dict[str, Any]) -> None:
        super()._init_group(group)
        if group["gsam_lr_max"] is None:
            group["gsam_lr_max"] = as_number(group["lr"])

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        V.in_range("alpha", group["gsam_alpha"], 0.0, 1.0, hi_open=False)
        if group["gsam_rho_min"] is not None:
            V.nonneg("rho_min", group["gsam_rho_min"])
        if group["gsam_lr_max"] is not None:
            V.nonneg("lr_max", group["gsam_lr_max"])
        V.nonneg("lr_min", group["gsam_lr_min"])

    def _rho(self, group: dict[str, Any]) -> float:
        rho, rho_min = as_number(group["sam_rho"]), group["gsam_rho_min"]
        lr_max, lr_min = as_number(group["gsam_lr_max"]), as_number(group["gsam_lr_min"])
        if rho_min is None or lr_max == lr_min:
            return rho
        return rho_min + (rho - rho_min) * (as_number(group["lr"]) - lr_min) / (lr_max - lr_min)

    def _clean_gradients(self, items: list) -> dict[int, Tensor]:
        return {id(p): p.grad.detach().clone() for _, p, _ in items}

    def _base_step(self, clean: dict[int, Tensor]) -> None:
        """Decompose (one projection over all groups), hand the base g_p − α g_⊥, then restore ``p.grad``."""
        pairs = [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]
        if not pairs:
            return super()._base_step(clean)
        perturbed = [_real(p.grad) for _, p in pairs]
        originals = [_real(clean[id(p)]) if id(p) in clean else torch.zeros_like(g)
                     for (_, p), g in zip(pairs, perturbed)]
        norm = _global_norm(perturbed)
        units = [g / (norm + NORM_EPS).to(g.dtype) for g in perturbed]
        projection = _dot(originals, units)
        grads = []
        for (group, p), gp, gc, u in zip(pairs, perturbed, originals, units):
            vertical = gc - projection.to(gc.dtype) * u
            new = gp - group["gsam_alpha"] * vertical
            grads.append(torch.view_as_complex(new) if p.grad.is_complex() else new)
        kept = [p.grad for _, p in pairs]
        try:
            for (_, p), g in zip(pairs, grads):
                p.grad = g
            super()._base_step(clean)
        finally:
            for (_, p), g in zip(pairs, kept):
                p.grad = g


for _cls in (SAM, ASAM, GSAM):
    expose_base_hyperparameters(_cls)

_COMMON = dict(family="sharpness-aware", state_tensors=2, needs_closure=True, has_betas=True, has_momentum=True,
               test_hparams={"lr": 0.05})
register(OptimizerInfo(
    name="sam", cls=SAM, paper="arXiv:2010.01412",
    description="SAM around any optimizer (base='adamw' by default): the base steps from θ with ∇f(θ + ε), "
                "ε = ρ g/‖g‖ (one norm over all parameters); two closure calls per step; state = the base's.",
    **_COMMON))
register(OptimizerInfo(
    name="asam", cls=ASAM, paper="arXiv:2102.11600",
    description="Adaptive SAM: ε = ρ T²g/‖Tg‖ with T = |θ| + η (scale-invariant sharpness); two closure calls per "
                "step; state = the base's.",
    **_COMMON))
register(OptimizerInfo(
    name="gsam", cls=GSAM, paper="arXiv:2203.08065",
    description="Surrogate-gap guided SAM: the base steps with ∇f(θ + ε) − α g_⊥ (g_⊥: the part of ∇f(θ) "
                "orthogonal to ∇f(θ + ε)); ρ optionally proportional to the lr; state = the base's.",
    **_COMMON))
