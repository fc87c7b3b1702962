"""The composite filter of AdamW behind a Grokfast EMA: taps, exact truncated norms and the AR(1) oracle, against
brute-force impulse responses and numerical sums."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.gap import adam_scale
from optfit.gap.grokfast_filters import (grokfast_adam_norm, grokfast_adam_scale, grokfast_adam_taps,
                                         grokfast_ar1_next_score, grokfast_ar1_optimum, grokfast_ar1_score,
                                         grokfast_stationary_norm)

FILTERS = [(0.98, 2.0), (0.9, 2.0), (0.5, 0.7), (0.0, 1.0), (0.9, 0.0), (0.9, 5.0)]
BETAS = [0.0, 0.5, 0.9, 0.99]


def _impulse(alpha, lamb, beta, t):
    """Response at step t of the real recursions (EMA initialised to g₁, ĝ = g + λe, m, m̂) to a unit gradient
    k steps earlier, k = 0..t−1."""
    out = []
    for k in range(t):
        e = m = 0.0
        for s in range(1, t + 1):
            g = 1.0 if s == t - k else 0.0
            e = g if s == 1 else alpha * e + (1 - alpha) * g
            m = beta * m + (1 - beta) * (g + lamb * e)
        out.append(m / (1 - beta ** t))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("alpha,lamb", FILTERS)
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("t", [1, 2, 3, 17, 60])
def test_taps_and_norm_match_brute_force(alpha, lamb, beta, t):
    h = _impulse(alpha, lamb, beta, t)
    torch.testing.assert_close(torch.tensor(grokfast_adam_taps(alpha, lamb, beta, t), dtype=torch.float64), h,
                               rtol=1e-12, atol=1e-15)
    assert grokfast_adam_norm(alpha, lamb, beta, t) == pytest.approx(float(h.norm()), rel=1e-12)
    want = 1 / ((1 - beta ** t) * float(h.norm()))
    assert grokfast_adam_scale(alpha, lamb, beta, t) == pytest.approx(want, rel=1e-12)


def test_the_first_tap_of_the_initialised_ema_is_special():
    """At t = 2 the first gradient is seen with EMA weight α (not (1−α)α): taps differ from the stationary shape."""
    alpha, lamb, beta = 0.9, 2.0, 0.5
    h = grokfast_adam_taps(alpha, lamb, beta, 2)
    c = (1 - beta) / (1 - beta ** 2)
    assert h[0] == pytest.approx(c * (1 + lamb * (1 - alpha)))
    assert h[1] == pytest.approx(c * (beta + lamb * (alpha + beta)))  # S_1 = α + β, weight λ (not λ(1−α))
    assert grokfast_adam_taps(alpha, lamb, beta, 1) == [pytest.approx(1 + lamb)]  # ĝ₁ = (1+λ)g₁, m̂₁ = ĝ₁


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("t", [1, 5, 300])
def test_lambda_zero_is_adams_own_filter(beta, t):
    assert grokfast_adam_scale(0.98, 0.0, beta, t) == pytest.approx(adam_scale(beta, t), rel=1e-12)


@pytest.mark.parametrize("alpha,lamb,beta", [(0.98, 2.0, 0.9), (0.9, 2.0, 0.9), (0.9, 2.0, 0.8999), (0.5, 3.0, 0.99)])
def test_long_runs_are_exact_and_reach_the_stationary_norm(alpha, lamb, beta):
    """α ≈ β (where a geometric closed form cancels) and a run past the memoised limit stay exact."""
    t = 3000
    h = torch.tensor(grokfast_adam_taps(alpha, lamb, beta, t), dtype=torch.float64)
    assert grokfast_adam_norm(alpha, lamb, beta, t) == pytest.approx(float(h.norm()), rel=1e-11)
    assert grokfast_stationary_norm(alpha, lamb, beta) == pytest.approx(float(h.norm()), rel=1e-11)
    assert grokfast_adam_norm(alpha, lamb, beta, 10**6) == pytest.approx(float(h.norm()), rel=1e-11)
    # out-of-order queries after the memo grew give the same values
    assert grokfast_adam_norm(alpha, lamb, beta, 40) == pytest.approx(float(_impulse(alpha, lamb, beta, 40).norm()),
                                                                     rel=1e-12)


@pytest.mark.parametrize("alpha,lamb,beta", [(0.98, 2.0, 0.9), (0.9, 2.0, 0.5), (0.9, 0.0, 0.9)])
def test_ar1_scores_are_the_filter_inner_products(alpha, lamb, beta):
    rho, s2, c = 0.95, 3.0, 1.5
    t = 4000
    h = torch.tensor(grokfast_adam_taps(alpha, lamb, beta, t), dtype=torch.float64)[:-1]  # drop the start-up tap
    k = torch.arange(len(h), dtype=torch.float64)
    r = c * rho ** k
    r[0] += s2
    assert grokfast_ar1_score(alpha, lamb, beta, rho, s2, c) == pytest.approx(float((h * r).sum() / h.norm()), rel=1e-9)
    r_next = c * rho ** (k + 1)
    assert grokfast_ar1_next_score(alpha, lamb, beta, rho, c) == pytest.approx(float((h * r_next).sum() / h.norm()),
                                                                              rel=1e-9)


def test_oracle_prefers_no_filter_for_fast_signals_and_the_slow_filter_for_slow_ones():
    cands = ((0.98, 0.0), (0.98, 2.0), (0.9, 2.0))
    assert grokfast_ar1_optimum(cands, 0.9, rho=0.5, noise=1.0) == (0.98, 0.0)
    assert grokfast_ar1_optimum(cands, 0.9, rho=0.999, noise=10.0) == (0.98, 2.0)
    assert grokfast_ar1_optimum(cands, 0.9, rho=0.945, noise=0.0) == (0.9, 2.0)
    assert grokfast_ar1_optimum(cands, 0.9, rho=0.945, noise=10.0) == (0.98, 0.0)  # white noise: no amplification
    assert grokfast_ar1_optimum(cands, 0.9, rho=0.945, noise=10.0, score="next") == (0.9, 2.0)  # noise drops out
    assert math.isfinite(grokfast_ar1_score(0.0, 1.0, 0.0, 0.5, 1.0))
