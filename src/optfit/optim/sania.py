"""SANIA (Abdukhakimov, Xiang, Kamzolov, Gower & Takáč, arXiv 2312.17369): a preconditioned Polyak step whose
size γ makes the second-order Polyak model of the loss reach f* = 0 along the direction d = B⁻¹g:

    Adam-SQR:     s ← β₂s + (1−β₂)g²,  B = max(ε, s/(1−β₂ᵗ))       (preconditioner="adam")
    AdaGrad-SQR:  s ← s + g²,           B = max(ε, s)               (preconditioner="adagrad")
    (is_sqrt=True uses √B: no longer scale invariant)
    d = g / B ;  q = Σ g⊙d over every parameter of the optimizer ;  f = the closure's loss
    γ = 1 − √(1 − 2f/q) if 2f ≤ q else 1      (the smaller root of f − γq + ½γ²q = 0)
    θ ← θ − η γ d                              (η = lr, a multiplier, default 1)

ε is a floor (max), not an additive term. q and γ are global over all param groups (the reference sums per
group; ``create_optimizer`` splits a model into decay/no-decay groups, and the loss belongs to all of them);
each group then scales by its own lr. A negative loss (the f* = 0 assumption broken) gives γ = 0. Only β₂ is
used, so the hyperparameter is ``beta2`` rather than ``betas``. ``weight_decay`` (not in the paper) is decoupled.
``maximize=True`` is refused (ValueError): γ comes from the loss under f* = 0 ≤ f, which an ascent does not have.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["SANIA"]

PRECONDITIONERS = ("adam", "adagrad")


def polyak_gamma(loss: float, q: float) -> float:
    """SANIA's step size: ``1 − √(1 − 2f/q)`` when ``0 < 2f ≤ q``, 1 when ``2f > q`` (or ``q = 0``), 0 when f ≤ 0."""
    if not q > 0 or 2 * loss > q:
        return 1.0
    return max(0.0, 1.0 - math.sqrt(1.0 - 2 * loss / q))


class SANIA(ElementwiseOptimizer):
    """SANIA with the Adam-SQR (default) or AdaGrad-SQR preconditioner; ``step(closure)`` needs the loss.
    ``last_gamma`` holds the γ of the latest step."""

    default_decay_mode = "decoupled"
    needs_closure = True
    two_pass = True
    maximize_unsupported = ("computes its step size from the loss under the assumption f* = 0 ≤ f; an ascent on f "
                            "has no such bound (minimise −f with a closure returning −f instead)")
    last_gamma: float | None = None

    def __init__(self, params: Any, lr: float = 1.0, preconditioner: str = "adam", beta2: float = 0.999,
                 eps: float = 0.1, is_sqrt: bool = False, weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, preconditioner=preconditioner, beta2=beta2, eps=eps, is_sqrt=is_sqrt,
                                      weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.choice("preconditioner", group["preconditioner"], PRECONDITIONERS)
        V.beta("beta2", group["beta2"])
        V.positive("eps", group["eps"])
        V.flag("is_sqrt", group["is_sqrt"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (SANIA's direction B⁻¹g always agrees in sign with g, so the "
                             "mask would only rescale)")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg_sq",) if group["preconditioner"] == "adam" else ("sum",)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        adam = group["preconditioner"] == "adam"
        b2 = group["beta2"]
        return {"lr": group["lr"], "b2": b2, "bc2": 1.0 - b2**step if adam else 1.0, "eps": group["eps"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["preconditioner"] == "adam", group["is_sqrt"])

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """Update the preconditioner in place and return the direction ``d = g/B`` (not scaled: γ is global)."""
        adam, is_sqrt = flags
        if adam:
            s = st["exp_avg_sq"]
            s.mul_(c["b2"]).add_(g * g * (1 - c["b2"]))
            b = (s / c["bc2"]).clamp_min(c["eps"])
        else:
            s = st["sum"]
            s.add_(g * g)
            b = s.clamp_min(c["eps"])
        return g / (b.sqrt() if is_sqrt else b)

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        adam, is_sqrt = flags
        sq = torch._foreach_mul(gs, gs)  # same rounding as the reference (no fused addcmul)
        if adam:
            s = st["exp_avg_sq"]
            torch._foreach_mul_(s, c["b2"])
            torch._foreach_mul_(sq, 1 - c["b2"])
            torch._foreach_add_(s, sq)
            b = torch._foreach_div(s, c["bc2"])
            torch._foreach_clamp_min_(b, c["eps"])
        else:
            s = st["sum"]
            torch._foreach_add_(s, sq)
            b = torch._foreach_clamp_min(s, c["eps"])
        if is_sqrt:
            torch._foreach_sqrt_(b)
        return torch._foreach_div(gs, b)

    # ------------------------------------------------------------------- two passes: directions, then γ·d
    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """First pass only: update the preconditioner, keep d and this bucket's share of q."""
        ds = self._directions(group, ps, gs, sts, keys, c)
        q = [torch.sum(g * d, dtype=torch.float64 if g.dtype == torch.float64 else torch.float32).double()
             for g, d in zip(gs, ds)]
        self._pending.append((ps, ds, c, q))

    def _second_pass(self, pending: list, loss: Any) -> None:
        if loss is None:
            raise RuntimeError("SANIA.step(): the closure must return the loss (its value sets the step size)")
        qs = [x for *_, q in pending for x in q]
        q = float(torch.stack([x.to(qs[0].device) for x in qs]).sum())
        f = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        gamma = self.last_gamma = polyak_gamma(f, q)
        for ps, ds, c, _ in pending:
            steps = torch._foreach_mul(ds, c["lr"] * gamma)
            if c["decay"] != 1.0:
                torch._foreach_mul_(ps, c["decay"])
            torch._foreach_sub_(ps, steps)


register(OptimizerInfo(
    name="sania", cls=SANIA, family="second-order", paper="arXiv:2312.17369",
    description="SANIA: preconditioned Polyak step θ ← θ − ηγ·g/B, B = max(ε, Adam-SQR or AdaGrad-SQR "
                "accumulator), γ from the loss (closure required), global over all groups.",
    state_tensors=1, needs_closure=True, supports_cautious=False, test_hparams={"lr": 1.0},
))
