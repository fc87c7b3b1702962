"""The showdown: suites × optimizers × protocol → trials in the results database → leaderboard + HTML report.

Rulesets (docs/benchmark-protocol.md); with any of them, the name ``adamw-tuned`` in the optimizer list adds the
baseline: AdamW with the hyperparameters that the external-tuning protocol found per workload (``tuned.json``,
versioned, with the command that produced it, written by ``optfit bench tune``), rerun with the seeds.

- ``self`` (self-tuning): one run per seed with the same settings on every workload — the registry defaults,
  or ``SELF_SETTINGS`` where a default lr is not meant for training from scratch — and warmup + cosine, except
  for the optimizers in ``SELF_CONSTANT`` whose method replaces the schedule (Schedule-Free, DoG), which run
  without one. Gap and learning-rate-free optimizers are judged this way.
- ``external``: run the external-tuning protocol itself (5 trials × 3 studies per workload).
- ``fixed``: the given hyperparameters (``--hparams``) for every workload.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..registry import optimizer_info
from . import protocols
from .names import unknown
from .records import TrialResult, TrialSpec
from .workloads import SUITES, display_name, get_workload

PROTOCOLS = ("self", "external", "fixed")
BASELINE = "adamw-tuned"
SCHEDULE = {"kind": "warmup_cosine", "warmup": 0.02}
# the settings of the self-tuning ruleset where a registry default is not a training-from-scratch setting
SELF_SETTINGS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 0.05, "momentum": 0.9, "nesterov": True},
    "gap-sgd": {"lr": 0.05},
    "lion": {"lr": 3e-4, "weight_decay": 0.1},
    "clion": {"lr": 3e-4, "weight_decay": 0.1},
}
# learning-rate-free methods designed to run without a decay schedule: Schedule-Free replaces it by iterate
# interpolation/averaging (arXiv 2405.15682), DoG sets its own step from the distance travelled (arXiv
# 2302.12022), auto schedules itself over the run's planned length (the runner passes ``total_steps``), Universal MM
# steps to the minimiser of its bound. Prodigy and
# D-Adaptation keep the showdown's schedule, as their authors pair them with cosine decay.
SELF_CONSTANT = frozenset({"schedule-free-sgd", "schedule-free-adamw", "schedule-free-radam", "dog", "ldog", "auto",
                           "auto-anytime", "universal-mm"})
TUNED_PATH = Path(__file__).with_name("tuned.json")


def suite_workloads(suite: str) -> list[str]:
    if suite not in SUITES:
        raise ValueError(unknown("suite", suite, SUITES, flag="--suite"))
    return list(SUITES[suite])


def load_tuned(path: str | Path = TUNED_PATH) -> dict[str, Any]:
    """The tuned-AdamW settings per workload: ``{"version", "command", "workloads": {name: {"hparams", "schedule"}}}``."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError:
        return {"version": 0, "workloads": {}}
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or not isinstance(data.get("workloads"), dict):
        raise ValueError(f"{p}: expected an object with a 'workloads' mapping")
    return data


def tuned_specs(workloads: Sequence[str], seeds: Iterable[int], tuned: dict[str, Any] | None = None) -> list[TrialSpec]:
    tuned = tuned if tuned is not None else load_tuned()
    missing = [w for w in workloads if w not in tuned["workloads"]]
    if missing:
        raise ValueError(f"no tuned AdamW settings for {', '.join(missing)}; run `optfit bench tune --workloads "
                         f"{','.join(missing)}` (or use --protocol external)")
    specs = []
    for w in workloads:
        entry = tuned["workloads"][w]
        hp = dict(entry["hparams"])
        if "betas" in hp:
            hp["betas"] = tuple(hp["betas"])
        specs += [TrialSpec(workload=w, optimizer="adamw", hparams=hp, seed=s, protocol="self", label=BASELINE,
                            schedule=entry.get("schedule"))
                  for s in seeds]
    return specs


def build_specs(workloads: Sequence[str], optimizers: Sequence[str], protocol: str, seeds: int,
                hparams: dict[str, Any] | None = None) -> list[TrialSpec]:
    """Trials for one showdown. ``optimizers`` may include ``adamw-tuned`` (the baseline)."""
    if protocol not in PROTOCOLS:
        raise ValueError(unknown("protocol", protocol, PROTOCOLS, flag="--protocol"))
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    for name in optimizers:
        if name != BASELINE:
            optimizer_info(name)  # KeyError listing the valid names
    plain = [o for o in optimizers if o != BASELINE]
    seed_list = list(range(seeds))
    specs: list[TrialSpec] = []
    if BASELINE in optimizers:
        specs += tuned_specs(workloads, seed_list)
    if protocol == "external":
        for o in plain:
            specs += protocols.external_tuning(workloads, o)
        return specs
    if protocol == "fixed":
        return specs + protocols.fixed(workloads, plain, {o: dict(hparams or {}) for o in plain}, seed_list,
                                       schedule=SCHEDULE)
    own: list[TrialSpec] = []
    for o in plain:
        name = optimizer_info(o).name
        own += protocols.self_tuning(workloads, [o], seed_list, hparams_by_optimizer={o: SELF_SETTINGS.get(name, {})},
                                     schedule=None if name in SELF_CONSTANT else SCHEDULE)
    order = {w: i for i, w in enumerate(workloads)}
    return specs + sorted(own, key=lambda sp: order[sp.workload])  # workload-major, as one self_tuning call gives


def workloads_meta(names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Report metadata keyed by the name the trials use (a built-in name or a ``module:Class`` path); ``display``
    is the workload's own ``name``, which the report shows."""
    out = {}
    for n in dict.fromkeys(names):
        wl = get_workload(n)
        out[n] = {"name": n, "metric": wl.metric, "higher_is_better": wl.higher_is_better, "target": wl.target,
                  "max_steps": wl.max_steps, "display": display_name(n)}
    return out


def tuned_from_results(results: Iterable[TrialResult], command: str) -> dict[str, Any]:
    """Per workload, the external-tuning trial to keep: the best trial (fewest steps to target, then best final
    metric) of the study whose minimum is the median over studies — the AlgoPerf tuned-baseline time."""
    by_workload: dict[str, list[TrialResult]] = {}
    for r in results:
        if r.spec.protocol == "external" and r.status == "done":
            by_workload.setdefault(r.spec.workload, []).append(r)
    out: dict[str, Any] = {}
    for w, trials in sorted(by_workload.items()):
        wl = get_workload(w)
        sign = 1.0 if wl.higher_is_better else -1.0

        def rank(r: TrialResult) -> tuple:
            reached = r.steps_to_target is not None
            final = r.final_metrics.get(wl.metric, float("nan"))
            return (not reached, r.steps_to_target or 0, -sign * final)

        best_per_study = sorted((min(ts, key=rank) for ts in _by_study(trials).values()), key=rank)
        chosen = best_per_study[len(best_per_study) // 2]
        out[w] = {"hparams": chosen.spec.hparams, "schedule": chosen.spec.schedule, "command": command,
                  "steps_to_target": chosen.steps_to_target,
                  "final": chosen.final_metrics.get(wl.metric)}
    return {"version": 1, "command": command, "note": "AdamW tuned by the external-tuning protocol (5 trials x 3 "
            "studies, AlgoPerf-like space, warmup + cosine); per workload the median study's best trial.",
            "workloads": out}


def _by_study(trials: list[TrialResult]) -> dict[int, list[TrialResult]]:
    out: dict[int, list[TrialResult]] = {}
    for r in trials:
        out.setdefault(r.spec.study, []).append(r)
    return out
