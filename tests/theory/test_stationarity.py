"""The fluctuation–dissipation statistic and the streaming test that schedules ``auto`` in anytime mode: the
relation holds on a simulated noisy quadratic at a fixed step (the derivation in theory/stationarity.py), it is far
from holding during the descent, and the test's bookkeeping (block merging, recent half, checkpoint state) is exact."""

from __future__ import annotations

import math
import random

import pytest
import torch

from optfit.theory import StationarityTest, fdr_statistic


def _momentum_run(steps: int, beta: float, eta: float, sigma: float, seed: int = 0):
    """Adam-like EMA momentum with a fixed diagonal preconditioner P on ½Σh x² + noise: per step ⟨g, x − x₀⟩ and
    ⟨m, s⟩ (s = ηPm), float64."""
    gen = torch.Generator().manual_seed(seed)
    n = 400
    h = torch.linspace(0.2, 2.0, n, dtype=torch.float64)
    P = torch.linspace(0.5, 1.5, n, dtype=torch.float64)  # any fixed positive diagonal
    x = torch.full((n,), 4.0, dtype=torch.float64)
    x0, m = x.clone(), torch.zeros(n, dtype=torch.float64)
    out = []
    for _ in range(steps):
        g = h * x + sigma * torch.randn(n, generator=gen, dtype=torch.float64)
        m = beta * m + (1 - beta) * g
        s = eta * P * m
        out.append((float(g @ (x - x0)), float(m @ s)))
        x = x - s
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9])
def test_fdr_holds_at_stationarity_and_not_during_the_descent(beta):
    run = _momentum_run(8000, beta, eta=0.05, sigma=1.0)
    stat = [fdr_statistic(gd, ms, beta) for gd, ms in run]
    scale = [(1 + beta) / (2 * (1 - beta)) * ms for _, ms in run]
    late = slice(4000, 8000)
    rel = sum(stat[late]) / sum(scale[late])
    assert abs(rel) < 0.05, rel  # E[Δ] = 0 to a few % of either side
    early = slice(0, 40)
    assert sum(stat[early]) / sum(scale[early]) < -0.5  # descending: far below


def test_fdr_weight_is_the_derived_one():
    """Control: with the wrong momentum weight (1/2 instead of (1+β)/(2(1−β))) the relation fails at β = 0.9."""
    run = _momentum_run(8000, 0.9, eta=0.05, sigma=1.0)
    late = run[4000:]
    wrong = sum(gd - 0.5 * ms for gd, ms in late) / sum(0.5 * ms for _, ms in late)
    assert wrong > 1.0


def test_decides_stationary_only_when_the_mean_is_not_below_zero():
    rng = random.Random(0)
    test = StationarityTest(confidence=0.95, min_samples=32)
    for _ in range(400):
        test.add(-1.0 + rng.gauss(0, 1))  # clearly negative: progress
    assert not test.stationary()
    test.reset()
    for _ in range(400):
        test.add(rng.gauss(0, 1))
    assert test.stationary()
    test.reset()
    for _ in range(20):
        test.add(rng.gauss(0, 1))
    assert not test.stationary()  # too few samples
    for _ in range(20):
        test.add(rng.gauss(0, 1))
    assert test.stationary() and not test.stationary(at_least=100)


def test_recent_half_forgets_the_transient():
    test = StationarityTest(min_samples=8)
    for _ in range(300):
        test.add(-50.0)  # the transient after a change of step size
    for _ in range(500):
        test.add(1.0)
    s = test.summary()
    assert s["mean"] == pytest.approx(1.0) and s["n"] >= 400


@pytest.mark.parametrize("n", [1, 7, 128, 129, 1000, 4097])
def test_blocks_keep_every_sample(n):
    rng = random.Random(n)
    values = [rng.uniform(-1, 1) for _ in range(n)]
    test = StationarityTest(max_blocks=4)
    for v in values:
        test.add(v)
    assert test.n == n and len(test.sums) <= 8
    assert math.fsum(test.sums) == pytest.approx(math.fsum(values), abs=1e-9)
    full = [test.block] * len(test.sums)
    full[-1] = test.filled
    assert sum(full) == n


def test_state_round_trip_decides_identically():
    rng = random.Random(1)
    a = StationarityTest(min_samples=8, max_blocks=4)
    for _ in range(77):
        a.add(rng.gauss(-0.1, 1))
    b = StationarityTest(min_samples=8, max_blocks=4)
    b.load(a.state())
    for _ in range(200):
        v = rng.gauss(0, 1)
        a.add(v)
        b.add(v)
        assert a.stationary() == b.stationary() and a.summary() == b.summary()


@pytest.mark.parametrize("kwargs, name", [({"confidence": 1.0}, "confidence"), ({"confidence": 0.3}, "confidence"),
                                          ({"min_samples": 2}, "min_samples"), ({"max_blocks": 1}, "max_blocks"),
                                          ({"min_samples": True}, "min_samples")])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        StationarityTest(**kwargs)


def test_bad_samples_and_states_raise():
    test = StationarityTest()
    with pytest.raises(ValueError, match="non-finite"):
        test.add(float("nan"))
    with pytest.raises(ValueError, match="not a test state"):
        test.load({"sums": []})
    with pytest.raises(ValueError, match="inconsistent"):
        test.load({"sums": [1.0], "block": 2, "filled": 3, "n": 3})
