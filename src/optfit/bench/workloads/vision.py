"""Image workloads: W3 MLP and W4 small CNN on Fashion-MNIST, W8 autoencoder on MNIST."""

from __future__ import annotations

import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..workload import Workload
from ._common import ClassificationWorkload, default_root, fixed_subset, index_batches, seeded, with_target


def _fmnist(root, flat: bool) -> tuple[torch.Tensor, ...]:
    fm = data.load_fashion_mnist(root)
    out = []
    for split in ("train", "test"):
        x, y = fm[split]
        x = torch.from_numpy(x).float().div_(255.0)
        out += [x.reshape(len(x), -1) if flat else x.unsqueeze(1), torch.from_numpy(y)]
    return tuple(out)


class FashionMLP(ClassificationWorkload):
    """W3: MLP 784-256-256-10 (ReLU) on Fashion-MNIST (60k train, evaluated on the 10k test set)."""

    name = "w3-mlp"
    datasets = ("fashion-mnist",)
    description = "MLP 784-256-256-10 on Fashion-MNIST"
    step_hint, max_steps, eval_every = 2600, 3500, 100

    def _load(self):
        return _fmnist(self.data_root, flat=True)

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


class FashionCNN(ClassificationWorkload):
    """W4: conv3x3(8)-maxpool-conv3x3(16)-maxpool-fc64-fc10 (52,138 parameters) on Fashion-MNIST;
    evaluated on a fixed 2,000-image subset of the test set (one evaluation ≈ 0.4 s on one thread)."""

    name = "w4-cnn"
    datasets = ("fashion-mnist",)
    description = "small CNN (52k params) on Fashion-MNIST"
    step_hint, max_steps, eval_every = 3000, 4000, 125
    eval_size = 2000

    def _load(self):
        return _fmnist(self.data_root, flat=False)

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Flatten(), nn.Linear(16 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10))


class MNISTAutoencoder(Workload):
    """W8: autoencoder 784-256-32-256-784 (ReLU, linear code, sigmoid output; 419,120 parameters) on MNIST,
    mean-squared reconstruction error; evaluated on a fixed 5,000-image subset of the validation split."""

    name = "w8-autoencoder"
    datasets = ("mnist",)
    description = "autoencoder 784-256-32-256-784 on MNIST"
    step_hint, max_steps, eval_every = 1800, 2400, 80
    batch_size = 128
    eval_size = 5000

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        self.data_root = default_root(data_root)
        self._x: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self) -> None:
        if self._x is None:
            mnist = data.load_mnist(self.data_root)
            xv = torch.from_numpy(mnist["val"][0])
            self._x = (torch.from_numpy(mnist["train"][0]), xv[fixed_subset(len(xv), self.eval_size)])

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 32),
                                 nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 784), nn.Sigmoid())

    def train_batches(self, seed: int) -> Iterator[torch.Tensor]:
        self.prepare()
        x = self._x[0]
        for idx in index_batches(len(x), self.batch_size, seed):
            yield x[idx]

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(model(batch), batch)

    def loss_inputs(self, batch: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
        return ("mse", batch, batch)

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.prepare()
        xv = self._x[1]
        with torch.no_grad():
            total = sum(float(F.mse_loss(model(xv[i:i + 2048]), xv[i:i + 2048], reduction="sum"))
                        for i in range(0, len(xv), 2048))
        return {"mse": total / xv.numel()}


for _cls in (FashionMLP, FashionCNN, MNISTAutoencoder):
    with_target(_cls)
