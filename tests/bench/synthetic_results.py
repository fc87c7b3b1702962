"""Synthetic trial records for the report tests: exponential loss curves with known rates, an external-tuning
baseline, a gap run with a selection history, a diverged and a failed trial, a workload without a target and a
label that tries to inject a script."""

from __future__ import annotations

import atexit
import functools
import math
import shutil
import tempfile
from pathlib import Path

from optfit.bench.records import CurvePoint, TrialResult, TrialSpec
from optfit.bench.summary import WorkloadMeta

EVIL = "<script>alert(1)</script>"

META = {
    "quad": WorkloadMeta("quad", metric="loss", higher_is_better=False, target=0.1, max_steps=400),
    "clf": WorkloadMeta("clf", metric="accuracy", higher_is_better=True, target=0.9, max_steps=400),
    "lm": WorkloadMeta("lm", metric="loss", target=None, max_steps=400),  # no target
}


def trial(workload: str, label: str, seed: int, rate: float, *, optimizer: str | None = None,
          protocol: str = "fixed", study: int = 0, trial_index: int = 0, status: str = "done",
          diverge_at: int | None = None, steps: int = 400, every: int = 50, sec_per_step: float = 0.01,
          extras: dict | None = None, hparams: dict | None = None) -> TrialResult:
    """loss(t) = exp(-rate·t) (+ a little seed noise); accuracy = 1 − loss/2; target times read off the curve."""
    meta = META[workload]
    spec = TrialSpec(workload=workload, optimizer=optimizer or label, hparams=hparams or {"lr": 1e-3 * (1 + seed)},
                     seed=seed, protocol=protocol, label=label, study=study, trial_index=trial_index)
    if status == "failed":
        return TrialResult(spec=spec, status="failed", error="RuntimeError: boom <b>bold</b>")
    curve, hit_step, hit_sec = [], None, None
    for t in range(0, steps + 1, every):
        loss = math.exp(-rate * t) * (1 + 0.01 * seed)
        if diverge_at is not None and t >= diverge_at:
            loss = math.inf
        metrics = {"loss": loss, "accuracy": 1 - loss / 2 if math.isfinite(loss) else math.nan}
        wall = t * sec_per_step
        curve.append(CurvePoint(step=t, wall_s=wall, cpu_s=wall, metrics=metrics))
        v = metrics[meta.metric]
        if meta.target is not None and hit_step is None and math.isfinite(v) and (
                v >= meta.target if meta.higher_is_better else v <= meta.target):
            hit_step, hit_sec = t, wall
        if not math.isfinite(loss):
            break
    last = curve[-1]
    return TrialResult(spec=spec, status=status, curve=curve, steps_to_target=hit_step, seconds_to_target=hit_sec,
                       final_metrics=dict(last.metrics), train_seconds=last.wall_s, optimizer_seconds=0.3 * last.wall_s,
                       steps=last.step, error="loss became inf" if status == "diverged" else "", extras=extras or {})


def selection_history(steps: int = 400, every: int = 50) -> list:
    """Two param groups: group 0 switches 0.5 → 0.9 at step 200 on one of two tensors; group 1 stays at 0.99."""
    return [[t, [[0.5, 0.5 if t < 200 else 0.9], [0.99]]] for t in range(0, steps + 1, every)]


def make_results(evil: bool = True) -> list[TrialResult]:
    out = []
    for w in META:
        for study in range(3):  # external tuning: 3 studies × 2 trials, the better trial has rate 0.02
            for k, rate in enumerate((0.01, 0.02 + 0.001 * study)):
                out.append(trial(w, "adamw-tuned", seed=study * 10 + k, rate=rate, optimizer="adamw",
                                 protocol="external", study=study, trial_index=k))
        for seed in range(3):
            stats = [[400, {"noise_scale": 2.0 + seed, "rho": 0.95, "predicted_beta": 0.8 + 0.01 * seed}]]
            out.append(trial(w, "gap-adamw", seed, rate=0.03, protocol="self", sec_per_step=0.015,
                             extras={"selection": selection_history(), "gradient_stats": stats}))
            out.append(trial(w, "sgd", seed, rate=0.006, status="diverged" if seed == 2 else "done",
                             diverge_at=150 if seed == 2 else None))
        if evil:
            out.append(trial(w, EVIL, 0, rate=0.015, hparams={"lr": EVIL}))
    out.append(trial("quad", "sgd", 3, rate=0.0, status="failed"))
    return out


N_FULL_IMAGES = 9  # 3 workload curves + profiles + learned metrics + overhead + 3 gap selections


@functools.lru_cache(maxsize=None)
def full_report() -> Path:
    """The report of ``make_results()``, written once per test process (rendering takes a few seconds)."""
    from optfit.bench.report import write_report

    out = Path(tempfile.mkdtemp(prefix="optfit-report-"))
    atexit.register(shutil.rmtree, out, True)
    return write_report(make_results(), META, out)
