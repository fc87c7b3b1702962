"""Shared pieces of the built-in workloads: frozen targets (``targets.json``), seeded model construction,
seeded endless batch streams and a base class for classification on in-memory tensors."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import operator
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..workload import DataMissing, Workload

TARGETS_PATH = Path(__file__).resolve().parent.parent / "targets.json"
TARGETS_VERSION = 4


@functools.lru_cache(maxsize=None)
def targets() -> dict[str, dict[str, Any]]:
    """The ``workloads`` table of ``optfit/bench/targets.json`` (validated once)."""
    doc = json.loads(TARGETS_PATH.read_text())
    if doc.get("version") != TARGETS_VERSION:
        raise ValueError(f"{TARGETS_PATH}: version {doc.get('version')!r}, this optfit reads {TARGETS_VERSION}")
    return doc["workloads"]


def with_target(cls: type[Workload]) -> type[Workload]:
    """Class decorator: set ``metric``, ``higher_is_better`` and ``target`` from ``targets.json``."""
    entry = targets().get(cls.name)
    if entry is None:
        raise KeyError(f"{TARGETS_PATH} has no target for workload {cls.name!r}")
    cls.metric = entry["metric"]
    cls.higher_is_better = bool(entry["higher_is_better"])
    cls.target = float(entry["target"])
    return cls


def mix(seed: int, salt: int) -> int:
    """A derived seed, so model init and data order use unrelated streams of the same run seed."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = -1
    if value < 0 or isinstance(seed, bool):
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return (value * 1_000_003 + salt * 7_919) % (2**63)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block (e.g. module construction) under ``torch.manual_seed`` without touching the caller's RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(mix(seed, 1))  # CPU generator only: accelerators untouched
        yield


def index_batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless mini-batches of indices into ``range(n)``: a fresh permutation per epoch (sampling without
    replacement within an epoch), the last partial batch of an epoch dropped; deterministic in ``seed``."""
    if n < batch_size:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    gen = torch.Generator().manual_seed(mix(seed, 2))
    while True:
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]


def fixed_subset(n: int, size: int | None) -> torch.Tensor:
    """The first ``size`` indices of a fixed permutation of ``range(n)`` (the same for every run seed)."""
    if size is None or size >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(12345))[:size].sort().values


def default_root(data_root: str | os.PathLike | None) -> Path | None:
    return None if data_root is None else Path(data_root)


def sklearn_path(filename: str) -> Path:
    """The path of a CSV bundled in scikit-learn's ``datasets/data`` folder, found without importing
    scikit-learn (its import costs seconds per trial process). ``DataMissing`` if it is not there."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(f"this workload uses {filename} bundled with scikit-learn: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / filename
    if not path.exists():
        raise DataMissing(f"{path} not found: this scikit-learn does not bundle {filename}")
    return path


def sklearn_table(filename: str) -> tuple[np.ndarray, np.ndarray]:
    """Features and integer targets of a CSV bundled in scikit-learn (``breast_cancer.csv``: one header line;
    ``digits.csv.gz``: none), read without importing scikit-learn. ``DataMissing`` if it is not installed."""
    path = sklearn_path(filename)
    table = np.loadtxt(path, delimiter=",", skiprows=1 if filename == "breast_cancer.csv" else 0, ndmin=2)
    return table[:, :-1], table[:, -1].astype(np.int64)


class ClassificationWorkload(Workload):
    """Cross-entropy training on in-memory tensors; ``evaluate`` gives held-out ``accuracy`` and ``loss``.

    Subclasses implement ``_load() -> (x_train, y_train, x_eval, y_eval)`` and ``build_model``; the
    evaluation set is cut to a fixed subset of ``eval_size`` examples (the same for every seed).
    """

    metric = "accuracy"
    higher_is_better = True
    batch_size = 128
    eval_size: int | None = None

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        self.data_root = default_root(data_root)
        self._tensors: tuple[torch.Tensor, ...] | None = None

    def _load(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prepare(self) -> None:
        if self._tensors is None:
            x, y, xe, ye = self._load()
            keep = fixed_subset(len(xe), self.eval_size)
            self._tensors = (x, y, xe[keep], ye[keep])

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        self.prepare()
        return self._tensors

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.tensors[:2]
        for idx in index_batches(len(x), self.batch_size, seed):
            yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(model(x), y)

    def loss_inputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[str, torch.Tensor, torch.Tensor]:
        return ("cross_entropy", *batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        xe, ye = self.tensors[2:]
        was_training = model.training
        model.eval()
        correct, total_loss = 0, 0.0
        with torch.no_grad():
            for start in range(0, len(xe), 2048):
                logits = model(xe[start:start + 2048])
                yb = ye[start:start + 2048]
                total_loss += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        model.train(was_training)
        return {"accuracy": correct / len(ye), "loss": total_loss / len(ye)}
