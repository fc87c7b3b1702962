"""Grad-Avg (Purkayastha & Purkayastha, arXiv 2012.02387, OPT 2020): Heun's predictor–corrector on gradient
flow, averaging the gradient at θ and at the point an SGD step would reach:

    g₀ = ∇f(θ)                         (first closure call)
    θ̃ = θ − η g₀                       (trial point)
    g₁ = ∇f(θ̃)                         (second closure call, same mini-batch)
    θ ← θ − (η/2)(g₀ + g₁)

On f = ½ax² one step is x ← x(1 − ηa + (ηa)²/2) (stable for 0 < ηa < 2). Each step costs two forward/backward
passes and holds g₀ and a copy of θ (2×P, transient; 3×P with coupled decay). ``weight_decay`` is coupled L2 by
default and then exact Heun on f + ½λ‖θ‖² (both gradients carry λθ, the trial point included); the decoupled and
independent modes multiply θ once per step. The Grokfast filter sees the averaged gradient (once per step); the
trial step is unfiltered. The paper's recommended lr was not recovered: the default 0.1 is a plain SGD-like choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["GradAvg"]


class GradAvg(ElementwiseOptimizer):
    """Grad-Avg; ``step(closure)`` calls the closure twice and returns the first loss. After the step ``p.grad``
    holds the trial-point gradient g₁."""

    default_decay_mode = "coupled"
    needs_closure = True

    def __init__(self, params: Any, lr: float = 0.1, weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (Grad-Avg's step is η·ḡ, always aligned with the averaged "
                             "gradient, so the mask would only rescale)")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One Heun step; the closure must zero the gradients, re-evaluate the loss and call ``backward()``."""
        if closure is None:
            raise RuntimeError("GradAvg.step() needs a closure that re-evaluates the loss (it is called twice: "
                               "`def closure(): opt.zero_grad(); l = f(); l.backward(); return l`)")
        with torch.enable_grad():
            loss = closure()
        work = self._gather()
        if not self._finite_or_policy(work):
            return loss
        saved = []  # (group, index, p, θ, g₀, d = θ − θ̃ when L2 is coupled)
        for group, items in work:
            lr, wd = group["lr"], group["weight_decay"]
            coupled = group["decay_mode"] == "coupled" and wd != 0
            for index, p, g in items:
                g0 = g.detach().clone()
                d = (g0 + wd * p) * lr if coupled else None  # kept for the L2 term at θ̃
                saved.append((group, index, p, p.detach().clone(), g0, d))
                p.sub_(g0 * lr if d is None else d)
        try:
            with torch.enable_grad():
                closure()
            trial = {}
            for group, items in self._gather():
                trial.update({index: g for index, _, g in items})
            missing = [(i, p) for _, i, p, *_ in saved if i not in trial]
            if missing:
                raise RuntimeError(f"GradAvg: {self._describe(*missing[0])} has a gradient at θ but none at the "
                                   "trial point; the closure must compute the same gradients twice")
            second = [(group, [(i, p, trial[i]) for g_, i, p, *_ in saved if g_ is group]) for group, _ in work]
            ok = self._finite_or_policy(second)
        finally:  # θ is restored whatever happens, before any state is touched
            for _, _, p, theta, _, _ in saved:
                p.copy_(theta)
        if not ok:
            return loss
        averaged = {}
        for group, index, p, _, g0, d in saved:
            g_avg = g0.add_(trial[index]).mul_(0.5)
            if d is not None:
                # Heun on f + ½λ‖θ‖²: ½(g₀ + λθ + g₁ + λθ̃) = ḡ + λθ − ½λd; the base adds the λθ
                g_avg.sub_(d * (0.5 * group["weight_decay"]))
            averaged.setdefault(id(group), []).append((index, p, g_avg))
        for group, _ in work:
            if id(group) in averaged:
                self._step_group(group, averaged[id(group)], loss)
        return loss

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        return c["lr"] * g

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        return torch._foreach_mul(gs, c["lr"])


register(OptimizerInfo(
    name="grad-avg", cls=GradAvg, family="first-order", paper="arXiv:2012.02387",
    aliases=("gradavg",), description="Grad-Avg: Heun step θ ← θ − (η/2)(∇f(θ) + ∇f(θ − η∇f(θ))); two closure "
                                      "calls per step, 2×P transient memory.",
    state_tensors=0, needs_closure=True, supports_cautious=False, test_hparams={"lr": 0.1},
))
