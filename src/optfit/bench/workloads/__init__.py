"""Built-in workloads and the lookup used by the runner and the CLI.

``get_workload("w10-digits")`` returns a built-in workload; ``get_workload("package.module:ClassName")``
imports a user-defined ``Workload`` subclass and instantiates it with no arguments.

Built-ins (protocol table W1-W10, ``docs/benchmark-protocol.md``): ``w1-logreg``, ``w2-softmax``, ``w3-mlp``,
``w4-cnn``, ``w5-cnn1d``, ``w6-charlm``, ``w7-lstm``, ``w8-autoencoder``, ``w9-noisy-quadratic``,
``w10-digits``, plus ``w1-logreg-smoke`` (W1 with a smoke budget). Targets come from ``../targets.json``.
Suites: ``smoke`` (needs no prepared data), ``quick``, ``full``.
"""

from __future__ import annotations

import importlib

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
