"""Norms of the causal filters that momentum buffers apply, and the AR(1) oracle of the method note.

A momentum buffer is a causal filter of the gradient stream, u_t = Σ_k h_k g_{t−k}. Its expected
loss-drop rate under gradient autocorrelation R(k) is Σ_k h_k R(k); comparing filters fairly needs a
budget, here unit ℓ2 norm of h (the "Frobenius-scaled" score). After t steps only h_0..h_{t−1} exist,
so the norms below are of the *truncated* filters; they tend to the stationary values as t → ∞.

- heavy ball, b ← βb + g:                 h_k = β^k,                 ‖h‖² = (1−β^{2t})/(1−β²)
- Nesterov on that buffer, d = g + βb:    h_0 = 1+β, h_k = β^{k+1},  ‖h‖² = (1+β)² + β⁴(1−β^{2(t−1)})/(1−β²)
- Adam's damped, bias-corrected buffer,   h_k = (1−β)β^k/(1−β^t),    ‖h‖ = (1−β)/(1−β^t)·√((1−β^{2t})/(1−β²))
  m̂ = m/(1−β^t), m ← βm + (1−β)g

Pitfall 1 of the method note in one line: the unit-norm factor of the damped stationary filter is
√((1+β)/(1−β)), not the √(1−β²) of the undamped one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _geometric_energy(beta: float, terms: int) -> float:
    """Σ_{k<terms} β^{2k} (exact at β = 0 and for large ``terms``)."""
    if terms <= 0:
        return 0.0
    b2 = beta * beta
    if b2 == 0.0:
        return 1.0
    return -math.expm1(terms * math.log(b2)) / (1.0 - b2)


def heavy_ball_norm(beta: float, t: int) -> float:
    """‖h‖ of the undamped filter β^k truncated to t taps."""
    return math.sqrt(_geometric_energy(beta, t))


def nesterov_norm(beta: float, t: int) -> float:
    """‖h‖ of d = g + β·b with b the undamped heavy-ball buffer, truncated to t taps."""
    return math.sqrt((1.0 + beta) ** 2 + beta ** 4 * _geometric_energy(beta, t - 1))


def adam_scale(beta: float, t: int) -> float:
    """1 / ((1−β^t)·‖h‖) for Adam's bias-corrected buffer: the factor that turns ⟨g, m/d⟩ (raw buffer, no
    bias correction) into the unit-norm score ⟨g, m̂/d⟩/‖h‖; equals √((1−β²)/(1−β^{2t}))/(1−β)."""
    return 1.0 / ((1.0 - beta) * math.sqrt(_geometric_energy(beta, t)))


def ar1_score(beta: float, rho: float, noise: float, signal: float = 1.0) -> float:
    """Stationary unit-norm score J(β) = √(1−β²)·(s² + c/(1−βρ)) of a one-pole filter under
    R(k) = s²δ_k + c·ρ^k, with s² = ``noise`` and c = ``signal`` (the method note's oracle)."""
    return math.sqrt(1.0 - beta * beta) * (noise + signal / (1.0 - beta * rho))


def ar1_next_score(beta: float, rho: float, signal: float = 1.0) -> float:
    """Stationary unit-norm score of the filter against the *next* gradient, Σ_k h_k R(k+1) = √(1−β²)·cρ/(1−βρ):
    the white-noise term drops out, so the optimum is β = ρ whatever the noise."""
    return math.sqrt(1.0 - beta * beta) * signal * rho / (1.0 - beta * rho)


def ar1_optimal_beta(rho: float, noise: float, signal: float = 1.0, grid: Sequence[float] | None = None) -> float:
    """arg max_β J(β) over ``grid`` (default: 0, 0.001, …, 0.999)."""
    grid = grid if grid is not None else [i / 1000 for i in range(1000)]
    return max(grid, key=lambda b: ar1_score(b, rho, noise, signal))


def nearest(values: Sequence[float], x: float) -> float:
    """The member of ``values`` closest to ``x`` (first on ties)."""
    return min(values, key=lambda v: abs(v - x))
