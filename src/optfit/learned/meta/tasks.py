"""The meta-training task family (Celo style): tiny MLP classifiers on small image-like datasets.

Datasets (features standardised with the training split's mean and std):

* ``mnist8`` / ``fmnist8`` – MNIST / Fashion-MNIST area-downsampled from 28×28 to 8×8 (64 inputs, 10 classes);
  MNIST's official validation split is its test split here;
* ``mnist1d`` – MNIST-1D (40 inputs, 10 classes);
* ``blobs`` – generated Gaussian clusters (8 inputs, 4 classes): needs no files, used by the tests.

A ``TaskSpec`` fixes the architecture (hidden widths, activation), the batch size, the episode length, the seeds
and the **task augmentation**: each parameter tensor i is re-parameterised as θᵢ = cᵢ·φᵢ with cᵢ log-uniform in
``[1/scale_range, scale_range]`` (the optimizer sees φ and ∂L/∂φ = cᵢ·∂L/∂θ), and the inputs are multiplied by a
log-uniform factor. ``BatchedMLP`` evaluates the same task for N particles at once (weights (N, out, in)), all
particles seeing the same minibatch (common random numbers).
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as TF
from torch import Tensor, nn

__all__ = ["Dataset", "TaskSpec", "DATASETS", "load_dataset", "blobs", "sample_task", "BatchedMLP",
           "init_params", "param_shapes", "TaskModule"]

DATASETS = ("mnist8", "fmnist8", "mnist1d", "blobs")
ACTIVATIONS = {"relu": torch.relu, "tanh": torch.tanh, "gelu": TF.gelu}
HIDDEN_CHOICES = ((16,), (32,), (64,), (32, 32), (16, 16))
BATCH_CHOICES = (32, 64, 128)


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def n_inputs(self) -> int:
        return int(self.x_train.shape[1])


def _standardise(name: str, xtr: Tensor, ytr: Tensor, xte: Tensor, yte: Tensor, n_classes: int) -> Dataset:
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-3)
    return Dataset(name, ((xtr - mean) / std).contiguous(), ytr, ((xte - mean) / std).contiguous(), yte, n_classes)


def _down8(x: Tensor) -> Tensor:
    return TF.adaptive_avg_pool2d(x.reshape(-1, 1, 28, 28), 8).reshape(len(x), 64)


def blobs(seed: int = 0, n: int = 2048, d: int = 8, classes: int = 4) -> Dataset:
    """Gaussian clusters: class means ~ N(0, I), unit noise; 3/4 train, 1/4 test."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(classes, d, generator=gen) * 1.5
    y = torch.randint(0, classes, (n,), generator=gen)
    x = means[y] + torch.randn(n, d, generator=gen)
    cut = 3 * n // 4
    return _standardise("blobs", x[:cut], y[:cut], x[cut:], y[cut:], classes)


_CACHE: dict[tuple[str, str], Dataset] = {}


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Dataset:
    """One of ``DATASETS`` (cached per process); real data comes from ``optfit.bench.data``'s loaders."""
    key = (name, str(root))
    if key in _CACHE:
        return _CACHE[key]
    if name == "blobs":
        ds = blobs()
    elif name == "mnist8":
        from ...bench.data import load_mnist

        raw = load_mnist(root)
        (xtr, ytr), (xte, yte) = raw["train"], raw["val"]
        ds = _standardise(name, _down8(torch.from_numpy(xtr)), torch.from_numpy(ytr),
                          _down8(torch.from_numpy(xte)), torch.from_numpy(yte), 10)
    elif name == "fmnist8":
        from ...bench.data import load_fashion_mnist

        raw = load_fashion_mnist(root)
        (xtr, ytr), (xte, yte) = raw["train"], raw["test"]
        f = lambda a: _down8(torch.from_numpy(a.astype("float32") / 255.0))  # noqa: E731
        ds = _standardise(name, f(xtr), torch.from_numpy(ytr), f(xte), torch.from_numpy(yte), 10)
    elif name == "mnist1d":
        from ...bench.data import load_mnist1d

        raw = load_mnist1d(root)
        ds = _standardise(name, torch.from_numpy(raw["x"]).float(), torch.from_numpy(raw["y"]).long(),
                          torch.from_numpy(raw["x_test"]).float(), torch.from_numpy(raw["y_test"]).long(), 10)
    else:
        raise ValueError(f"Invalid dataset: {name!r} (choose from {', '.join(DATASETS)})")
    _CACHE[key] = ds
    return ds


# ------------------------------------------------------------------------------------------------ tasks
@dataclass(frozen=True)
class TaskSpec:
    """One inner problem: dataset, MLP widths and activation, batch size, length (steps), augmentation, seeds."""

    dataset: str
    hidden: tuple[int, ...] = (32,)
    activation: str = "relu"
    batch_size: int = 128
    length: int = 500
    scales: tuple[float, ...] | None = None  # per parameter tensor; None = 1
    input_scale: float = 1.0
    init_seed: int = 0
    data_seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden"], d["scales"] = list(self.hidden), None if self.scales is None else list(self.scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TaskSpec":
        d = dict(d)
        d["hidden"] = tuple(d["hidden"])
        d["scales"] = None if d.get("scales") is None else tuple(d["scales"])
        return cls(**d)


def _loguniform(gen: torch.Generator, lo: float, hi: float) -> float:
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    return math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))


def sample_task(gen: torch.Generator, datasets: tuple[str, ...], min_length: int, max_length: int,
                scale_range: float = 3.0, input_range: float = 2.0) -> TaskSpec:
    """Draw a task: dataset, widths, activation, batch size uniformly; length log-uniform in
    [min_length, max_length]; augmentation factors log-uniform; seeds in [0, 1e9) (evaluation uses ≥ 1e9)."""
    pick = lambda seq: seq[int(torch.randint(len(seq), (), generator=gen))]  # noqa: E731
    hidden = pick(HIDDEN_CHOICES)
    n_tensors = 2 * (len(hidden) + 1)
    scales = tuple(_loguniform(gen, 1 / scale_range, scale_range) for _ in range(n_tensors)) if scale_range > 1 else None
    length = int(round(_loguniform(gen, min_length, max_length))) if max_length > min_length else int(min_length)
    return TaskSpec(dataset=pick(tuple(datasets)), hidden=hidden, activation=pick(tuple(ACTIVATIONS)),
                    batch_size=pick(BATCH_CHOICES), length=length, scales=scales,
                    input_scale=_loguniform(gen, 1 / input_range, input_range) if input_range > 1 else 1.0,
                    init_seed=int(torch.randint(10**9, (), generator=gen)),
                    data_seed=int(torch.randint(10**9, (), generator=gen)))


def param_shapes(spec: TaskSpec, n_inputs: int, n_classes: int) -> list[tuple[int, ...]]:
    """[(h₁, d), (h₁,), …, (classes, h_L), (classes,)] — ``nn.Linear`` layout."""
    sizes = [n_inputs, *spec.hidden, n_classes]
    return [s for a, b in zip(sizes[:-1], sizes[1:]) for s in ((b, a), (b,))]


def init_params(spec: TaskSpec, n_inputs: int, n_classes: int) -> list[Tensor]:
    """φ at initialisation: ``nn.Linear``'s U(−1/√fan_in, 1/√fan_in) for θ, divided by the scales."""
    gen = torch.Generator().manual_seed(spec.init_seed)
    out = []
    for i, s in enumerate(param_shapes(spec, n_inputs, n_classes)):
        fan_in = s[1] if len(s) == 2 else param_shapes(spec, n_inputs, n_classes)[i - 1][1]
        theta = (torch.rand(s, generator=gen) * 2 - 1) / math.sqrt(fan_in)
        out.append(theta / (spec.scales[i] if spec.scales else 1.0))
    return out


class BatchedMLP:
    """The task's loss and gradients for N particles: ``phis`` are (N, *shape) tensors."""

    def __init__(self, spec: TaskSpec, data: Dataset):
        self.spec, self.data = spec, data
        self.act = ACTIVATIONS[spec.activation]
        self.scales = spec.scales or (1.0,) * len(param_shapes(spec, data.n_inputs, data.n_classes))

    def batch(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        idx = torch.randint(len(self.data.x_train), (self.spec.batch_size,), generator=gen)
        return self.data.x_train[idx] * self.spec.input_scale, self.data.y_train[idx]

    def loss_and_grads(self, phis: list[Tensor], x: Tensor, y: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Per-particle mean cross-entropy (N,) and ∂L/∂φ for every particle."""
        phis = [p.detach().requires_grad_() for p in phis]
        with torch.enable_grad():
            losses = self.losses(phis, x, y)
            grads = torch.autograd.grad(losses.sum(), phis)
        return losses.detach(), list(grads)

    def logits(self, phis: list[Tensor], x: Tensor) -> Tensor:
        """(N, B, classes) for inputs ``x`` (B, d) that already carry the input scale."""
        h = x.unsqueeze(0)
        n_layers = len(phis) // 2
        for i in range(n_layers):
            w, b = phis[2 * i] * self.scales[2 * i], phis[2 * i + 1] * self.scales[2 * i + 1]
            h = h @ w.transpose(-1, -2) + b.unsqueeze(-2)
            if i < n_layers - 1:
                h = self.act(h)
        return h

    def losses(self, phis: list[Tensor], x: Tensor, y: Tensor) -> Tensor:
        h = self.logits(phis, x)
        n = h.shape[0]
        ce = TF.cross_entropy(h.reshape(-1, h.shape[-1]), y.repeat(n), reduction="none")
        return ce.reshape(n, -1).mean(1)


class TaskModule(nn.Module):
    """The same task as an ``nn.Module`` for ordinary optimizers (evaluation): its parameters are φ;
    ``forward(x, y)`` takes a batch from ``task.batch`` (inputs already scaled)."""

    def __init__(self, spec: TaskSpec, data: Dataset):
        super().__init__()
        self.task = BatchedMLP(spec, data)
        self.phis = nn.ParameterList(nn.Parameter(p) for p in init_params(spec, data.n_inputs, data.n_classes))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.task.losses([p.unsqueeze(0) for p in self.phis], x, y)[0]

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor) -> tuple[float, float]:
        """(mean cross-entropy, accuracy) on raw inputs ``x`` (e.g. the test split)."""
        logits = self.task.logits([p.unsqueeze(0) for p in self.phis], x * self.task.spec.input_scale)[0]
        return float(TF.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())
