"""W9: the noisy quadratic model (Zhang et al. 2019, "Which algorithmic choices matter at which batch
sizes?", arXiv 1907.04164): a diagonal quadratic whose stochastic gradients carry noise shaped like the
curvature, the textbook picture of mini-batch training."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..workload import Workload
from ._common import mix, with_target


class NoisyQuadratic(nn.Module):
    """Parameters θ ∈ R^d with curvatures h_i = 1/i; expected loss L(θ) = ½ Σ h_i θ_i²."""

    def __init__(self, theta0: torch.Tensor, h: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())
        self.register_buffer("h", h)
        self.register_buffer("loss0", self.expected_loss().detach())

    def expected_loss(self) -> torch.Tensor:
        return 0.5 * (self.h * self.theta.pow(2)).sum()


class NoisyQuadraticWorkload(Workload):
    """d = 1,000, h_i = 1/i, θ₀ ~ N(0, 2²I) (seeded; the scale 2 makes untuned AdamW
    at lr 1e-2 need about the protocol's 700-850 steps). A batch is a noise vector ε ~ N(0, H/B) with B = 32 and the
    training loss is L(θ) + ε·θ, so the gradient is Hθ + ε: unbiased, with the covariance of a size-B
    mini-batch. Metric ``relative_loss`` = L(θ) / L(θ₀); synthetic, needs no data."""

    name = "w9-noisy-quadratic"
    description = "noisy quadratic model, d 1000, h_i = 1/i, batch-size-32 noise"
    step_hint, max_steps, eval_every = 700, 950, 25
    dim, noise_batch, init_scale = 1000, 32, 2.0

    def __init__(self, data_root=None) -> None:  # data_root accepted for a uniform constructor; unused
        self.h = 1.0 / torch.arange(1, self.dim + 1, dtype=torch.float32)

    def build_model(self, seed: int) -> nn.Module:
        theta0 = self.init_scale * torch.randn(self.dim, generator=torch.Generator().manual_seed(mix(seed, 1)))
        return NoisyQuadratic(theta0, self.h)

    def train_batches(self, seed: int) -> Iterator[torch.Tensor]:
        gen = torch.Generator().manual_seed(mix(seed, 2))
        scale = (self.h / self.noise_batch).sqrt()
        while True:
            yield scale * torch.randn(self.dim, generator=gen)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return model.expected_loss() + batch @ model.theta

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            loss = float(model.expected_loss())
        return {"relative_loss": loss / float(model.loss0), "loss": loss}


with_target(NoisyQuadraticWorkload)
