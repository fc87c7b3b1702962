"""Scoring maths against hand-computed values (AlgoPerf profiles and scores, geometric means, IQM, learned-
optimizer speedups, bootstrap and sign-flip tests) and against independent oracles (numerical integration,
scipy's trimmed mean, numpy's percentile)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from optfit.bench import scoring

INF = math.inf

# hand-worked example: ratios w1: A 1, B 2, C 4; w2: A 1, B 1, C ∞; w3: A ∞, B 1, C 1.5
TIMES = {"A": {"w1": 10.0, "w2": 20.0, "w3": INF},
         "B": {"w1": 20.0, "w2": 20.0, "w3": 30.0},
         "C": {"w1": 40.0, "w2": None, "w3": 45.0}}


def test_performance_ratios_by_hand():
    r = scoring.performance_ratios(TIMES)
    assert r == {"A": {"w1": 1.0, "w2": 1.0, "w3": INF},
                 "B": {"w1": 2.0, "w2": 1.0, "w3": 1.0},
                 "C": {"w1": 4.0, "w2": INF, "w3": 1.5}}


def test_scores_by_hand_and_against_numerical_integration():
    r = scoring.performance_ratios(TIMES)
    scores = scoring.algoperf_scores(r)
    # B = mean_w max(0, 4 − r) / 3
    assert scores["A"] == pytest.approx((3 + 3 + 0) / 9)
    assert scores["B"] == pytest.approx((2 + 3 + 3) / 9)
    assert scores["C"] == pytest.approx((0 + 0 + 2.5) / 9)  # r = 4 exactly contributes nothing
    taus = np.linspace(1.0, 4.0, 300_001)
    prof = scoring.performance_profile(r, taus)
    for s in TIMES:
        assert np.trapezoid(prof[s], taus) / 3 == pytest.approx(scores[s], abs=1e-4)


def test_profile_values_by_hand():
    prof = scoring.performance_profile(scoring.performance_ratios(TIMES), [1.0, 1.5, 2.0, 3.99, 4.0])
    np.testing.assert_allclose(prof["A"], [2 / 3] * 5)
    np.testing.assert_allclose(prof["B"], [2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(prof["C"], [0, 1 / 3, 1 / 3, 1 / 3, 2 / 3])


def test_ties_single_optimizer_and_unsolved_workload():
    tied = scoring.performance_ratios({"a": {"w": 5.0}, "b": {"w": 5.0}})
    assert tied == {"a": {"w": 1.0}, "b": {"w": 1.0}}
    assert scoring.algoperf_scores(tied) == {"a": 1.0, "b": 1.0}
    single = scoring.performance_ratios({"only": {"w1": 3.0, "w2": INF}})
    assert scoring.algoperf_scores(single) == {"only": 0.5}
    nobody = scoring.performance_ratios({"a": {"w1": INF, "w2": 2.0}, "b": {"w1": INF, "w2": 4.0}})
    assert nobody["a"]["w1"] == INF and nobody["b"]["w1"] == INF
    assert scoring.algoperf_scores(nobody) == pytest.approx({"a": 0.5, "b": (0 + 2 / 3) / 2})
    assert scoring.algoperf_scores(single, r_max=2.0) == {"only": 0.5}


@pytest.mark.parametrize("bad, match", [
    ({}, "empty"), ({"a": {}}, "empty"), ({"a": {"w": 1.0}, "b": {"v": 1.0}}, "covers workloads"),
    ({"a": {"w": 0.0}}, "positive"), ({"a": {"w": -1.0}}, "positive"), ({"a": {"w": math.nan}}, "positive"),
])
def test_bad_times_are_rejected(bad, match):
    with pytest.raises(ValueError, match=match):
        scoring.performance_ratios(bad)


def test_bad_score_arguments():
    with pytest.raises(ValueError, match="r_max"):
        scoring.algoperf_scores({"a": {"w": 1.0}}, r_max=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        scoring.algoperf_scores({"a": {"w": 0.5}})


def test_geometric_mean():
    assert scoring.geometric_mean([1.0, 4.0, 16.0]) == pytest.approx(4.0)
    assert scoring.geometric_mean([7.0]) == pytest.approx(7.0)
    assert scoring.geometric_mean([1.0, INF]) == INF
    with pytest.raises(ValueError, match="empty"):
        scoring.geometric_mean([])
    with pytest.raises(ValueError, match="positive"):
        scoring.geometric_mean([1.0, 0.0])


def test_iqm_by_hand_and_against_scipy():
    assert scoring.iqm([1, 2, 3, 4, 100]) == pytest.approx(3.0)  # drops 1 and 100
    assert scoring.iqm(range(1, 9)) == pytest.approx(4.5)  # keeps 3..6
    assert scoring.iqm([1, 2, 6]) == pytest.approx(3.0)  # n < 4: plain mean
    assert scoring.iqm([1, 2, 3, INF]) == pytest.approx(2.5)  # the miss is trimmed away
    assert scoring.iqm([INF, INF, INF, 1]) == INF
    x = np.random.default_rng(0).lognormal(size=37)
    assert scoring.iqm(x) == pytest.approx(stats.trim_mean(x, 0.25))
    with pytest.raises(ValueError, match="empty"):
        scoring.iqm([])
    with pytest.raises(ValueError, match="NaN"):
        scoring.iqm([1.0, math.nan])


def test_median_iqr_handles_misses_and_matches_numpy():
    assert scoring.median_iqr([1.0, 2.0, INF]) == (2.0, 1.5, INF)
    assert scoring.median_iqr([3.0, INF]) == (INF, INF, INF)
    assert scoring.quantile([5.0, INF, INF], 0.0) == 5.0
    x = np.random.default_rng(1).normal(size=11)
    got = scoring.median_iqr(x)
    np.testing.assert_allclose(got, [np.median(x), np.percentile(x, 25), np.percentile(x, 75)])
    with pytest.raises(ValueError, match="q must"):
        scoring.quantile([1.0], 1.5)


def test_steps_to_reach_and_speedup():
    steps, loss = [0, 10, 20, 30], [1.0, 0.5, 0.25, 0.125]
    assert scoring.steps_to_reach(steps, loss, 0.3) == 20
    assert scoring.steps_to_reach(steps, [0.1, 0.5, 0.9, math.nan], 0.8, higher_is_better=True) == 20
    assert scoring.steps_to_reach(steps, [1, math.inf, math.nan, 1], 0.5) is None
    assert scoring.speedup_vs_baseline(steps, loss, 0.25, 10) == (2.0, False)  # baseline needs 20 steps, method 10
    assert scoring.speedup_vs_baseline(steps, loss, 0.1, 10) == (3.0, True)  # baseline never gets there: ≥ 30/10
    assert scoring.speedup_vs_baseline(steps, loss, INF, 10) == (0.0, False)  # diverged
    assert scoring.final_loss_ratio(0.25, 0.125) == 2.0
    assert scoring.final_loss_ratio(INF, 0.125) == INF
    with pytest.raises(ValueError, match="method_steps"):
        scoring.speedup_vs_baseline(steps, loss, 0.2, 0)
    with pytest.raises(ValueError, match="baseline_final"):
        scoring.final_loss_ratio(1.0, 0.0)


def test_bootstrap_interval():
    point, lo, hi = scoring.bootstrap_geomean_ratio({"w": [5.0, 5.0]}, {"w": [10.0, 10.0, 10.0]})
    assert (point, lo, hi) == pytest.approx((0.5, 0.5, 0.5))
    rng = np.random.default_rng(0)
    fast = {w: list(50 + rng.normal(size=5)) for w in "abc"}
    slow = {w: list(100 + rng.normal(size=5)) for w in "abc"}
    point, lo, hi = scoring.bootstrap_geomean_ratio(fast, slow)
    assert lo <= point <= hi < 0.6
    # noisy and equal in distribution: the interval straddles 1
    a = {w: list(rng.lognormal(0, 0.5, size=5)) for w in "abc"}
    b = {w: list(rng.lognormal(0, 0.5, size=5)) for w in "abc"}
    _, lo, hi = scoring.bootstrap_geomean_ratio(a, b)
    assert lo < 1 < hi
    with pytest.raises(ValueError, match="different workloads"):
        scoring.bootstrap_geomean_ratio({"a": [1.0]}, {"b": [1.0]})
    with pytest.raises(ValueError, match="finite"):
        scoring.bootstrap_geomean_ratio({"a": [INF]}, {"a": [1.0]})
    with pytest.raises(ValueError, match="empty"):
        scoring.bootstrap_geomean_ratio({}, {})


def test_sign_flip_test_by_hand():
    assert scoring.sign_flip_test([1.0, 1.0, 1.0]) == pytest.approx(2 / 8)  # only all-+ and all-− are as extreme
    assert scoring.sign_flip_test([1.0, -1.0]) == 1.0
    assert scoring.sign_flip_test([0.7]) == 1.0
    # |sum| ≥ 5.5 only for (+,+,+,±0.5) and their negatives: 4 of 16
    assert scoring.sign_flip_test([1.0, 2.0, 3.0, -0.5]) == pytest.approx(4 / 16)
    assert scoring.sign_flip_test([1.0] * 20) < 1e-3  # Monte Carlo branch
    with pytest.raises(ValueError, match="empty"):
        scoring.sign_flip_test([])
