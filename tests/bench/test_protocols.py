"""Protocol spec builders and the external-tuning aggregation (hand-made results)."""

from __future__ import annotations

import math
import random

import pytest

from optfit.bench import protocols
from optfit.bench.protocols import external_tuning, external_tuning_times, fixed, sample, self_tuning, sweep_vs_gap
from optfit.bench.records import TrialResult, TrialSpec


def test_fixed_is_the_full_product():
    specs = fixed(["a", "b"], ["sgd", "adamw"], {"sgd": {"lr": 0.1, "momentum": 0.9}}, seeds=3)
    assert len(specs) == 2 * 2 * 3 and len({s.key() for s in specs}) == 12
    assert {(s.workload, s.optimizer, s.seed) for s in specs} == {(w, o, k) for w in "ab" for o in ("sgd", "adamw")
                                                                  for k in range(3)}
    assert all(s.hparams == ({"lr": 0.1, "momentum": 0.9} if s.optimizer == "sgd" else {}) for s in specs)
    assert all(s.protocol == "fixed" and s.label == s.optimizer and s.schedule is None for s in specs)
    assert [s.seed for s in fixed("a", "sgd", seeds=[7, 9])] == [7, 9]
    with pytest.raises(ValueError, match="lion"):
        fixed("a", ["sgd"], {"lion": {}})
    with pytest.raises(ValueError, match="seeds"):
        fixed("a", "sgd", seeds=0)
    with pytest.raises(ValueError, match="workloads"):
        fixed([], "sgd")


def test_self_tuning_uses_one_setting_everywhere():
    specs = self_tuning(["a", "b", "c"], ["gap-adamw"], seeds=2, hparams_by_optimizer={"gap-adamw": {"lr": 1e-3}},
                        schedule={"kind": "warmup_cosine", "warmup": 0.02})
    assert len(specs) == 6 and all(s.protocol == "self" for s in specs)
    assert len({(repr(s.hparams), repr(s.schedule)) for s in specs}) == 1


def test_external_tuning_specs():
    specs = external_tuning(["a", "b"], "adamw", trials=5, studies=3, seed=0)
    assert len(specs) == 2 * 3 * 5 and len({s.key() for s in specs}) == 30
    grid = {(i, j) for i in range(3) for j in range(5)}
    assert {(s.study, s.trial_index) for s in specs if s.workload == "a"} == grid
    assert len({s.seed for s in specs if s.workload == "a"}) == 15
    for s in specs:
        assert s.protocol == "external" and s.label == "adamw-tuned" and s.optimizer == "adamw"
        assert set(s.hparams) == {"lr", "betas", "weight_decay"}
        assert 2e-4 <= s.hparams["lr"] <= 2e-2 and 1e-4 <= s.hparams["weight_decay"] <= 0.5
        b1, b2 = s.hparams["betas"]
        assert 0.7 <= b1 <= 0.99 and 0.9 <= b2 <= 0.999
        assert s.schedule["kind"] == "warmup_cosine" and 0.01 <= s.schedule["warmup"] <= 0.1
    # draws depend on (seed, workload, study) only: adding a workload or a study changes nothing that exists
    more = external_tuning(["b", "a", "c"], "adamw", trials=5, studies=4, seed=0)
    assert {s.key() for s in specs} <= {s.key() for s in more}
    assert {s.key() for s in external_tuning("a", seed=1)}.isdisjoint({s.key() for s in specs})
    with pytest.raises(ValueError, match="no default search space for 'sgd'"):
        external_tuning("a", "sgd")
    with pytest.raises(ValueError, match="trials"):
        external_tuning("a", trials=0)


def test_sampled_distributions():
    rng = random.Random(0)
    space = {"lr": ("log", 1e-4, 1e-2), "beta1": ("one_minus_log", 0.9, 0.999), "beta2": 0.95,
             "wd": ("uniform", 0.0, 2.0), "nesterov": ("choice", [True, False])}
    draws = [sample(space, rng)[0] for _ in range(4000)]
    # log-uniform: half the mass below the geometric midpoint 1e-3; 1 − β log-uniform: below 1e-2 likewise
    assert abs(sum(d["lr"] < 1e-3 for d in draws) / 4000 - 0.5) < 0.03
    assert abs(sum(1 - d["betas"][0] < 1e-2 for d in draws) / 4000 - 0.5) < 0.03
    assert abs(sum(d["wd"] < 0.5 for d in draws) / 4000 - 0.25) < 0.03
    assert all(d["betas"][1] == 0.95 for d in draws) and {d["nesterov"] for d in draws} == {True, False}
    _, warmup = sample({"warmup": ("uniform", 0.02, 0.02)}, rng)
    assert warmup == pytest.approx(0.02)


@pytest.mark.parametrize("space, match", [
    ({"lr": ("gauss", 0, 1)}, "'lr': unknown distribution"),
    ({"lr": ("log", 1e-2, 1e-4)}, "low"),
    ({"lr": ("log", 0.0, 1e-2)}, "low > 0"),
    ({"beta1": ("one_minus_log", 0.9, 1.0), "beta2": 0.9}, "one_minus_log"),
    ({"beta1": 0.9}, "beta2"),
    ({"m": ("choice", [])}, "choice"),
])
def test_bad_search_spaces_name_the_parameter(space, match):
    with pytest.raises(ValueError, match=match):
        sample(space, random.Random(0))


def test_sweep_vs_gap_adamw():
    specs = sweep_vs_gap(["a", "b"], betas=(0.5, 0.9, 0.99), lr=3e-3, seeds=2,
                         schedule={"kind": "warmup_cosine", "warmup": 0.05}, hparams={"weight_decay": 0.01})
    assert len(specs) == 2 * 4 * 2 and all(s.protocol == "sweep" for s in specs)
    base = [s for s in specs if s.optimizer == "adamw" and s.workload == "a" and s.seed == 0]
    assert [s.hparams["betas"] for s in base] == [(0.5, 0.999), (0.9, 0.999), (0.99, 0.999)]
    assert [s.label for s in base] == ["adamw(b1=0.5)", "adamw(b1=0.9)", "adamw(b1=0.99)"]
    (gap,) = [s for s in specs if s.optimizer == "gap-adamw" and s.workload == "a" and s.seed == 0]
    assert gap.hparams == {"lr": 3e-3, "weight_decay": 0.01, "beta1_candidates": (0.5, 0.9, 0.99)}
    assert all(s.hparams["lr"] == 3e-3 and s.schedule == {"kind": "warmup_cosine", "warmup": 0.05} for s in specs)


def test_sweep_vs_gap_sgd_uses_momentum():
    specs = sweep_vs_gap("a", base="sgd", gap="gap-sgd", betas=(0.0, 0.9), lr=0.1)
    assert [s.hparams for s in specs] == [{"lr": 0.1, "momentum": 0.0}, {"lr": 0.1, "momentum": 0.9},
                                          {"lr": 0.1, "momentum_candidates": (0.0, 0.9)}]
    with pytest.raises(ValueError, match="betas"):
        sweep_vs_gap("a", betas=(0.5, 1.0))


# -- aggregation over hand-made results ------------------------------------------------------------------------

def result(workload, study, trial, seconds, steps=None, status="done", label="adamw-tuned", protocol="external"):
    spec = TrialSpec(workload, "adamw", {"lr": 1e-3 * (trial + 1)}, seed=trial, protocol=protocol, label=label,
                     study=study, trial_index=trial)
    return TrialResult(spec=spec, status=status, steps_to_target=steps if steps is not None else (
        None if seconds is None else int(seconds * 100)), seconds_to_target=seconds)


def test_external_tuning_times_median_of_study_minima():
    results = [
        result("a", 0, 0, 5.0), result("a", 0, 1, 3.0), result("a", 0, 2, None),
        result("a", 1, 0, None, status="failed"), result("a", 1, 1, 8.0), result("a", 1, 2, None, status="diverged"),
        result("a", 2, 0, None), result("a", 2, 1, None),
        result("b", 0, 0, 2.0), result("b", 1, 0, None), result("b", 2, 0, None),        # 2 of 3 studies miss
        result("c", 0, 0, 4.0), result("c", 1, 0, 6.0),                                   # even: mean of middle
        result("d", 0, 0, 1.0, status="diverged"),  # reached the target, then diverged: still counts
        result("a", 0, 0, 0.1, protocol="fixed", label="adamw"),                          # not external: ignored
    ]
    times = external_tuning_times(results)
    assert set(times) == {("a", "adamw-tuned"), ("b", "adamw-tuned"), ("c", "adamw-tuned"), ("d", "adamw-tuned")}
    a = times[("a", "adamw-tuned")]
    assert a.per_study == [3.0, 8.0, math.inf] and a.time == 8.0
    assert [r.spec.trial_index if r else None for r in a.best] == [1, 1, None]
    assert times[("b", "adamw-tuned")].time == math.inf
    assert times[("c", "adamw-tuned")].time == 5.0
    assert times[("d", "adamw-tuned")].time == 1.0
    steps = external_tuning_times(results, measure="steps")
    assert steps[("a", "adamw-tuned")].per_study == [300, 800, math.inf]


def test_external_tuning_times_breaks_ties_by_trial_index_and_checks_measure():
    times = external_tuning_times([result("a", 0, 1, 2.0), result("a", 0, 0, 2.0)])
    assert times[("a", "adamw-tuned")].best[0].spec.trial_index == 0
    assert external_tuning_times([]) == {}
    with pytest.raises(ValueError, match="measure"):
        external_tuning_times([], measure="epochs")


def test_default_space_is_documented():
    assert set(protocols.ADAMW_SPACE) == {"lr", "beta1", "beta2", "weight_decay", "warmup"}


def test_showdown_runs_schedule_free_methods_without_the_decay_schedule():
    """Self-tuning: Schedule-Free and DoG replace the schedule, so they run at a constant multiplier; every other
    optimizer (Prodigy and D-Adaptation included) gets the showdown's warmup + cosine. Order stays workload-major."""
    from optfit.bench.showdown import SCHEDULE, SELF_CONSTANT, build_specs

    names = ["adamw", "schedule-free-adamw", "prodigy", "dog"]
    specs = build_specs(["w10-digits", "w9-noisy-quadratic"], names, "self", 2)
    assert [s.workload for s in specs] == ["w10-digits"] * 8 + ["w9-noisy-quadratic"] * 8
    for s in specs:
        assert s.schedule == (None if s.optimizer in SELF_CONSTANT else SCHEDULE), s.optimizer
    assert {s.optimizer for s in specs if s.schedule is None} == {"schedule-free-adamw", "dog"}
