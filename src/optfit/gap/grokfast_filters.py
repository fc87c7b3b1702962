"""The causal filter of AdamW behind a Grokfast EMA pre-filter, its exact truncated norm and its AR(1) oracle.

Grokfast (Lee et al., arXiv 2405.20233) with optfit's initialisation (``optim/_features.py``):

    e_1 = g_1,  e_s = α e_{s−1} + (1−α) g_s ;   ĝ_s = g_s + λ e_s
    e's taps after t steps:  (1−α)α^k for k < t−1,  α^{t−1} at k = t−1  (the first gradient keeps weight α^{t−1})

Adam's bias-corrected first moment of ĝ, m ← βm + (1−β)ĝ, m̂ = m/(1−βᵗ), has taps a_k = (1−β)β^k/(1−βᵗ).
Their composite u_t = Σ_k h_k g_{t−k} (k < t) is, with S_k = Σ_{i≤k} β^i α^{k−i} (S_k = αS_{k−1} + β^k, S_{−1} = 0):

    h_k = (1−β)/(1−βᵗ)·[β^k + λ(1−α)S_k]   for k < t−1,      h_{t−1} = (1−β)/(1−βᵗ)·[β^{t−1} + λS_{t−1}]

(the special last tap is the EMA's initialisation seen through Adam's buffer). Write q_k = β^k + λ(1−α)S_k; then
‖h_t‖² = ((1−β)/(1−βᵗ))²·(Σ_{k<t−1} q_k² + (β^{t−1} + λS_{t−1})²). The running sum Σ q_k² is accumulated in
float64 by the recursion (no cancellation: every term is ≥ 0; a closed form in geometric sums cancels badly
when α ≈ β) and memoised per (α, λ, β) until it stops changing in float64.

In z-transform terms the stationary filter is H(z) = (1−β)/(1−βz) · (1 + λ(1−α)/(1−αz)), so under
R(k) = s²δ_k + cρ^k the expected loss-drop rate is Σ_k h_k R(k) = s²h_0 + c·H(ρ).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

__all__ = ["grokfast_adam_scale", "grokfast_adam_norm", "grokfast_adam_taps", "grokfast_ar1_score",
           "grokfast_ar1_next_score", "grokfast_ar1_optimum", "grokfast_stationary_norm"]


class _Prefix:
    """Σ_{k<n} q_k² and S_k for one (α, λ, β), extended on demand; frozen once both stop mattering in float64."""

    __slots__ = ("alpha", "lamb", "beta", "energy", "s", "beta_pow", "limit")

    def __init__(self, alpha: float, lamb: float, beta: float) -> None:
        self.alpha, self.lamb, self.beta = alpha, lamb, beta
        self.energy = array("d", [0.0])  # energy[n] = Σ_{k<n} q_k²
        self.s = array("d")               # s[k] = S_k
        self.beta_pow = 1.0               # β^len(s)
        self.limit: int | None = None     # index from which energy and the last tap are constant in float64

    def at(self, k: int) -> tuple[float, float, float]:
        """(Σ_{i<k} q_i², S_k, β^k)."""
        if self.limit is not None and k >= self.limit:
            return self.energy[-1], 0.0, 0.0
        a, lam, b = self.alpha, self.lamb, self.beta
        decay = 1.0 - max(a, b) ** 2
        while len(self.s) <= k and self.limit is None:
            n = len(self.s)
            s = (a * self.s[-1] if n else 0.0) + self.beta_pow
            q = self.beta_pow + lam * (1.0 - a) * s
            last = self.beta_pow + lam * s
            total = self.energy[-1]
            # the tail Σ_{i≥n} q_i² and the last tap are below float64 resolution of the sum: stop
            if n > 1 and s <= self.s[-1] and last * last <= 1e-18 * decay * total:
                self.limit = n
                break
            self.s.append(s)
            self.energy.append(total + q * q)
            self.beta_pow *= b
        if self.limit is not None and k >= self.limit:
            return self.energy[-1], 0.0, 0.0
        return self.energy[k], self.s[k], b ** k


_CACHE: dict[tuple[float, float, float], _Prefix] = {}


def _prefix(alpha: float, lamb: float, beta: float) -> _Prefix:
    key = (float(alpha), float(lamb), float(beta))
    run = _CACHE.get(key)
    if run is None:
        run = _CACHE[key] = _Prefix(*key)
    return run


def _energy(alpha: float, lamb: float, beta: float, t: int) -> float:
    """Σ_k q_k² over the t taps (with the special last one): ‖h_t‖²·((1−βᵗ)/(1−β))²."""
    if t < 1:
        raise ValueError(f"Invalid t: {t!r} (a filter has taps from step 1 on)")
    energy, s, bp = _prefix(alpha, lamb, beta).at(t - 1)
    last = bp + lamb * s
    return energy + last * last


def grokfast_adam_norm(alpha: float, lamb: float, beta: float, t: int) -> float:
    """‖h_t‖: ℓ2 norm of the composite filter (Adam's bias-corrected β ∘ Grokfast (α, λ)) after t steps."""
    return (1.0 - beta) / (1.0 - beta ** t) * math.sqrt(_energy(alpha, lamb, beta, t))


def grokfast_adam_scale(alpha: float, lamb: float, beta: float, t: int) -> float:
    """1/((1−βᵗ)‖h_t‖) = 1/((1−β)·√Σq²): turns ⟨g, m/d⟩ (raw buffer) into the unit-norm score ⟨g, m̂/d⟩/‖h_t‖.
    With λ = 0 it equals ``filters.adam_scale(β, t)``."""
    return 1.0 / ((1.0 - beta) * math.sqrt(_energy(alpha, lamb, beta, t)))


def grokfast_adam_taps(alpha: float, lamb: float, beta: float, t: int) -> list[float]:
    """The t taps h_0..h_{t−1} of the composite filter at step t (O(t); for tests and plots)."""
    c = (1.0 - beta) / (1.0 - beta ** t)
    out, s = [], 0.0
    for k in range(t):
        s = alpha * s + beta ** k
        weight = lamb if k == t - 1 else lamb * (1.0 - alpha)
        out.append(c * (beta ** k + weight * s))
    return out


def grokfast_stationary_norm(alpha: float, lamb: float, beta: float) -> float:
    """lim_{t→∞} ‖h_t‖ (the tail converges, so the memoised truncated norm reaches it)."""
    run = _prefix(alpha, lamb, beta)
    k = 1
    while run.limit is None:
        run.at(k)
        k *= 2
    return (1.0 - beta) * math.sqrt(run.energy[-1])


def _transfer(alpha: float, lamb: float, beta: float, rho: float) -> float:
    """H(ρ) = Σ_k h_k ρ^k of the stationary filter."""
    return (1.0 - beta) / (1.0 - beta * rho) * (1.0 + lamb * (1.0 - alpha) / (1.0 - alpha * rho))


def grokfast_ar1_score(alpha: float, lamb: float, beta: float, rho: float, noise: float, signal: float = 1.0) -> float:
    """Stationary unit-norm score (s²h_0 + c·H(ρ))/‖h‖ under R(k) = s²δ_k + cρ^k (s² = ``noise``, c = ``signal``)."""
    h0 = (1.0 - beta) * (1.0 + lamb * (1.0 - alpha))
    return (noise * h0 + signal * _transfer(alpha, lamb, beta, rho)) / grokfast_stationary_norm(alpha, lamb, beta)


def grokfast_ar1_next_score(alpha: float, lamb: float, beta: float, rho: float, signal: float = 1.0) -> float:
    """Stationary unit-norm score against the next gradient, Σ_k h_k R(k+1)/‖h‖ = cρH(ρ)/‖h‖: no noise term."""
    return signal * rho * _transfer(alpha, lamb, beta, rho) / grokfast_stationary_norm(alpha, lamb, beta)


def grokfast_ar1_optimum(candidates: Sequence[tuple[float, float]], beta: float, rho: float, noise: float,
                         signal: float = 1.0, score: str = "current") -> tuple[float, float]:
    """The (α, λ) of ``candidates`` with the largest stationary score (``score`` "current" or "next")."""
    if score == "next":
        return max(candidates, key=lambda c: grokfast_ar1_next_score(c[0], c[1], beta, rho, signal))
    return max(candidates, key=lambda c: grokfast_ar1_score(c[0], c[1], beta, rho, noise, signal))
