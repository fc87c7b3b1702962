"""Hyperparameter checks shared by every optimizer: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def _is_real(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _num(name: str, value: Any) -> float:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 0)() == 1:
        value = value.item()
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def nonneg(name: str, value: Any) -> float:
    """``value >= 0`` (learning rates, eps, weight decay)."""
    v = _num(name, value)
    if v < 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= 0)")
    return v


def positive(name: str, value: Any) -> float:
    v = _num(name, value)
    if v <= 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be > 0)")
    return v


def in_range(name: str, value: Any, lo: float, hi: float, *, hi_open: bool = True, lo_open: bool = False) -> float:
    """``lo <= value < hi`` by default; the interval ends are printed in the message."""
    v = _num(name, value)
    ok_lo = v > lo if lo_open else v >= lo
    ok_hi = v < hi if hi_open else v <= hi
    if not (ok_lo and ok_hi):
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        raise ValueError(f"Invalid {name}: {value!r} (must lie in {left}{lo}, {hi}{right})")
    return v


def beta(name: str, value: Any) -> float:
    """An EMA coefficient in [0, 1)."""
    return in_range(name, value, 0.0, 1.0)


def betas(value: Any, n: int = 2, name: str = "betas") -> tuple[float, ...]:
    """A tuple (or list) of exactly ``n`` EMA coefficients, each in [0, 1)."""
    want = f"expected a tuple of {n} numbers in [0, 1)"
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"Invalid {name}: {value!r} ({want}, got {type(value).__name__})")
    if len(value) != n:
        raise ValueError(f"Invalid {name}: {value!r} ({want}, got {len(value)})")
    return tuple(beta(f"{name}[{i}]", b) for i, b in enumerate(value))


def choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    if value not in options:
        raise ValueError(f"Invalid {name}: {value!r} (choose one of {', '.join(map(repr, options))})")
    return value


def flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"Invalid {name}: {value!r} (must be True or False)")
    return value


def integer(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {minimum})")
    return value


_STANDARD = {"lr": nonneg, "eps": nonneg, "weight_decay": nonneg, "momentum": nonneg,
             "betas": lambda name, value: betas(value, 2, name)}


def standard(group: dict[str, Any], *keys: str) -> None:
    """Check the hyperparameters every family shares (``lr``, ``betas`` = (β₁, β₂), ``eps``, ``weight_decay``,
    ``momentum``); optimizers with another number of betas call ``betas(value, n)`` themselves."""
    for key in keys:
        _STANDARD[key](key, group[key])
