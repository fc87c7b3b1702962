"""Built-in workloads and the lookup used by the runner and the CLI.

``get_workload("w10-digits")`` returns a built-in workload; ``get_workload("package.module:ClassName")``
imports a user-defined ``Workload`` subclass and instantiates it with no arguments.
"""

from __future__ import annotations

import importlib

from ..workload import Workload

BUILTIN: dict[str, type[Workload]] = {}
SUITES: dict[str, tuple[str, ...]] = {}


def list_workloads() -> list[str]:
    return sorted(BUILTIN)


def get_workload(name: str) -> Workload:
    """A workload instance from a built-in name or a ``module:Class`` path."""
    if ":" in name:
        module_name, _, cls_name = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"--workload {name!r}: cannot import module {module_name!r} ({exc})") from exc
        cls = getattr(module, cls_name, None)
        if not (isinstance(cls, type) and issubclass(cls, Workload)):
            raise ValueError(f"--workload {name!r}: {cls_name!r} is not a Workload subclass in {module_name}")
        return cls()
    if name not in BUILTIN:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(list_workloads()) or '(none)'} "
                         f"or give package.module:ClassName")
    return BUILTIN[name]()
