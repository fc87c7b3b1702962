"""Filter norms against brute-force impulse responses, and the AR(1) oracle's numbers from the method note."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.gap import adam_scale, ar1_next_score, ar1_optimal_beta, ar1_score, heavy_ball_norm, nesterov_norm

BETAS = [0.0, 0.1, 0.5, 0.9, 0.99]


def _impulse(update, beta, t):
    """Impulse response of a buffer recursion: feed e_k (a one-hot in time) and read the output at step t."""
    out = []
    for k in range(t):  # response at step t to a unit gradient k steps earlier
        state, y = 0.0, None
        for s in range(1, t + 1):
            g = 1.0 if s == t - k else 0.0
            state, y = update(state, g, s)
        out.append(y)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("t", [1, 2, 7, 40])
def test_norms_match_brute_force_impulse_responses(beta, t):
    hb = _impulse(lambda b, g, s: (beta * b + g,) * 2, beta, t)
    assert heavy_ball_norm(beta, t) == pytest.approx(float(hb.norm()), rel=1e-12)
    nest = _impulse(lambda b, g, s: (beta * b + g, g + beta * (beta * b + g)), beta, t)
    assert nesterov_norm(beta, t) == pytest.approx(float(nest.norm()), rel=1e-12)
    # Adam: m ← βm + (1−β)g, m̂ = m/(1−βᵗ); adam_scale = 1/((1−βᵗ)‖h‖) where h is the response of m̂
    adam = _impulse(lambda m, g, s: (beta * m + (1 - beta) * g, (beta * m + (1 - beta) * g) / (1 - beta ** s)), beta, t)
    assert adam_scale(beta, t) == pytest.approx(1 / ((1 - beta ** t) * float(adam.norm())), rel=1e-12)


@pytest.mark.parametrize("beta", BETAS[1:])
def test_stationary_limits(beta):
    assert heavy_ball_norm(beta, 10**6) == pytest.approx(1 / math.sqrt(1 - beta ** 2))
    # pitfall 1: the damped buffer's unit-norm factor is √((1+β)/(1−β)), not √(1−β²)
    assert adam_scale(beta, 10**6) == pytest.approx(math.sqrt((1 + beta) / (1 - beta)))


def test_first_step_all_filters_are_the_identity():
    assert {heavy_ball_norm(b, 1) for b in BETAS} == {1.0}
    assert all(adam_scale(b, 1) * (1 - b) == pytest.approx(1.0) for b in BETAS)  # m = (1−β)g, m̂ = g


@pytest.mark.parametrize("noise,expected", [(0.0, 0.90), (1.0, 0.85), (10.0, 0.10)])
def test_ar1_optimum_matches_the_method_note(noise, expected):
    grid = [i / 100 for i in range(100)]
    assert ar1_optimal_beta(0.9, noise, grid=grid) == pytest.approx(expected)


def test_ar1_score_is_the_filter_inner_product():
    # Σ_k h_k R(k) with h the unit-norm undamped filter, summed numerically
    rho, s2, c, beta = 0.8, 2.0, 1.5, 0.6
    k = torch.arange(2000, dtype=torch.float64)
    h = beta ** k * math.sqrt(1 - beta ** 2)
    r = c * rho ** k
    r[0] += s2
    assert ar1_score(beta, rho, s2, c) == pytest.approx(float((h * r).sum()), rel=1e-12)
    r_next = c * rho ** (k + 1)
    assert ar1_next_score(beta, rho, c) == pytest.approx(float((h * r_next).sum()), rel=1e-12)
    grid = [i / 100 for i in range(100)]
    assert max(grid, key=lambda b: ar1_next_score(b, rho, c)) == pytest.approx(rho)
