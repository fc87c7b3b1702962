"""W7: one-step-ahead forecasting of the monthly sunspot numbers with an LSTM."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..workload import Workload
from ._common import default_root, index_batches, seeded, with_target


class LSTMForecaster(nn.Module):
    """LSTM(1 → hidden) over the window, then a linear map of the last hidden state to the next value."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(1, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(x.unsqueeze(-1))
        return self.out(h[:, -1]).squeeze(-1)


class SunspotLSTM(Workload):
    """LSTM(32) + linear (4,513 parameters) predicting s[t] from s[t-64:t]. The series is standardised with
    the mean and standard deviation of its first 80 % (the training part); test targets are the last 20 %
    (their input windows may reach back into the training part). Metric ``relative_mse``: test MSE divided
    by the MSE of the persistence forecast s[t] ≈ s[t-1] on the same targets."""

    name = "w7-lstm"
    datasets = ("sunspots",)
    description = "LSTM(32) one-step forecasting of monthly sunspots"
    step_hint, max_steps, eval_every = 300, 400, 10
    window, batch_size, train_fraction = 64, 64, 0.8

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        self.data_root = default_root(data_root)
        self._arrays: tuple[torch.Tensor, ...] | None = None
        self.persistence_mse: float | None = None

    def prepare(self) -> None:
        if self._arrays is not None:
            return
        series = torch.from_numpy(data.load_sunspots(self.data_root)).float()
        n_train = int(len(series) * self.train_fraction)
        if n_train <= self.window + self.batch_size or len(series) - n_train < 1:
            raise ValueError(f"{self.name}: series of {len(series)} points too short for window {self.window}")
        head = series[:n_train]
        s = (series - head.mean()) / head.std()
        offsets = torch.arange(self.window)

        def windows(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return s[targets[:, None] - self.window + offsets], s[targets]

        x, y = windows(torch.arange(self.window, n_train))
        xt, yt = windows(torch.arange(n_train, len(series)))
        self.persistence_mse = float(F.mse_loss(xt[:, -1], yt))
        self._arrays = (x, y, xt, yt)

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return LSTMForecaster(32)

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.prepare()
        x, y = self._arrays[:2]
        for idx in index_batches(len(x), self.batch_size, seed):
            yield x[idx], y[idx]

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(model(x), y)

    def loss_inputs(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[str, torch.Tensor, torch.Tensor]:
        return ("mse", *batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.prepare()
        with torch.no_grad():
            mse = float(self.loss(model, self._arrays[2:]))
        return {"relative_mse": mse / self.persistence_mse, "mse": mse}


with_target(SunspotLSTM)
