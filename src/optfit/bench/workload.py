"""The ``Workload`` interface (AlgoPerf-style): a model factory, data, a loss, an untimed evaluation,
a target and a budget. A workload never contains optimizer-specific logic; the runner owns the
optimizer, the schedule and the clock.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn


class DataMissing(RuntimeError):
    """A workload's dataset is not in the cache; the message names the command that fetches it."""


class Workload(ABC):
    """One training task.

    Class attributes describe the task; the methods build it. ``seed`` controls initialisation and
    data order; the same seed gives the same model and the same batch stream.

    - ``name``: short id used on the command line and in the database (e.g. ``"w10-digits"``).
    - ``metric``: the name of the validation metric the target applies to (a key of ``evaluate``).
    - ``higher_is_better``: direction of ``metric``.
    - ``target``: the value of ``metric`` that counts as reached.
    - ``max_steps``: the step budget; ``step_hint``: the horizon a schedule should assume.
    - ``eval_every``: evaluation period in steps (evaluation is not timed).
    - ``dtype``: parameter dtype (float32 unless the task says otherwise).
    - ``target_is_defined``: the target is part of the task's definition (e.g. a relative gap to a known
      optimum), so ``optfit bench targets`` keeps it instead of setting the tuned baseline's median best (which,
      on a convex problem solved to machine precision, would be a target of floating-point noise).
    - ``datasets``: names of ``optfit data prepare`` datasets the task reads (checked by ``check_data`` before a
      run starts any trial).

    ``name`` is what tables, figures and progress lines show; a workload given as ``package.module:ClassName``
    keeps that path in the database (workers import it from there) but is shown by its ``name``.
    See ``docs/workloads.md`` for a complete example.
    """

    name: str = ""
    metric: str = "loss"
    higher_is_better: bool = False
    target: float = 0.0
    max_steps: int = 1000
    step_hint: int = 1000
    eval_every: int = 50
    dtype: torch.dtype = torch.float32
    description: str = ""
    target_is_defined: bool = False
    datasets: tuple[str, ...] = ()

    def check_data(self) -> None:
        """Raise ``DataMissing`` (naming the command that fetches it) if data this task needs is absent. Cheap:
        it looks for files and loads nothing; a run calls it once per workload before starting any trial.

        The default checks the ``optfit data`` datasets named in ``datasets`` (under ``self.data_root`` when the
        workload has one, else the cache of ``optfit data``). A workload with data of its own overrides it."""
        if not self.datasets:
            return
        from .data import require

        for name in self.datasets:
            require(name, getattr(self, "data_root", None))

    def prepare(self) -> None:
        """Load data into memory (raise ``DataMissing`` naming ``optfit data prepare`` if absent).
        Called once, before ``build_model``; not timed."""

    @abstractmethod
    def build_model(self, seed: int) -> nn.Module:
        """A freshly initialised model (deterministic in ``seed``)."""

    @abstractmethod
    def train_batches(self, seed: int) -> Iterator[Any]:
        """An endless iterator of training batches (deterministic in ``seed``)."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar training loss of ``model`` on ``batch`` (the runner calls backward)."""

    def loss_inputs(self, batch: Any) -> tuple[str, torch.Tensor, torch.Tensor] | None:
        """For optimizers that bound the loss from the model's graph (Universal MM): ``(kind, inputs, targets)``
        when ``loss`` is exactly ``F.<kind>(model(inputs), targets)`` with kind "mse" or "cross_entropy", else
        None (the default: such optimizers cannot run on this workload)."""
        return None

    @abstractmethod
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Validation metrics, including ``self.metric`` (called under ``torch.no_grad``, untimed)."""

    def reached(self, value: float) -> bool:
        """Whether a value of ``metric`` meets the target."""
        return value >= self.target if self.higher_is_better else value <= self.target
