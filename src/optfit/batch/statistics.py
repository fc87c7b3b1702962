"""Gradient statistics for the adaptive batch-size tests: the mini-batch gradient ḡ and the per-coordinate sample
variance σ̂² of the per-sample gradients, from one of two estimators.

* **Per-sample** (``per_sample_statistics``): gᵢ = ∇ℓ(θ; ξᵢ) for every sample by ``torch.func`` (``functional_call``
  + ``vmap(grad)``), in chunks of ``chunk_size`` samples merged exactly (Chan et al.'s pairwise update), so memory
  is O(chunk × P) rather than O(n × P):

      ḡ = (1/n) Σᵢ gᵢ ,   σ̂ⱼ² = (1/(n−1)) Σᵢ (gᵢⱼ − ḡⱼ)²

* **Micro-batch** (``microbatch_statistics``): k micro-batches Bₘ of nₘ samples, ordinary backward passes (any
  model: batch norm, hooks, custom autograd), only their mean gradients ḡₘ. With iid samples
  E[Σₘ nₘ(ḡₘⱼ − ḡⱼ)²] = (k − 1) σⱼ², so

      ḡ = (1/n) Σₘ nₘ ḡₘ ,   σ̂ⱼ² = (1/(k−1)) Σₘ nₘ (ḡₘⱼ − ḡⱼ)²

  is unbiased for the per-sample variance (k − 1 degrees of freedom instead of n − 1: noisier, far cheaper).
  Gradients you already have (gradient accumulation) go in through ``GradientStatistics.from_microbatches``.

``loss_fn(model, batch)`` returns the MEAN loss of the batch it is given (a one-sample batch for the per-sample
estimator); ``batch`` is whatever the DataLoader yields: a tensor, or a tuple / list / dict (any pytree) whose
tensor leaves share the leading batch dimension (other leaves are passed through unchanged).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["GradientStatistics", "per_sample_gradients", "per_sample_statistics", "microbatch_statistics"]

LossFn = Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class GradientStatistics:
    """ḡ (``mean``), σ̂² (``variance``, per coordinate, unbiased) and the number of samples ``num_samples`` behind
    them; ``mean`` and ``variance`` map parameter names to tensors of the parameters' shapes."""

    mean: dict[str, Tensor]
    variance: dict[str, Tensor]
    num_samples: int

    @cached_property
    def grad_norm_sq(self) -> float:
        """‖ḡ‖², summed over every parameter (float64)."""
        return float(sum((m.double() ** 2).sum() for m in self.mean.values()))

    @cached_property
    def variance_sum(self) -> float:
        """Σⱼ σ̂ⱼ² = tr Σ̂ (float64): the per-sample variance; the mini-batch gradient's is this over the batch size."""
        return float(sum(v.double().sum() for v in self.variance.values()))

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def from_samples(cls, per_sample_grads: Mapping[str, Tensor] | Sequence[Tensor]) -> "GradientStatistics":
        """From per-sample gradients stacked along dim 0 (a name → (n, *shape) mapping, or a list of them)."""
        grads = _as_dict(per_sample_grads)
        n = _common_leading(grads.values(), "per-sample gradients")
        if n < 2:
            raise ValueError(f"the sample variance needs at least 2 samples, got {n}")
        mean, m2 = {}, {}
        for k, g in grads.items():
            g = g.detach().to(_stat_dtype(g.dtype))
            mean[k] = g.mean(0)
            m2[k] = ((g - mean[k]) ** 2).sum(0)
        return cls(mean, {k: v / (n - 1) for k, v in m2.items()}, n)

    @classmethod
    def from_microbatches(cls, grads: Sequence[Mapping[str, Tensor] | Sequence[Tensor]],
                          sizes: Sequence[int]) -> "GradientStatistics":
        """From the mean gradients ``grads[m]`` of k ≥ 2 disjoint micro-batches of ``sizes[m]`` samples."""
        if len(grads) != len(sizes):
            raise ValueError(f"got {len(grads)} micro-batch gradients but {len(sizes)} sizes")
        if len(grads) < 2:
            raise ValueError(f"the micro-batch estimator needs at least 2 micro-batches, got {len(grads)}")
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"micro-batch sizes must be >= 1, got {list(sizes)}")
        acc = _Moments()
        for g, n in zip(grads, sizes):
            acc.merge({k: v.detach() for k, v in _as_dict(g).items()}, None, int(n))
        k = len(grads)
        return cls(acc.mean, {name: v / (k - 1) for name, v in acc.m2.items()}, acc.n)

    # ------------------------------------------------------------------------------------------ use
    def assign_grads(self, model: nn.Module) -> None:
        """Write ḡ into ``p.grad`` of the model's parameters named in ``mean`` (replacing what is there), so the
        optimizer can step on the statistics' batch without a second backward pass."""
        for name, p in model.named_parameters():
            if name in self.mean:
                p.grad = self.mean[name].to(dtype=p.dtype, device=p.device).clone()


class _Moments:
    """Running (n, mean, M2) per tensor; ``merge`` adds a block of n_b samples with mean and M2 (None: a micro-batch
    seen only through its mean, i.e. M2 counts the between-block spread Σ n_b (mean_b − mean)²)."""

    def __init__(self) -> None:
        self.n = 0
        self.mean: dict[str, Tensor] = {}
        self.m2: dict[str, Tensor] = {}

    def merge(self, mean_b: dict[str, Tensor], m2_b: dict[str, Tensor] | None, n_b: int) -> None:
        if self.n == 0:
            self.n = n_b
            self.mean = {k: v.to(_stat_dtype(v.dtype)).clone() for k, v in mean_b.items()}
            self.m2 = {k: (torch.zeros_like(v) if m2_b is None else m2_b[k].clone()) for k, v in self.mean.items()}
            return
        if mean_b.keys() != self.mean.keys():
            raise ValueError("every block of gradients must name the same parameters")
        n_a, n = self.n, self.n + n_b
        for k, mean_a in self.mean.items():
            delta = mean_b[k].to(mean_a.dtype) - mean_a
            mean_a.add_(delta, alpha=n_b / n)
            self.m2[k].add_(delta * delta, alpha=n_a * n_b / n)
            if m2_b is not None:
                self.m2[k].add_(m2_b[k])
        self.n = n


# ------------------------------------------------------------------------------------------ estimators
def per_sample_gradients(model: nn.Module, loss_fn: LossFn, batch: Any, *,
                         randomness: str = "different") -> dict[str, Tensor]:
    """∇ℓ(θ; ξᵢ) for every sample of ``batch``: name → tensor of shape (n, *param.shape), by
    ``vmap(grad(loss of a one-sample batch))`` over ``functional_call``; trainable parameters only, buffers as they
    are (models whose forward needs more than one sample, e.g. batch norm in training mode, need
    ``microbatch_statistics``). ``randomness`` is vmap's ("different": independent dropout masks per sample)."""
    names, params = _trainable(model)
    leaves, spec = tree_flatten(batch)
    where = [i for i, x in enumerate(leaves) if isinstance(x, Tensor)]
    _common_leading([leaves[i] for i in where], "batch tensors")
    wrapper = _LossOf(model, loss_fn)

    def sample_loss(p: dict[str, Tensor], *sample: Tensor) -> Tensor:
        full = list(leaves)
        for i, x in zip(where, sample):
            full[i] = x.unsqueeze(0)
        return torch.func.functional_call(wrapper, {f"model.{k}": v for k, v in p.items()},
                                          (tree_unflatten(full, spec),))

    detached = {k: v.detach() for k, v in zip(names, params)}
    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None,) + (0,) * len(where),
                                 randomness=randomness)
    try:
        return per_sample(detached, *[leaves[i] for i in where])
    except RuntimeError as err:
        raise RuntimeError("per-sample gradients by vmap(grad) failed; the model must run on a one-sample batch "
                           "without changing buffers in place (batch norm in training mode does not): use "
                           "microbatch_statistics / estimator='microbatch', or model.eval()") from err


def per_sample_statistics(model: nn.Module, loss_fn: LossFn, batch: Any, *, chunk_size: int | None = None,
                          randomness: str = "different") -> GradientStatistics:
    """``GradientStatistics`` from exact per-sample gradients, ``chunk_size`` samples at a time (None: all)."""
    n = _batch_len(batch)
    if n < 2:
        raise ValueError(f"the sample variance needs at least 2 samples, got {n}")
    chunk = n if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"Invalid chunk_size: {chunk_size!r} (must be >= 1)")
    acc = _Moments()
    for start in range(0, n, chunk):
        grads = per_sample_gradients(model, loss_fn, _slice(batch, start, min(n, start + chunk)),
                                     randomness=randomness)
        mean, m2 = {}, {}
        for k, g in grads.items():
            g = g.to(_stat_dtype(g.dtype))
            mean[k] = g.mean(0)
            m2[k] = ((g - mean[k]) ** 2).sum(0)
        acc.merge(mean, m2, next(iter(grads.values())).shape[0])
    return GradientStatistics(acc.mean, {k: v / (n - 1) for k, v in acc.m2.items()}, n)


def microbatch_statistics(model: nn.Module, loss_fn: LossFn, batch: Any, num_microbatches: int) -> GradientStatistics:
    """``GradientStatistics`` from the mean gradients of ``num_microbatches`` near-equal slices of ``batch``
    (``torch.autograd.grad``: ``p.grad`` is left untouched; forward side effects such as batch-norm running
    statistics do happen once per micro-batch)."""
    if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, int) or num_microbatches < 2:
        raise ValueError(f"Invalid num_microbatches: {num_microbatches!r} (must be an integer >= 2)")
    n = _batch_len(batch)
    k = min(num_microbatches, n)
    if k < 2:
        raise ValueError(f"the micro-batch estimator needs a batch of at least 2 samples, got {n}")
    names, params = _trainable(model)
    bounds = [round(i * n / k) for i in range(k + 1)]
    grads, sizes = [], []
    with torch.enable_grad():
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            loss = loss_fn(model, _slice(batch, lo, hi))
            gs = torch.autograd.grad(loss, params, allow_unused=True)
            grads.append({name: (torch.zeros_like(p) if g is None else g) for name, p, g in zip(names, params, gs)})
            sizes.append(hi - lo)
    return GradientStatistics.from_microbatches(grads, sizes)


# --------------------------------------------------------------------------------------------- helpers
class _LossOf(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the model's parameters under it."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.model, batch)


def _trainable(model: nn.Module) -> tuple[list[str], list[Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("the model has no parameter with requires_grad=True")
    return [n for n, _ in named], [p for _, p in named]


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 for the moments (bf16 / fp16 gradients are averaged in float32)."""
    return torch.promote_types(dtype, torch.float32)


def _as_dict(grads: Mapping[str, Tensor] | Sequence[Tensor]) -> dict[str, Tensor]:
    if isinstance(grads, Mapping):
        return dict(grads)
    return {str(i): g for i, g in enumerate(grads)}


def _common_leading(tensors: Any, what: str) -> int:
    sizes = {t.shape[0] if t.ndim else None for t in tensors}
    if not sizes:
        raise ValueError(f"no {what} given")
    if None in sizes or len(sizes) != 1:
        raise ValueError(f"{what} must share one leading (sample) dimension, got sizes {sorted(map(str, sizes))}")
    return sizes.pop()


def _batch_len(batch: Any) -> int:
    leaves, _ = tree_flatten(batch)
    return _common_leading([x for x in leaves if isinstance(x, Tensor)], "batch tensors")


def _slice(batch: Any, start: int, stop: int) -> Any:
    leaves, spec = tree_flatten(batch)
    return tree_unflatten([x[start:stop] if isinstance(x, Tensor) else x for x in leaves], spec)
