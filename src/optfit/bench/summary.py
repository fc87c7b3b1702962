"""From trial records to the tables of the showdown report (time to target, scores, learned-optimizer metrics,
overhead, claims). Pure: it reads ``TrialResult`` objects and per-workload metadata, never a database.

Aggregation rules:

- an entry's *label* is ``spec.label`` or, if empty, ``spec.optimizer``;
- a *unit* is one seed, except under the external-tuning protocol where it is one study and its value is the
  best trial of that study (AlgoPerf: per-workload time = median over studies of the best trial);
- time to target per (label, workload) = median over units, a miss being ∞ (so a majority of misses is a
  miss); for geometric means and bootstrap intervals a missed unit counts as ``budget + 1`` (steps: the
  workload's ``max_steps``; seconds: ``max_seconds`` if given, else the longest training time observed on it);
- a workload without a target is left out of the time-to-target tables, profiles and scores;
- curves, learned-optimizer metrics and overhead use each unit's representative trial (its best trial).
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import scoring
from .records import TrialResult

INF = math.inf
KINDS = ("steps", "seconds")


@dataclass(frozen=True)
class WorkloadMeta:
    """What the report needs to know about a workload. ``target=None``: no time-to-target for it.
    ``loss_key``: the lower-is-better curve metric for learned-optimizer metrics (default: ``metric`` if lower is
    better, else ``"loss"``). ``display``: what tables show (default ``name``; a ``module:Class`` workload shows
    its own ``name`` attribute)."""

    name: str
    metric: str = "loss"
    higher_is_better: bool = False
    target: float | None = None
    max_steps: int = 1000
    max_seconds: float | None = None
    loss_key: str | None = None
    display: str = ""

    @property
    def loss(self) -> str:
        return self.loss_key or ("loss" if self.higher_is_better else self.metric)

    @classmethod
    def from_any(cls, obj: Any, name: str | None = None) -> WorkloadMeta:
        """Build from a ``WorkloadMeta``, a dict, or any object with the same attributes (e.g. a ``Workload``)."""
        if isinstance(obj, WorkloadMeta):
            return obj
        get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
        wl_name = get("name") or name
        if not wl_name or not isinstance(wl_name, str):
            raise ValueError(f"workloads_meta entry {obj!r} has no name")
        if name is not None and wl_name != name:
            raise ValueError(f"workloads_meta key {name!r} differs from the entry's name {wl_name!r}")
        target = get("target")
        max_steps = get("max_steps", 1000)
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"workloads_meta[{wl_name!r}].max_steps must be a positive int, got {max_steps!r}")
        return cls(name=wl_name, metric=str(get("metric", "loss")),
                   higher_is_better=bool(get("higher_is_better", False)), target=None if target is None else float(target), max_steps=max_steps,
                   max_seconds=get("max_seconds"), loss_key=get("loss_key"), display=str(get("display", "") or ""))


def normalize_meta(workloads_meta: Any) -> dict[str, WorkloadMeta]:
    """Accept ``{name: meta}``, or an iterable of metas; a meta is a ``WorkloadMeta``, a dict or a workload."""
    if isinstance(workloads_meta, Mapping):
        out = {k: WorkloadMeta.from_any(v, name=k) for k, v in workloads_meta.items()}
    elif isinstance(workloads_meta, Iterable) and not isinstance(workloads_meta, (str, bytes)):
        out = {}
        for item in workloads_meta:
            m = WorkloadMeta.from_any(item)
            out[m.name] = m
    else:
        raise TypeError(f"workloads_meta must be a mapping or an iterable of workload metadata, got "
                        f"{type(workloads_meta).__name__}")
    if not out:
        raise ValueError("workloads_meta is empty: need metadata for every workload in the results")
    return out


def label_of(r: TrialResult) -> str:
    return r.spec.label or r.spec.optimizer


def _time(r: TrialResult, kind: str) -> float:
    """Time to target of one trial (∞ on a miss), floored at one step / 1 µs so ratios stay finite."""
    v = r.steps_to_target if kind == "steps" else r.seconds_to_target
    if v is None or not math.isfinite(v):
        return INF
    return max(float(v), 1.0 if kind == "steps" else 1e-6)


def _final(r: TrialResult, key: str, higher_is_better: bool) -> float:
    """The trial's final value of ``key`` oriented so that lower is better (∞ if absent or non-finite)."""
    v = r.final_metrics.get(key)
    if v is None and r.curve:
        v = r.curve[-1].metrics.get(key)
    if v is None or not math.isfinite(v) or r.status != "done":
        return INF
    return -v if higher_is_better else v


def units(trials: list[TrialResult]) -> dict[tuple, list[TrialResult]]:
    """Trials grouped into units: ``("study", k)`` under the external protocol, else ``("seed", s)``."""
    out: dict[tuple, list[TrialResult]] = defaultdict(list)
    for r in trials:
        key = ("study", r.spec.study) if r.spec.protocol == "external" else ("seed", r.spec.seed)
        out[key].append(r)
    return dict(sorted(out.items()))


def unit_times(trials: list[TrialResult], kind: str) -> dict[tuple, float]:
    """Per unit: the best time to target among its trials (∞ if none reached)."""
    return {k: min(_time(r, kind) for r in rs) for k, rs in units(trials).items()}


def representative_trials(trials: list[TrialResult], meta: WorkloadMeta) -> list[TrialResult]:
    """One trial per unit: the fastest to target in steps, ties broken by the better final metric."""
    return [min(rs, key=lambda r: (_time(r, "steps"), _final(r, meta.metric, meta.higher_is_better)))
            for rs in units(trials).values()]


@dataclass
class TimeTable:
    """Time to target (``kind`` = steps or seconds) per label and workload with a target."""

    kind: str
    units: dict[str, dict[str, list[float]]]  # raw per-unit times, ∞ = miss ([] = not run)
    budget: dict[str, float]

    def median(self, label: str, wl: str) -> float:
        u = self.units[label][wl]
        return scoring.quantile(u, 0.5) if u else INF

    def substituted(self, label: str, wl: str) -> list[float]:
        """Per-unit times with a miss (or no run at all) counted as ``budget + 1``."""
        b = self.budget[wl] + 1.0
        return [min(t, b) for t in self.units[label][wl]] or [b]

    def reached(self, label: str, wl: str) -> tuple[int, int]:
        u = self.units[label][wl]
        return sum(math.isfinite(t) for t in u), len(u)


@dataclass
class Claim:
    point: float
    low: float
    high: float
    p_value: float | None
    verdict: str


@dataclass
class Learned:
    speedup: float
    lower_bound: bool
    final_ratio: float


@dataclass
class Summary:
    meta: dict[str, WorkloadMeta]
    labels: list[str]
    baseline: str | None
    requested_baseline: str
    groups: dict[str, dict[str, list[TrialResult]]]
    target_workloads: list[str]
    times: dict[str, TimeTable] = field(default_factory=dict)
    ratios: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    geomean: dict[str, dict[str, float]] = field(default_factory=dict)
    geomean_ratio: dict[str, dict[str, float]] = field(default_factory=dict)
    claims: dict[str, dict[str, Claim]] = field(default_factory=dict)
    learned: dict[str, dict[str, Learned]] = field(default_factory=dict)
    learned_iqm: dict[str, tuple[float, float]] = field(default_factory=dict)
    overhead_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    problems: list[TrialResult] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)

    def title(self, wl: str) -> str:
        """The name tables show for workload ``wl``: its ``display`` name, made unique (a clash shows the key)."""
        return self.titles.get(wl, wl)

    @property
    def workloads(self) -> list[str]:
        return [w for w in self.meta if any(w in self.groups[s] for s in self.labels)]

    def reps(self, label: str, wl: str) -> list[TrialResult]:
        trials = self.groups[label].get(wl, [])
        return representative_trials(trials, self.meta[wl]) if trials else []


def _budget(wl: str, meta: WorkloadMeta, results: list[TrialResult], kind: str) -> float:
    if kind == "steps":
        return float(meta.max_steps)
    if meta.max_seconds:
        return float(meta.max_seconds)
    observed = [r.train_seconds for r in results if r.spec.workload == wl and math.isfinite(r.train_seconds)]
    observed += [r.seconds_to_target for r in results if r.spec.workload == wl and r.seconds_to_target is not None]
    return max(observed, default=1.0)


def _claim(table: TimeTable, label: str, baseline: str, workloads: list[str]) -> Claim:
    m = {w: table.substituted(label, w) for w in workloads}
    b = {w: table.substituted(baseline, w) for w in workloads}
    point, lo, hi = scoring.bootstrap_geomean_ratio(m, b)
    diffs = [math.log(np.median(m[w]) / np.median(b[w])) for w in workloads]
    p = scoring.sign_flip_test(diffs) if len(workloads) >= 2 else None
    few = min(min(len(table.units[s][w]) for w in workloads) for s in (label, baseline)) < 3
    if few:
        verdict = "too few seeds"
    elif hi < 1.0:
        verdict = "faster"
    elif lo > 1.0:
        verdict = "slower"
    else:
        verdict = "not distinguishable"
    return Claim(point, lo, hi, p, verdict)


def curve_band(trials: list[TrialResult], key: str) -> dict[str, np.ndarray]:
    """Median and inter-quartile band of curve metric ``key`` over trials, on the union of their evaluation steps.
    Non-finite values (divergence) and steps a trial did not reach are left out; ``wall`` is the median timed
    wall-clock seconds at each step. Arrays: ``step``, ``wall``, ``median``, ``q25``, ``q75``."""
    grid = sorted({p.step for r in trials for p in r.curve if p.metrics.get(key) is not None})
    pos = {s: i for i, s in enumerate(grid)}
    vals = np.full((len(trials), len(grid)), np.nan)
    wall = np.full((len(trials), len(grid)), np.nan)
    for i, r in enumerate(trials):
        for p in r.curve:
            v = p.metrics.get(key)
            if v is not None and math.isfinite(v):
                vals[i, pos[p.step]] = v
                wall[i, pos[p.step]] = p.wall_s
    out = {"step": np.asarray(grid, dtype=float)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns give NaN, which is what we want
        out["wall"] = np.nanmedian(wall, axis=0) if grid else np.zeros(0)
        for name, q in (("median", 50), ("q25", 25), ("q75", 75)):
            out[name] = np.nanpercentile(vals, q, axis=0) if grid else np.zeros(0)
    return out


def _learned(summary: Summary) -> None:
    base = summary.baseline
    if base is None:
        return
    for wl, meta in summary.meta.items():
        base_reps = summary.reps(base, wl)
        band = curve_band(base_reps, meta.loss)
        ok = np.isfinite(band["median"])
        if not ok.any():
            continue
        grid, med = band["step"][ok].tolist(), band["median"][ok].tolist()
        base_finals = [_final(r, meta.loss, False) for r in base_reps]
        base_final = scoring.quantile(base_finals, 0.5)
        if not (math.isfinite(base_final) and base_final > 0):
            continue
        for label in summary.labels:
            if label == base:
                continue
            values = []
            for r in summary.reps(label, wl):
                steps = r.steps or (r.curve[-1].step if r.curve else 0)
                if steps <= 0:
                    continue
                f = _final(r, meta.loss, False)
                sp, lb = scoring.speedup_vs_baseline(grid, med, f, steps)
                values.append((sp, lb, scoring.final_loss_ratio(f, base_final)))
            if values:
                summary.learned.setdefault(label, {})[wl] = Learned(
                    scoring.quantile([v[0] for v in values], 0.5), any(v[1] for v in values),
                    scoring.quantile([v[2] for v in values], 0.5))
    for label, per_wl in summary.learned.items():
        summary.learned_iqm[label] = (scoring.iqm([v.speedup for v in per_wl.values()]),
                                      scoring.iqm([v.final_ratio for v in per_wl.values()]))


def summarize(results: Iterable[TrialResult], workloads_meta: Any, baseline: str = "adamw-tuned") -> Summary:
    """All report tables from trial records. ``baseline`` is the label ratios and claims are taken against."""
    results = list(results)
    if not results:
        raise ValueError("results is empty: no trials to report on")
    for r in results:
        if not isinstance(r, TrialResult):
            raise TypeError(f"results must hold TrialResult objects, got {type(r).__name__}")
    meta = normalize_meta(workloads_meta)
    unknown = sorted({r.spec.workload for r in results} - set(meta))
    if unknown:
        raise ValueError(f"workloads_meta lacks the workload(s) {unknown} found in results; known: {sorted(meta)}")
    groups: dict[str, dict[str, list[TrialResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        groups[label_of(r)][r.spec.workload].append(r)
    labels = sorted(groups, key=lambda s: (s != baseline, s))
    base = baseline if baseline in groups else None
    meta = {w: m for w, m in meta.items() if any(w in groups[s] for s in labels)}
    targets = [w for w, m in meta.items() if m.target is not None]
    s = Summary(meta=meta, labels=labels, baseline=base, requested_baseline=baseline,
                groups={k: dict(v) for k, v in groups.items()}, target_workloads=targets)
    s.problems = [r for r in results if r.status != "done"]
    shown = {w: m.display or w for w, m in meta.items()}
    clash = {t for t in shown.values() if list(shown.values()).count(t) > 1}
    s.titles = {w: (t if t not in clash or t == w else f"{t} ({w})") for w, t in shown.items()}
    for kind in KINDS:
        table = TimeTable(kind, {lab: {w: list(unit_times(s.groups[lab].get(w, []), kind).values()) for w in targets}
                                 for lab in labels},
                          {w: _budget(w, meta[w], results, kind) for w in targets})
        s.times[kind] = table
        if not targets:
            continue
        s.ratios[kind] = scoring.performance_ratios({lab: {w: table.median(lab, w) for w in targets} for lab in labels})
        s.scores[kind] = scoring.algoperf_scores(s.ratios[kind])
        s.geomean[kind] = {lab: scoring.geometric_mean(float(np.median(table.substituted(lab, w))) for w in targets)
                           for lab in labels}
        if base is not None:
            s.geomean_ratio[kind] = {lab: s.geomean[kind][lab] / s.geomean[kind][base] for lab in labels}
            s.claims[kind] = {lab: _claim(table, lab, base, targets) for lab in labels if lab != base}
    _learned(s)
    for lab in labels:
        for w in meta:
            per = [1000.0 * r.optimizer_seconds / r.steps for r in s.reps(lab, w) if r.steps > 0]
            if per:
                s.overhead_ms.setdefault(lab, {})[w] = scoring.quantile(per, 0.5)
    return s
