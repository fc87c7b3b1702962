"""Workloads and runners for comparing optimizers (the showdown builds on this package).

``Workload`` is the interface a task of your own implements (``docs/workloads.md``); run it with
``optfit bench run --workload package.module:ClassName`` or ``run_experiment``.
"""

from __future__ import annotations

from typing import Any

from .records import CurvePoint, TrialResult, TrialSpec
from .workload import DataMissing, Workload

__all__ = ["Workload", "DataMissing", "TrialSpec", "TrialResult", "CurvePoint", "get_workload", "run_trial",
           "run_experiment", "ResultsDB"]

_LAZY = {"get_workload": "workloads", "run_trial": "runner", "run_experiment": "runner", "ResultsDB": "storage"}


def __getattr__(name: str) -> Any:  # the heavier parts load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
