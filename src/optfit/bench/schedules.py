"""Learning-rate schedules applied by the runner (never by a workload), as ``LambdaLR`` multipliers.

A schedule is ``None`` / ``{"kind": "constant"}`` or ``{"kind": "warmup_cosine", "warmup": 0.02}``
(AlgoPerf's baseline shape: linear warmup, then cosine decay to ``final`` at the step hint H).

With t = number of optimizer steps already taken (``LambdaLR`` passes t = 0 for the first step) and
W warmup steps (``warmup_steps``, or ``round(warmup · H)``):

    m(t) = (t + 1) / W                                          t < W
    m(t) = f + (1 − f) · ½ · (1 + cos(π · (t − W) / (H − W)))   W ≤ t < H
    m(t) = f                                                    t ≥ H          (f = ``final``, default 0)

Warmup starts at 1/W rather than 0 (so the first step is not wasted) and reaches 1 on its last step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

KINDS = ("constant", "warmup_cosine")


class Constant:
    """m(t) = 1."""

    def __call__(self, t: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return "Constant()"


class WarmupCosine:
    """Linear warmup over ``warmup_steps`` then cosine from 1 to ``final`` at ``step_hint`` (module docstring)."""

    def __init__(self, step_hint: int, warmup_steps: int = 0, final: float = 0.0) -> None:
        if not isinstance(step_hint, int) or step_hint < 1:
            raise ValueError(f"step_hint must be a positive int, got {step_hint!r}")
        if not isinstance(warmup_steps, int) or not 0 <= warmup_steps < step_hint:
            raise ValueError(f"warmup_steps must be an int in [0, step_hint={step_hint}), got {warmup_steps!r}")
        if not 0.0 <= final <= 1.0:
            raise ValueError(f"final must be in [0, 1], got {final!r}")
        self.step_hint, self.warmup_steps, self.final = step_hint, warmup_steps, float(final)

    def __call__(self, t: int) -> float:
        w, h, f = self.warmup_steps, self.step_hint, self.final
        if t < w:
            return (t + 1) / w
        if t >= h:
            return f
        return f + (1.0 - f) * 0.5 * (1.0 + math.cos(math.pi * (t - w) / (h - w)))

    def __repr__(self) -> str:
        return f"WarmupCosine(step_hint={self.step_hint}, warmup_steps={self.warmup_steps}, final={self.final})"


def multiplier(schedule: dict[str, Any] | None, step_hint: int) -> Callable[[int], float]:
    """The multiplier function for a schedule dict (see the module docstring for the keys)."""
    if schedule is None:
        return Constant()
    if not isinstance(schedule, dict):
        raise TypeError(f"schedule must be a dict or None, got {type(schedule).__name__}")
    kind = schedule.get("kind", "constant")
    allowed = {"constant": {"kind"}, "warmup_cosine": {"kind", "warmup", "warmup_steps", "final"}}
    if kind not in allowed:
        raise ValueError(f"schedule kind {kind!r} is unknown; choose from {', '.join(KINDS)}")
    unknown = sorted(set(schedule) - allowed[kind])
    if unknown:
        raise ValueError(f"schedule {kind!r} does not take {', '.join(unknown)}; it takes "
                         f"{', '.join(sorted(allowed[kind] - {'kind'})) or 'nothing'}")
    if kind == "constant":
        return Constant()
    if "warmup" in schedule and "warmup_steps" in schedule:
        raise ValueError("schedule: give warmup (fraction of the step hint) or warmup_steps, not both")
    if "warmup_steps" in schedule:
        warmup_steps = schedule["warmup_steps"]
    else:
        frac = float(schedule.get("warmup", 0.0))
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"schedule warmup must be a fraction in [0, 1), got {frac!r}")
        warmup_steps = int(round(frac * step_hint))
    return WarmupCosine(int(step_hint), warmup_steps, float(schedule.get("final", 0.0)))


def attach(optimizer: torch.optim.Optimizer, schedule: dict[str, Any] | None,
           step_hint: int) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A ``LambdaLR`` driving every param group of ``optimizer`` (``None`` for a constant schedule)."""
    fn = multiplier(schedule, step_hint)
    if isinstance(fn, Constant):
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
