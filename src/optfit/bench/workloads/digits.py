"""W10: the smoke workload, an MLP on scikit-learn's bundled 8×8 handwritten digits (1,797 images)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ._common import ClassificationWorkload, seeded, sklearn_path, sklearn_table, with_target


class DigitsMLP(ClassificationWorkload):
    """MLP 64-128-10 (ReLU) on pixels / 16; a fixed 80/20 split (the same for every seed): 1,438 training
    and 359 test images. Batch 64."""

    name = "w10-digits"
    description = "MLP 64-128-10 on sklearn digits (smoke)"
    step_hint, max_steps, eval_every = 420, 560, 20
    batch_size = 64

    def check_data(self) -> None:
        sklearn_path("digits.csv.gz")

    def _load(self):
        pixels, labels = sklearn_table("digits.csv.gz")
        x = torch.from_numpy(pixels.astype(np.float32) / 16.0)
        y = torch.from_numpy(labels)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        n_test = len(x) // 5
        test, train = perm[:n_test], perm[n_test:]
        return x[train], y[train], x[test], y[test]

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


with_target(DigitsMLP)
