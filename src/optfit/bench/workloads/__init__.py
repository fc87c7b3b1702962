"""Built-in workloads and the lookup used by the runner and the CLI.

``get_workload("w10-digits")`` returns a built-in workload; ``get_workload("package.module:ClassName")``
imports a user-defined ``Workload`` subclass (the current directory is searched first, as ``python -m`` does) and
instantiates it with no arguments; ``display_name`` is the name tables show for it (its ``name`` attribute).

Built-ins (protocol table W1-W10, ``docs/benchmark-protocol.md``): ``w1-logreg``, ``w2-softmax``, ``w3-mlp``,
``w4-cnn``, ``w5-cnn1d``, ``w6-charlm``, ``w7-lstm``, ``w8-autoencoder``, ``w9-noisy-quadratic``,
``w10-digits``, plus ``w1-logreg-smoke`` (W1 with a smoke budget). Targets come from ``../targets.json``.
Suites: ``smoke`` (needs no prepared data), ``quick``, ``full``.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

from ..names import close_matches, unknown
from ..workload import Workload

BUILTIN: dict[str, type[Workload]] = {}
SUITES: dict[str, tuple[str, ...]] = {}


def _register_builtins() -> None:
    from .charlm import ShakespeareCharLM
    from .cnn1d import MNIST1DCNN
    from .digits import DigitsMLP
    from .forecast import SunspotLSTM
    from .linear import LogisticRegression, LogisticRegressionSmoke, SoftmaxRegression
    from .quadratic import NoisyQuadraticWorkload
    from .vision import FashionCNN, FashionMLP, MNISTAutoencoder

    full = (LogisticRegression, SoftmaxRegression, FashionMLP, FashionCNN, MNIST1DCNN, ShakespeareCharLM,
            SunspotLSTM, MNISTAutoencoder, NoisyQuadraticWorkload, DigitsMLP)
    for cls in full + (LogisticRegressionSmoke,):
        BUILTIN[cls.name] = cls
    # smoke: seconds per run, no dataset download (sklearn-bundled + synthetic); quick adds W2, W5, W7
    SUITES["smoke"] = ("w10-digits", "w9-noisy-quadratic", "w1-logreg-smoke")
    SUITES["quick"] = ("w10-digits", "w9-noisy-quadratic", "w1-logreg", "w2-softmax", "w5-cnn1d", "w7-lstm")
    SUITES["full"] = tuple(cls.name for cls in full)


_register_builtins()


def list_workloads() -> list[str]:
    return sorted(BUILTIN)


def _import_class(name: str) -> type[Workload]:
    """The ``Workload`` subclass named by ``package.module:ClassName``, imported like ``python -m`` would: the
    current directory comes first on ``sys.path`` (the ``optfit`` script alone would not look there)."""
    module_name, _, cls_name = name.partition(":")
    if not module_name or not cls_name:
        raise ValueError(f"--workload {name!r}: give package.module:ClassName")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--workload {name!r}: cannot import module {module_name!r} ({exc}); it is looked for in "
                         f"the current directory ({cwd}) and on sys.path") from exc
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Workload)):
        found = [k for k, v in vars(module).items()
                 if isinstance(v, type) and issubclass(v, Workload) and v is not Workload]
        close = close_matches(cls_name, found)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        listed = f"; it has {', '.join(sorted(found))}" if found else ""
        raise ValueError(f"--workload {name!r}: {cls_name!r} is not a Workload subclass in {module_name}{hint}"
                         f"{listed}")
    return cls


def get_workload(name: str) -> Workload:
    """A workload instance from a built-in name or a ``module:Class`` path (instantiated with no arguments)."""
    if ":" in name:
        cls = _import_class(name)
        try:
            return cls()
        except TypeError as exc:
            raise ValueError(f"--workload {name!r}: {cls.__name__}() must be callable without arguments ({exc})") \
                from exc
    if name not in BUILTIN:
        raise ValueError(unknown("workload", name, list_workloads()) + " or give package.module:ClassName")
    return BUILTIN[name]()


@functools.lru_cache(maxsize=None)
def display_name(name: str) -> str:
    """What tables show for the workload called ``name`` in a trial: its ``name`` attribute (the class name if
    it has none) for a ``module:Class`` path; ``name`` itself when the class cannot be imported here."""
    if ":" not in name:
        return name
    try:
        cls = _import_class(name)
    except ValueError:
        return name
    return getattr(cls, "name", "") or cls.__name__
