"""W5: a 1-D CNN on MNIST-1D (Greydanus 2020, arXiv 2011.14439): 40-sample signals of 10 digit templates
under random shift, scale, shear and noise; a small model where the architecture matters."""

from __future__ import annotations

import torch
from torch import nn

from .. import data
from ._common import ClassificationWorkload, seeded, with_target


class MNIST1DCNN(ClassificationWorkload):
    """Conv1d(1→25, k5, s2) - Conv1d(25→25, k3, s2) - Conv1d(25→25, k3, s2), ReLU, then linear 125→10
    (5,210 parameters); 4,000 training signals, evaluated on the 1,000 test signals."""

    name = "w5-cnn1d"
    datasets = ("mnist1d",)
    description = "1-D CNN (5k params) on MNIST-1D"
    step_hint, max_steps, eval_every = 3300, 4400, 150

    def _load(self):
        d = data.load_mnist1d(self.data_root)
        x, xt = (torch.from_numpy(d[k]).float().unsqueeze(1) for k in ("x", "x_test"))
        return x, torch.from_numpy(d["y"]).long(), xt, torch.from_numpy(d["y_test"]).long()

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Sequential(
                nn.Conv1d(1, 25, 5, stride=2, padding=1), nn.ReLU(),
                nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv1d(25, 25, 3, stride=2, padding=1), nn.ReLU(),
                nn.Flatten(), nn.Linear(25 * 5, 10))


with_target(MNIST1DCNN)
