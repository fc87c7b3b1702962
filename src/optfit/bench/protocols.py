"""Protocols: lists of ``TrialSpec`` for the four rulesets, and the external-tuning aggregation.

- ``fixed``: given hyperparameters, every workload × optimizer × seed.
- ``external_tuning``: AlgoPerf's external-tuning ruleset — per workload, ``studies`` independent studies of
  ``trials`` points sampled from a search space; the workload's time is the median over studies of each
  study's best (minimum) time to target (``external_tuning_times``).
- ``self_tuning``: one run per workload and seed with the same settings everywhere (no per-workload tuning;
  gap optimizers are judged this way).
- ``sweep_vs_gap``: a fixed-β grid of a base optimizer against one gap run over the same β candidates, same
  lr and schedule.

Search spaces map a name to a distribution:

- ``("log", lo, hi)``: log-uniform in [lo, hi] (learning rates, weight decay);
- ``("uniform", lo, hi)``;
- ``("one_minus_log", lo, hi)``: a β in [lo, hi] with 1 − β log-uniform in [1 − hi, 1 − lo] (momenta);
- ``("choice", [a, b, ...])``; any other value is fixed.

Names ``beta1`` / ``beta2`` assemble ``betas=(β₁, β₂)``; ``warmup`` sets the warmup fraction of the
``warmup_cosine`` schedule; every other name is passed to the optimizer as a hyperparameter. Names are not
checked against the registry here (the runner reports a bad one as a failed trial).
"""

from __future__ import annotations

import math
import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .records import TrialResult, TrialSpec

WARMUP_COSINE = {"kind": "warmup_cosine", "warmup": 0.05}

# AlgoPerf-like AdamW space (shape of its NAdamW baseline space; ranges chosen for the CPU suite's short runs)
ADAMW_SPACE: dict[str, Any] = {
    "lr": ("log", 2e-4, 2e-2),
    "beta1": ("one_minus_log", 0.7, 0.99),
    "beta2": ("one_minus_log", 0.9, 0.999),
    "weight_decay": ("log", 1e-4, 0.5),
    "warmup": ("uniform", 0.01, 0.1),
}
SPACES: dict[str, dict[str, Any]] = {"adamw": ADAMW_SPACE, "nadamw": ADAMW_SPACE}


def _seeds(seeds: int | Iterable[int]) -> list[int]:
    if isinstance(seeds, bool):
        raise TypeError("seeds must be an int count or an iterable of ints, got a bool")
    if isinstance(seeds, int):
        if seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {seeds}")
        return list(range(seeds))
    out = [int(s) for s in seeds]
    if not out:
        raise ValueError("seeds is empty")
    return out


def _names(value: str | Iterable[str], what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{what} must be a non-empty list of names, got {value!r}")
    return names


def fixed(workloads: str | Iterable[str], optimizers: str | Iterable[str],
          hparams_by_optimizer: Mapping[str, Mapping[str, Any]] | None = None, seeds: int | Iterable[int] = 1, *,
          schedule: dict[str, Any] | None = None, protocol: str = "fixed") -> list[TrialSpec]:
    """Every workload × optimizer × seed with the optimizer's hyperparameters from ``hparams_by_optimizer``
    (missing → registry defaults)."""
    hparams_by_optimizer = dict(hparams_by_optimizer or {})
    opts = _names(optimizers, "optimizers")
    unknown = sorted(set(hparams_by_optimizer) - set(opts))
    if unknown:
        raise ValueError(f"hparams_by_optimizer has {', '.join(unknown)}, not among optimizers {opts}")
    return [TrialSpec(workload=w, optimizer=o, hparams=dict(hparams_by_optimizer.get(o, {})), seed=s,
                      protocol=protocol, label=o, schedule=dict(schedule) if schedule else None)
            for w in _names(workloads, "workloads") for o in opts for s in _seeds(seeds)]


def sample(space: Mapping[str, Any], rng: random.Random) -> tuple[dict[str, Any], float | None]:
    """One point of ``space``: (optimizer hyperparameters, warmup fraction or ``None``)."""
    point: dict[str, Any] = {}
    for name, dist in space.items():
        if isinstance(dist, (tuple, list)) and dist and isinstance(dist[0], str):
            kind = dist[0]
            if kind == "choice":
                if len(dist) != 2 or not dist[1]:
                    raise ValueError(f"search space {name!r}: ('choice', [values...]) expected, got {dist!r}")
                point[name] = rng.choice(list(dist[1]))
                continue
            if kind not in ("log", "uniform", "one_minus_log") or len(dist) != 3:
                raise ValueError(f"search space {name!r}: unknown distribution {dist!r}; use ('log', lo, hi), "
                                 "('uniform', lo, hi), ('one_minus_log', lo, hi) or ('choice', [...])")
            lo, hi = float(dist[1]), float(dist[2])
            if not lo <= hi:
                raise ValueError(f"search space {name!r}: low {lo} > high {hi}")
            if kind == "uniform":
                point[name] = rng.uniform(lo, hi)
            elif kind == "log":
                if lo <= 0:
                    raise ValueError(f"search space {name!r}: log-uniform needs low > 0, got {lo}")
                point[name] = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            else:
                if not 0 <= lo <= hi < 1:
                    raise ValueError(f"search space {name!r}: one_minus_log needs 0 <= low <= high < 1")
                point[name] = 1.0 - math.exp(rng.uniform(math.log(1 - hi), math.log(1 - lo)))
        else:
            point[name] = dist
    warmup = point.pop("warmup", None)
    if ("beta1" in point) != ("beta2" in point):
        raise ValueError("search space: give both beta1 and beta2 (they form betas=(beta1, beta2)) or neither")
    if "beta1" in point:
        point["betas"] = (point.pop("beta1"), point.pop("beta2"))
    return point, warmup


def external_tuning(workloads: str | Iterable[str], optimizer: str = "adamw", space: Mapping[str, Any] | None = None,
                    *, trials: int = 5, studies: int = 3, seed: int = 0, label: str | None = None,
                    schedule: dict[str, Any] | None = None) -> list[TrialSpec]:
    """``studies`` × ``trials`` specs per workload, points drawn from ``space`` (default: ``SPACES[optimizer]``).

    Draws depend only on (``seed``, workload, study), so adding workloads or studies never changes existing
    trials. Each trial trains with seed ``1000·study + trial`` (+ ``seed``). The schedule is ``schedule``
    (default warmup + cosine, warmup 5 %) with the sampled ``warmup`` fraction when the space has one.
    """
    if space is None:
        if optimizer not in SPACES:
            raise ValueError(f"no default search space for {optimizer!r} (have {', '.join(SPACES)}); pass space=")
        space = SPACES[optimizer]
    for name, value in (("trials", trials), ("studies", studies)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    base_schedule = dict(WARMUP_COSINE if schedule is None else schedule)
    label = label or f"{optimizer}-tuned"
    specs = []
    for w in _names(workloads, "workloads"):
        for study in range(studies):
            rng = random.Random(f"optfit-external/{seed}/{w}/{study}")
            for trial in range(trials):
                hparams, warmup = sample(space, rng)
                sched = dict(base_schedule)
                if warmup is not None:
                    sched["warmup"] = warmup
                specs.append(TrialSpec(workload=w, optimizer=optimizer, hparams=hparams,
                                       seed=seed + 1000 * study + trial, protocol="external", label=label,
                                       schedule=sched, study=study, trial_index=trial))
    return specs


def self_tuning(workloads: str | Iterable[str], optimizers: str | Iterable[str], seeds: int | Iterable[int] = 1,
                *, hparams_by_optimizer: Mapping[str, Mapping[str, Any]] | None = None,
                schedule: dict[str, Any] | None = None) -> list[TrialSpec]:
    """One run per workload × optimizer × seed, the same settings on every workload (protocol ``"self"``)."""
    return fixed(workloads, optimizers, hparams_by_optimizer, seeds, schedule=schedule, protocol="self")


def sweep_vs_gap(workloads: str | Iterable[str], base: str = "adamw", gap: str = "gap-adamw",
                 betas: Sequence[float] = (0.5, 0.9, 0.99), lr: float = 1e-3, seeds: int | Iterable[int] = 1, *,
                 beta2: float = 0.999, hparams: Mapping[str, Any] | None = None,
                 schedule: dict[str, Any] | None = None, param: str | None = None,
                 gap_hparams: Mapping[str, Any] | None = None) -> list[TrialSpec]:
    """Fixed-β runs of ``base`` (one per β) and one ``gap`` run choosing among the same βs, all with ``lr``,
    ``hparams`` and ``schedule`` (protocol ``"sweep"``). ``beta2`` goes to the base runs only (the gap run keeps
    its own β₂ default, 0.999 for gap-adamw); ``gap_hparams`` adds settings to the gap run alone.

    ``param`` is ``"beta1"`` (base gets ``betas=(β, beta2)``, the gap run ``beta1_candidates``) or
    ``"momentum"`` (base gets ``momentum=β``, the gap run ``momentum_candidates``); by default ``"momentum"``
    when ``base`` is an SGD variant, else ``"beta1"``.
    """
    betas = [float(b) for b in betas]
    if not betas or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be a non-empty list of values in [0, 1), got {betas!r}")
    param = param or ("momentum" if "sgd" in base.lower() else "beta1")
    if param not in ("beta1", "momentum"):
        raise ValueError(f"param must be 'beta1' or 'momentum', got {param!r}")
    common = {"lr": lr, **dict(hparams or {})}
    if param == "beta1":
        members = [(f"{base}(b1={b:g})", base, {**common, "betas": (b, beta2)}) for b in betas]
        gap_run = {**common, "beta1_candidates": tuple(betas)}
    else:
        members = [(f"{base}(m={b:g})", base, {**common, "momentum": b}) for b in betas]
        gap_run = {**common, "momentum_candidates": tuple(betas)}
    members.append((gap, gap, {**gap_run, **dict(gap_hparams or {})}))
    return [TrialSpec(workload=w, optimizer=opt, hparams=hp, seed=s, protocol="sweep", label=label,
                      schedule=dict(schedule) if schedule else None)
            for w in _names(workloads, "workloads") for label, opt, hp in members for s in _seeds(seeds)]


# -- aggregation ----------------------------------------------------------------------------------------------

@dataclass
class TunedTime:
    """External-tuning time of one (workload, label): median over studies of each study's best trial.
    ``per_study`` holds each study's minimum (``inf`` = no trial reached the target), ``best`` the winning
    trial of each study (``None`` when it missed)."""

    workload: str
    label: str
    time: float
    per_study: list[float] = field(default_factory=list)
    best: list[TrialResult | None] = field(default_factory=list)


def _time(result: TrialResult, measure: str) -> float:
    """Time to target; ``inf`` if never reached (a run that reached it and diverged later still counts, as it
    would have stopped at the target under AlgoPerf's rules)."""
    value = result.seconds_to_target if measure == "seconds" else result.steps_to_target
    return math.inf if value is None else float(value)


def external_tuning_times(results: Iterable[TrialResult], measure: str = "seconds") -> dict[tuple[str, str], TunedTime]:
    """For each (workload, label) among ``results`` of protocol ``"external"``: per study the minimum time to
    target (``measure`` = ``"seconds"`` or ``"steps"``; a trial that never reached it counts as ``inf``),
    then the median over studies (``inf`` when half or more studies missed)."""
    if measure not in ("seconds", "steps"):
        raise ValueError(f"measure must be 'seconds' or 'steps', got {measure!r}")
    groups: dict[tuple[str, str], dict[int, list[TrialResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        if r.spec.protocol == "external":
            groups[(r.spec.workload, r.spec.label or r.spec.optimizer)][r.spec.study].append(r)
    out = {}
    for (workload, label), studies in sorted(groups.items()):
        per_study, best = [], []
        for study in sorted(studies):
            winner = min(studies[study], key=lambda r: (_time(r, measure), r.spec.trial_index))
            t = _time(winner, measure)
            per_study.append(t)
            best.append(winner if math.isfinite(t) else None)
        out[(workload, label)] = TunedTime(workload, label, _median(per_study), per_study, best)
    return out


def _median(values: list[float]) -> float:
    """Median; with an even count a middle ``inf`` makes it ``inf`` ((x + inf) / 2), i.e. a miss."""
    return float(statistics.median(values))
