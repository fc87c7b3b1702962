"""Plain records shared by the runner, the results database and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrialSpec:
    """What to run: one optimizer with fixed hyperparameters on one workload with one seed.

    ``protocol`` is ``"fixed"``, ``"external"`` (one trial of a tuning study; ``study``/``trial_index``
    say which), ``"self"`` (self-tuning) or ``"sweep"`` (one member of a sweep-vs-gap grid).
    ``label`` names the entry in reports (defaults to the optimizer name), e.g. ``"adamw-tuned"``.
    ``schedule`` is ``None`` (constant lr) or a dict such as ``{"kind": "warmup_cosine", "warmup": 0.02}``.
    """

    workload: str
    optimizer: str
    hparams: dict[str, Any]
    seed: int = 0
    protocol: str = "fixed"
    label: str = ""
    schedule: dict[str, Any] | None = None
    study: int = 0
    trial_index: int = 0

    def key(self) -> str:
        """A stable identity for resume/deduplication (same spec → same key)."""
        import hashlib
        import json

        blob = json.dumps({k: getattr(self, k) for k in ("workload", "optimizer", "hparams", "seed", "protocol",
                                                          "label", "schedule", "study", "trial_index")},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]


@dataclass
class CurvePoint:
    """One evaluation: step, seconds of timed training so far (wall and process), metrics."""

    step: int
    wall_s: float
    cpu_s: float
    metrics: dict[str, float]


@dataclass
class TrialResult:
    """What a finished trial produced. ``steps_to_target``/``seconds_to_target`` are ``None`` if the target
    was never reached. ``status`` is ``"done"``, ``"diverged"`` (non-finite loss) or ``"failed"``.
    ``extras`` carries optimizer introspection (e.g. a gap optimizer's selection history) and overhead."""

    spec: TrialSpec
    status: str
    curve: list[CurvePoint] = field(default_factory=list)
    steps_to_target: int | None = None
    seconds_to_target: float | None = None
    final_metrics: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    optimizer_seconds: float = 0.0
    steps: int = 0
    error: str = ""
    extras: dict[str, Any] = field(default_factory=dict)
