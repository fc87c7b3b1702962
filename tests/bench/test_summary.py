"""From trial records to report tables: units and studies, miss substitution, baselines, learned-optimizer
metrics and overhead, each against hand-computed values."""

from __future__ import annotations

import math

import pytest

from optfit.bench.records import CurvePoint, TrialResult, TrialSpec
from optfit.bench.summary import WorkloadMeta, normalize_meta, summarize

INF = math.inf
META = {"w": WorkloadMeta("w", metric="loss", target=0.1, max_steps=400, max_seconds=10.0)}


def tr(label, seed=0, steps_to=None, secs_to=None, *, workload="w", protocol="fixed", study=0, status="done",
       curve=(), steps=400, opt_s=0.0, optimizer="adamw"):
    spec = TrialSpec(workload=workload, optimizer=optimizer, hparams={}, seed=seed, protocol=protocol, label=label,
                     study=study)
    pts = [CurvePoint(step=s, wall_s=s / 100, cpu_s=s / 100, metrics={"loss": v}) for s, v in curve]
    if secs_to is None and steps_to is not None:
        secs_to = steps_to / 100
    return TrialResult(spec=spec, status=status, curve=pts, steps_to_target=steps_to, seconds_to_target=secs_to,
                       final_metrics=dict(pts[-1].metrics) if pts else {}, steps=steps, train_seconds=steps / 100,
                       optimizer_seconds=opt_s)


def test_external_protocol_median_over_studies_of_best_trial():
    res = [tr("base", 1, 100, protocol="external", study=0), tr("base", 2, 300, protocol="external", study=0),
           tr("base", 3, 200, protocol="external", study=1), tr("base", 4, None, protocol="external", study=1),
           tr("base", 5, None, protocol="external", study=2), tr("base", 6, None, protocol="external", study=2)]
    s = summarize(res, META, baseline="base")
    assert sorted(s.times["steps"].units["base"]["w"]) == [100, 200, INF]
    assert s.times["steps"].median("base", "w") == 200
    assert s.times["steps"].substituted("base", "w") == [100, 200, 401]  # a miss counts as budget + 1
    assert s.times["seconds"].substituted("base", "w") == [1.0, 2.0, 11.0]
    assert s.times["steps"].reached("base", "w") == (2, 3)
    assert [r.spec.seed for r in s.reps("base", "w")] == [1, 3, 5]


def test_ratios_geomeans_scores_and_claims():
    meta = {"a": WorkloadMeta("a", target=0.1, max_steps=400), "b": WorkloadMeta("b", target=0.1, max_steps=400)}
    res = []
    for seed in range(3):
        res += [tr("base", seed, 200, workload="a"), tr("base", seed, 100, workload="b"),
                tr("fast", seed, 100 + seed, workload="a"), tr("fast", seed, 50 + seed, workload="b"),
                tr("miss", seed, None, workload="a"), tr("miss", seed, 100, workload="b")]
    s = summarize(res, meta, baseline="base")
    assert s.labels == ["base", "fast", "miss"]  # baseline first
    assert s.ratios["steps"]["base"] == {"a": pytest.approx(200 / 101), "b": pytest.approx(100 / 51)}
    assert s.ratios["steps"]["miss"]["a"] == INF
    assert s.scores["steps"]["fast"] == 1.0
    assert s.scores["steps"]["miss"] == pytest.approx((0 + (4 - 100 / 51)) / 2 / 3)
    assert s.geomean["steps"]["base"] == pytest.approx(math.sqrt(200 * 100))
    assert s.geomean["steps"]["miss"] == pytest.approx(math.sqrt(401 * 100))
    assert s.geomean_ratio["steps"]["fast"] == pytest.approx(math.sqrt(101 * 51) / math.sqrt(200 * 100))
    assert s.claims["steps"]["fast"].verdict == "faster"
    assert s.claims["steps"]["miss"].verdict == "slower"
    assert s.claims["steps"]["fast"].p_value == pytest.approx(0.5)  # 2 workloads, both faster: 2 of 4 sign sets


def test_one_seed_is_too_few_for_a_claim_and_missing_baseline_is_tolerated():
    res = [tr("base", 0, 200), tr("x", 0, 100)]
    assert summarize(res, META, baseline="base").claims["steps"]["x"].verdict == "too few seeds"
    s = summarize(res, META, baseline="nope")
    assert s.baseline is None and s.requested_baseline == "nope"
    assert s.geomean_ratio == {} and s.claims == {} and s.learned == {}
    assert s.scores["steps"] == {"base": pytest.approx(2 / 3), "x": 1.0}


def test_label_defaults_to_optimizer_and_not_run_counts_as_miss():
    meta = {"a": WorkloadMeta("a", target=1.0, max_steps=10), "b": WorkloadMeta("b", target=1.0, max_steps=10)}
    res = [tr("", 0, 5, workload="a", optimizer="sgd"), tr("", 0, 5, workload="b", optimizer="sgd"),
           tr("lion", 0, 5, workload="a")]
    s = summarize(res, meta, baseline="sgd")
    assert s.labels == ["sgd", "lion"]
    assert s.times["steps"].units["lion"]["b"] == []
    assert s.ratios["steps"]["lion"]["b"] == INF
    assert s.geomean["steps"]["lion"] == pytest.approx(math.sqrt(5 * 11))


def test_workload_without_target_is_left_out_of_time_tables():
    meta = {"w": WorkloadMeta("w", target=None)}
    s = summarize([tr("a", 0, None)], meta)
    assert s.target_workloads == [] and s.scores == {} and s.workloads == ["w"]


def test_learned_metrics_and_overhead():
    base_curve = [(0, 1.0), (100, 0.5), (200, 0.25), (300, 0.125), (400, 0.0625)]
    res = [tr("base", sd, curve=base_curve, opt_s=0.4) for sd in range(3)]
    res += [tr("m", 0, curve=[(0, 1.0), (100, 0.25)], steps=100, opt_s=0.3),  # reaches 0.25 in 100: speedup 2
            tr("m", 1, curve=[(0, 1.0), (100, 0.25)], steps=100, opt_s=0.3),
            tr("m", 2, curve=[(0, 1.0), (50, INF)], steps=50, status="diverged", opt_s=0.1)]
    res += [tr("super", 0, curve=[(0, 1.0), (100, 0.01)], steps=100)]  # better than the baseline ever gets
    s = summarize(res, {"w": WorkloadMeta("w", target=None)}, baseline="base")
    m = s.learned["m"]["w"]
    assert m.speedup == pytest.approx(2.0) and not m.lower_bound  # median of (2, 2, 0)
    assert m.final_ratio == pytest.approx(0.25 / 0.0625)  # median of (4, 4, ∞)
    sup = s.learned["super"]["w"]
    assert sup.lower_bound and sup.speedup == pytest.approx(4.0) and sup.final_ratio == pytest.approx(0.16)
    assert s.learned_iqm["m"] == (pytest.approx(2.0), pytest.approx(4.0))
    assert s.overhead_ms["base"]["w"] == pytest.approx(1.0)  # 0.4 s over 400 steps
    assert s.overhead_ms["m"]["w"] == pytest.approx(3.0)  # median of 3, 3 and 2 ms
    assert [r.status for r in s.problems] == ["diverged"]


def test_meta_from_dicts_and_workload_like_objects():
    class Fake:
        name, metric, higher_is_better, target, max_steps = "f", "acc", True, 0.9, 50

    got = normalize_meta([Fake(), {"name": "d", "target": 1}])
    assert got["f"] == WorkloadMeta("f", metric="acc", higher_is_better=True, target=0.9, max_steps=50)
    assert got["f"].loss == "loss" and got["d"].loss == "loss" and got["d"].target == 1.0
    assert normalize_meta({"d": {"target": None}})["d"].target is None
    with pytest.raises(ValueError, match="max_steps"):
        normalize_meta({"d": {"max_steps": 0}})
    with pytest.raises(ValueError, match="differs"):
        normalize_meta({"d": {"name": "e"}})
    with pytest.raises(TypeError, match="workloads_meta"):
        normalize_meta(3)
    with pytest.raises(ValueError, match="empty"):
        normalize_meta([])


def test_input_errors_are_clear():
    with pytest.raises(ValueError, match="results is empty"):
        summarize([], META)
    with pytest.raises(ValueError, match=r"lacks the workload\(s\) \['other'\]"):
        summarize([tr("a", workload="other")], META)
    with pytest.raises(TypeError, match="TrialResult"):
        summarize([{"status": "done"}], META)
