"""Learning-rate schedules applied by the runner (never by a workload): dicts naming ``optfit.schedules`` parts.

A schedule is ``None`` / ``{"kind": "constant"}`` or a dict such as ``{"kind": "warmup_cosine", "warmup": 0.02}``
(AlgoPerf's baseline shape). The formulas are ``optfit.schedules``' (see its docstring); the total steps are the
workload's step hint H, and the warmup is ``warmup_steps`` or ``round(warmup · H)`` steps:

    {"kind": "warmup_cosine", "warmup" | "warmup_steps", "final"}      → optfit.schedules.WarmupCosine
    {"kind": "warmup_linear", "warmup" | "warmup_steps", "final"}      → optfit.schedules.WarmupLinear
    {"kind": "wsd", "warmup" | "warmup_steps", "decay_fraction", "decay_shape", "final"} → optfit.schedules.WSD

Warmup starts at 1/W rather than 0 (so the first step is not wasted) and reaches 1 on its last step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from optfit import schedules as S

KINDS = ("constant", "warmup_cosine", "warmup_linear", "wsd")

_WARMUP = {"warmup", "warmup_steps"}
_KEYS = {"constant": set(), "warmup_cosine": _WARMUP | {"final"}, "warmup_linear": _WARMUP | {"final"},
         "wsd": _WARMUP | {"decay_fraction", "decay_shape", "final"}}
_FUNCTIONS = {"warmup_cosine": S.warmup_cosine, "warmup_linear": S.warmup_linear, "wsd": S.wsd}
_SCHEDULERS = {"warmup_cosine": S.WarmupCosine, "warmup_linear": S.WarmupLinear, "wsd": S.WSD}


class Constant:
    """m(t) = 1."""

    def __call__(self, t: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "Constant()"


class Multiplier:
    """t ↦ ``kind``'s optfit.schedules function at (t, step_hint, **arguments); the arguments are checked once."""

    def __init__(self, kind: str, step_hint: int, **arguments: Any) -> None:
        self.kind, self.step_hint, self.arguments = kind, step_hint, arguments
        _FUNCTIONS[kind](0, step_hint, **arguments)

    def __call__(self, t: int) -> float:
        return _FUNCTIONS[self.kind](t, self.step_hint, **self.arguments)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.arguments.items())
        return f"Multiplier({self.kind!r}, step_hint={self.step_hint}{args})"


class WarmupCosine(Multiplier):
    """optfit.schedules.warmup_cosine with the runner's names."""

    def __init__(self, step_hint: int, warmup_steps: int = 0, final: float = 0.0) -> None:
        super().__init__("warmup_cosine", step_hint, warmup_steps=warmup_steps, final=final)


def _arguments(schedule: dict[str, Any] | None, step_hint: int) -> tuple[str, dict[str, Any]]:
    """(kind, keyword arguments of its optfit.schedules function beyond the total steps)."""
    if schedule is None:
        return "constant", {}
    if not isinstance(schedule, dict):
        raise TypeError(f"schedule must be a dict or None, got {type(schedule).__name__}")
    kind = schedule.get("kind", "constant")
    if kind not in _KEYS:
        raise ValueError(f"schedule kind {kind!r} is unknown; choose from {', '.join(KINDS)}")
    unknown = sorted(set(schedule) - _KEYS[kind] - {"kind"})
    if unknown:
        raise ValueError(f"schedule {kind!r} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(_KEYS[kind])) or 'nothing'}")
    if kind == "constant":
        return kind, {}
    if "warmup" in schedule and "warmup_steps" in schedule:
        raise ValueError("schedule: give warmup (fraction of the step hint) or warmup_steps, not both")
    arguments = {k: v for k, v in schedule.items() if k not in ("kind", "warmup")}
    if "warmup_steps" not in schedule:
        frac = float(schedule.get("warmup", 0.0))
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"schedule warmup must be a fraction in [0, 1), got {frac!r}")
        arguments["warmup_steps"] = int(round(frac * step_hint))
    return kind, arguments


def multiplier(schedule: dict[str, Any] | None, step_hint: int) -> Callable[[int], float]:
    """The multiplier function for a schedule dict (see the module docstring for the keys)."""
    kind, arguments = _arguments(schedule, step_hint)
    return Constant() if kind == "constant" else Multiplier(kind, int(step_hint), **arguments)


def attach(optimizer: torch.optim.Optimizer, schedule: dict[str, Any] | None,
           step_hint: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The optfit.schedules scheduler driving every param group of ``optimizer`` (``None`` for a constant lr)."""
    kind, arguments = _arguments(schedule, step_hint)
    if kind == "constant":
        return None
    return _SCHEDULERS[kind](optimizer, int(step_hint), **arguments)
