"""Tiny workloads for the runner and database tests, loaded as ``tests.bench.runner_workloads:ClassName``."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import torch
from torch import nn

from optfit.bench.workload import DataMissing, Workload


class TinyRegression(Workload):
    """Least squares, 8 features → 1, 128 fixed points; batches of 16 tagged with their index."""

    name = "tiny-regression"
    metric = "loss"
    higher_is_better = False
    target = 0.05
    max_steps = 60
    step_hint = 60
    eval_every = 10

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(128, 8, generator=g)
        self.y = self.x @ torch.linspace(-1.0, 1.0, 8).unsqueeze(1) + 0.01 * torch.randn(128, 1, generator=g)

    def build_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return nn.Linear(8, 1)

    def train_batches(self, seed: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        i = 0
        while True:
            idx = torch.randint(0, 128, (16,), generator=g)
            yield i, self.x[idx], self.y[idx]
            i += 1

    def loss(self, model: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        _, x, y = batch
        return ((model(x) - y) ** 2).mean()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"loss": float(((model(self.x) - self.y) ** 2).mean().detach())}


class StatedRegression(TinyRegression):
    """TinyRegression that states its loss (F.mse_loss of model(x)), so Universal MM can bound it."""

    def loss_inputs(self, batch: tuple[int, torch.Tensor, torch.Tensor]) -> tuple[str, torch.Tensor, torch.Tensor]:
        return ("mse", batch[1], batch[2])


class SlowEval(TinyRegression):
    """Each evaluation sleeps 50 ms (evaluation must not be timed)."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        time.sleep(0.05)
        return super().evaluate(model)


class SlowStep(TinyRegression):
    """Each training loss sleeps 10 ms (wall time grows, process time hardly)."""

    max_steps = 30

    def loss(self, model: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        time.sleep(0.01)
        return super().loss(model, batch)


class Boom(TinyRegression):
    """Raises on the 6th batch."""

    def loss(self, model: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if batch[0] == 5:
            raise RuntimeError("boom at batch 5")
        return super().loss(model, batch)


class Crash(TinyRegression):
    """Kills its own process (SIGKILL) on the 6th batch, like a segfault would."""

    def loss(self, model: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        if batch[0] == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().loss(model, batch)


class Missing(TinyRegression):
    def prepare(self) -> None:
        raise DataMissing("tiny data is not prepared; run `optfit data prepare`")


class NoMetric(TinyRegression):
    def evaluate(self, model: nn.Module) -> dict[str, float]:
        return {"accuracy": 0.5}


class VerySlow(TinyRegression):
    """A trial of about 6 s (600 steps sleeping 10 ms): long enough to be caught mid-trial by a signal."""

    name = "very-slow"
    max_steps = 600
    step_hint = 600
    eval_every = 100

    def loss(self, model: nn.Module, batch: tuple[int, torch.Tensor, torch.Tensor]) -> torch.Tensor:
        time.sleep(0.01)
        return super().loss(model, batch)


class NeedsMnist(TinyRegression):
    """Declares the ``mnist`` dataset of ``optfit data prepare`` (checked by ``check_data`` before a run)."""

    name = "needs-mnist"
    datasets = ("mnist",)
