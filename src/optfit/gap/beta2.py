"""gap-adamw-beta2: AdamW whose β₂ is chosen every step among ``beta2_candidates`` by greedy alignment under the
update-energy budget (method note §1: E‖θ̇‖² ≤ r², whose greedy optimum is the direction best aligned with g).

Per parameter: one first moment and K second moments (``state["exp_avg_sqs"]``, shape (K, *p.shape)):

    m ← β₁m + (1−β₁)g ;  v_j ← β_j v_j + (1−β_j)g²              (every candidate, every step)
    d_j = √(v_j/(1−β_jᵗ)) + ε ;  u_j = m/(1−β₁ᵗ) / d_j
    J_j = ⟨g, u_j⟩ / rms(u_j)    (alignment per unit update RMS; per tensor, summed over tensors in global mode)
    j* = choice(J) ;  θ ← θ(1 − ηλ) − η·u_{j*}

β₂ is not a linear filter of g, so the unit-ℓ2 filter budget of gap-adamw does not apply: the candidates differ
in the preconditioner 1/d_j, and the budget compares their directions at equal step RMS. What the score rewards
(tests/gap/test_beta2.py derives it): with many coordinates, J_j ≈ √N·E[g u_j]/√E[u_j²], maximal for the weights
w = 1/d ∝ E[g·m̂ | coordinate]/E[m̂² | coordinate] — a per-coordinate signal-to-noise weighting, not 1/√E[g²].
Hence: when the noise variance of coordinates drifts while their signal does not, the short memory that tracks
the drift wins (with ``score="next"``); under stationary heavy noise the long memory wins (its d is the least
noisy estimate); a drift of the *whole* scale (signal and noise together) favours the most uniform d, i.e. the
longest memory — under this budget Adam's per-coordinate normalisation is not itself rewarded.

Why a class of its own rather than a ``beta2_candidates`` option of gap-adamw: the two choices use different
budgets (ℓ2 filter norm vs update RMS), so a joint K₁×K₂ family would have no single comparable score, and a
separate class keeps one score per optimizer (and gap-adamw's file untouched).

``score="next"`` scores the previous directions u_{j,t−1} against the fresh gradient (an independent sample).
Options otherwise as in ``GapAdamW``; ``initial`` defaults to the candidate nearest 0.999 (AdamW's β₂).

Measured (benchmarks/gap_filters.py, 4 quick-suite workloads × 2 seeds): with ``score="next", score_ema=0.9`` the
run is within noise of the best fixed β₂ on 4/4 and beats the median fixed β₂ on 3/4, so those are the defaults;
the current score keeps 0.999 on most steps (its own-gradient term favours long memory) — within noise 4/4, above
the median 1/4.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..optim import _validation as V
from ..registry import OptimizerInfo, register
from .engine import GapOptimizer

__all__ = ["GapAdamWBeta2"]


class GapAdamWBeta2(GapOptimizer):
    """AdamW with per-step β₂ selection (see the module docstring); decoupled weight decay, default λ = 0.01."""

    default_decay_mode = "decoupled"
    candidates_key = "beta2_candidates"
    buffer_key = "exp_avg_sqs"

    def __init__(self, params: Any, lr: float = 1e-3, beta2_candidates: tuple[float, ...] = (0.95, 0.99, 0.999),
                 beta1: float = 0.9, eps: float = 1e-8, weight_decay: float = 0.01, mode: str = "global",
                 score: str = "next", score_ema: float = 0.9, hysteresis: int = 10,
                 initial: float | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, beta2_candidates=beta2_candidates, beta1=beta1, eps=eps,
                                      weight_decay=weight_decay, mode=mode, score=score, score_ema=score_ema,
                                      hysteresis=hysteresis, initial=initial), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.beta("beta1", group["beta1"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])

    def _initial_index(self, group: dict[str, Any]) -> int:
        cands = group["beta2_candidates"]
        target = 0.999 if group["initial"] is None else group["initial"]
        return min(range(len(cands)), key=lambda j: abs(cands[j] - target))

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg",)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        b1, cands = group["beta1"], group["beta2_candidates"]
        c = {"lr": group["lr"], "b1": b1, "eps": group["eps"], "t": step, "bc1": 1 - b1 ** step,
             "bc2_sqrt": [math.sqrt(1 - b ** step) for b in cands]}
        if group["score"] == "next" and step > 1:
            c["prev_bc2_sqrt"] = [math.sqrt(1 - b ** (step - 1)) for b in cands]
        return c

    @staticmethod
    def _denominators(v: Tensor, bc2_sqrt: list[float], eps: float) -> Tensor:
        """d_j = √v_j/√(1−β_jᵗ) + ε for all K at once, shape (K, *shape)."""
        scale = torch.tensor(bc2_sqrt, dtype=v.dtype, device=v.device).view(-1, *([1] * (v.ndim - 1)))
        return torch.sqrt(v).div_(scale).add_(eps)

    @staticmethod
    def _scores(m: Tensor, g: Tensor, d: Tensor) -> list[float]:
        """J_j = ⟨g, u_j⟩/rms(u_j), u_j = m/d_j (the common 1/(1−β₁ᵗ) cancels); 0 where u_j = 0."""
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        k, n = d.shape[0], g.numel()
        u = m.reshape(1, n).to(acc) / d.reshape(k, n).to(acc)
        dots = (u @ g.reshape(n).to(acc)).double()
        rms = (torch.linalg.vector_norm(u, dim=1).double() / math.sqrt(n)) if n else torch.zeros(k, dtype=torch.float64)
        return [float(x / r) if float(r) > 0 else 0.0 for x, r in zip(dots, rms)]

    def _first_pass(self, p, g, st, c, group, scratch) -> list[float]:
        m, v = st["exp_avg"], st["exp_avg_sqs"]
        k = v.shape[0]
        scores = [0.0] * k
        if group["score"] == "next" and c["t"] > 1:
            scores = self._scores(m, g, self._denominators(v, c["prev_bc2_sqrt"], c["eps"]))
        m.lerp_(g, 1 - c["b1"])
        b2 = torch.tensor(group["beta2_candidates"], dtype=torch.float64).view(k, *([1] * g.ndim))
        v.mul_(b2.to(v)).addcmul_((1 - b2).to(v), (g * g).unsqueeze(0))
        d = scratch["d"] = self._denominators(v, c["bc2_sqrt"], c["eps"])  # reused by the second pass
        if group["score"] == "current":
            scores = self._scores(m, g, d)
        return scores

    def _direction(self, p, g, st, c, j, group, scratch) -> Tensor:
        return st["exp_avg"] / scratch["d"][j] * (c["lr"] / c["bc1"])

    def _apply(self, p, g, st, c, j, group, scratch) -> None:
        p.addcdiv_(st["exp_avg"], scratch["d"][j], value=-c["lr"] / c["bc1"])


register(OptimizerInfo(
    name="gap-adamw-beta2", cls=GapAdamWBeta2, family="gap", paper="arXiv:2512.06370 (rule); optfit (β₂ family)",
    description="AdamW choosing β₂ every step among K candidates (default 0.95, 0.99, 0.999) by alignment with the "
                "gradient per unit update RMS; one first moment, K second moments.",
    state_tensors=4, has_momentum=False,  # β₁ is a plain "beta1", no betas/momentum key for cycle_momentum
    supports_foreach=False, test_hparams={"lr": 0.05},
))
