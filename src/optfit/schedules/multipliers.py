"""Schedule multipliers as plain functions of (step, total_steps): the formulas live here and only here.

``step`` = t counts the optimizer steps already taken (0 for the first step, as ``LambdaLR`` and
``LRScheduler.last_epoch`` count), T = ``total_steps``, W = ``warmup_steps``, f = ``final``:

    warmup(t)        = (t + 1) / W                                  t < W   (1/W on the first step, 1 on the W-th)
    warmup_cosine(t) = f + (1 − f) · ½ · (1 + cos(π · (t − W) / (T − W)))   W ≤ t < T,   f for t ≥ T
    warmup_linear(t) = f + (1 − f) · (T − t) / (T − W)                      W ≤ t < T,   f for t ≥ T
    constant(t)      = 1                                                     t ≥ W
    wsd(t)           = 1 for W ≤ t < S;  f + (1 − f) · shape(s), s = (t − S) / D for S ≤ t < T;  f for t ≥ T

with D = round(decay_fraction · T) decay steps starting at S = T − D, and shape(s) = 1 − s ("linear"),
½ (1 + cos πs) ("cosine") or 1 − √s ("sqrt", the 1−sqrt cooldown of Hägele et al., arXiv 2405.18392).
Every decay is 1 on its first step and reaches f at t = T, one step after the last step of the horizon.
"""

from __future__ import annotations

import math
import numbers

DECAY_SHAPES = ("linear", "cosine", "sqrt")


def check_int(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high) (ValueError naming ``name`` otherwise)."""
    span = f"[{low}, {high})" if high is not None else f">= {low}"
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or value < low or (high is not None and value >= high)):
        raise ValueError(f"{name} must be an int {span}, got {value!r}")
    return int(value)


def check_fraction(name: str, value, *, closed: bool = True) -> float:
    """``value`` as a float in [0, 1] ([0, 1) when not ``closed``)."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 <= value <= 1.0
    if not ok or (not closed and value == 1.0):
        raise ValueError(f"{name} must be a number in [0, 1{']' if closed else ')'}, got {value!r}")
    return float(value)


def check_warmup(total_steps, warmup_steps) -> tuple[int, int]:
    total = check_int("total_steps", total_steps, 1)
    return total, check_int("warmup_steps", warmup_steps, 0, total)


def check_decay_shape(decay_shape) -> str:
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape must be one of {', '.join(DECAY_SHAPES)}, got {decay_shape!r}")
    return decay_shape


def decay_steps(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """D = round(decay_fraction · T), checked to leave room for the warmup (W + D ≤ T)."""
    d = int(round(decay_fraction * total_steps))
    if warmup_steps + d > total_steps:
        raise ValueError(f"decay_fraction={decay_fraction!r} gives {d} decay steps, more than the "
                         f"{total_steps - warmup_steps} steps left after warmup_steps={warmup_steps}")
    return d


# -- unchecked formulas (the schedulers call these after checking their arguments once) -------------------------

def _cosine(t: int, total: int, warmup: int, final: float) -> float:
    if t < warmup:
        return (t + 1) / warmup
    if t >= total:
        return final
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * (t - warmup) / (total - warmup)))


def _linear(t: int, total: int, warmup: int, final: float) -> float:
    if t < warmup:
        return (t + 1) / warmup
    if t >= total:
        return final
    return final + (1.0 - final) * (total - t) / (total - warmup)


def _constant(t: int, warmup: int) -> float:
    return (t + 1) / warmup if t < warmup else 1.0


def _wsd(t: int, total: int, warmup: int, decay: int, shape: str, final: float) -> float:
    start = total - decay
    if t < warmup:
        return (t + 1) / warmup
    if t < start:
        return 1.0
    if t >= total:
        return final
    s = (t - start) / decay
    if shape == "linear":
        left = 1.0 - s
    elif shape == "cosine":
        left = 0.5 * (1.0 + math.cos(math.pi * s))
    else:
        left = 1.0 - math.sqrt(s)
    return final + (1.0 - final) * left


# -- public, checked -------------------------------------------------------------------------------------------

def warmup_cosine(step: int, total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> float:
    """Linear warmup, then cosine from 1 to ``final`` at ``total_steps`` (module docstring)."""
    total, warmup = check_warmup(total_steps, warmup_steps)
    return _cosine(check_int("step", step, 0), total, warmup, check_fraction("final", final))


def warmup_linear(step: int, total_steps: int, warmup_steps: int = 0, final: float = 0.0) -> float:
    """Linear warmup, then linear decay from 1 to ``final`` (0: the paper's 1 − t/T) at ``total_steps``."""
    total, warmup = check_warmup(total_steps, warmup_steps)
    return _linear(check_int("step", step, 0), total, warmup, check_fraction("final", final))


def constant(step: int, total_steps: int | None = None, warmup_steps: int = 0) -> float:
    """Linear warmup, then 1 (``total_steps`` only bounds the warmup when given)."""
    if total_steps is None:
        warmup = check_int("warmup_steps", warmup_steps, 0)
    else:
        warmup = check_warmup(total_steps, warmup_steps)[1]
    return _constant(check_int("step", step, 0), warmup)


def wsd(step: int, total_steps: int, warmup_steps: int = 0, decay_fraction: float = 0.2,
        decay_shape: str = "sqrt", final: float = 0.0) -> float:
    """Warmup–stable–decay: the last round(decay_fraction · T) steps decay from 1 to ``final``."""
    total, warmup = check_warmup(total_steps, warmup_steps)
    decay = decay_steps(total, warmup, check_fraction("decay_fraction", decay_fraction))
    return _wsd(check_int("step", step, 0), total, warmup, decay, check_decay_shape(decay_shape),
                check_fraction("final", final))
