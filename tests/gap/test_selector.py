"""The choice rule: arg-max, ties, score EMA and the consecutive-step hysteresis."""

from __future__ import annotations

import pytest

from optfit.gap import selector


def _run(scores_per_step, initial=0, ema=0.0, hysteresis=0):
    st = selector.new_state(len(scores_per_step[0]), initial)
    return [selector.decide(st, s, ema, hysteresis) for s in scores_per_step], st


def test_argmax_without_hysteresis_and_ties_keep_current():
    picks, _ = _run([[1, 2, 3], [3, 2, 1], [2, 2, 2], [1, 5, 5]], initial=1)
    assert picks == [2, 0, 0, 1]  # a three-way tie keeps 0; a tie between 1 and 2 (current 0 loses) → first


def test_hysteresis_needs_the_same_challenger_for_n_consecutive_steps():
    lead2, lead1, lead0 = [0, 0, 1], [0, 1, 0], [1, 0, 0]
    picks, st = _run([lead2, lead2, lead1, lead2, lead2, lead2], hysteresis=3)
    assert picks == [0, 0, 0, 0, 0, 2]  # the run of 2 is broken by 1, then three in a row switch
    picks, _ = _run([lead2, lead2, lead0, lead2, lead2], hysteresis=3)
    assert picks == [0, 0, 0, 0, 0]  # the current candidate leading resets the count
    assert int(st["gap_counts"].sum()) == 6 and st["gap_counts"].tolist() == [5, 0, 1]


def test_score_ema_smooths_before_the_argmax():
    # one spike for candidate 1 does not beat a steady lead of candidate 0 under a = 0.9
    steps = [[1.0, 0.0]] * 20 + [[0.0, 5.0]] + [[1.0, 0.0]] * 3
    picks, st = _run(steps, ema=0.9)
    assert set(picks) == {0}
    assert st["gap_score"][0] > st["gap_score"][1]
    picks, _ = _run(steps, ema=0.0)
    assert picks[20] == 1


def test_scores_are_float64_and_counts_integer():
    _, st = _run([[1e-300, 2e-300]])
    assert st["gap_score"].dtype.is_floating_point and st["gap_score"].dtype.itemsize == 8
    assert int(st["gap_index"]) == 1
    with pytest.raises(ValueError, match="one per candidate"):
        selector.decide(st, [1.0], 0.0, 0)  # wrong number of scores
