"""``AdaptiveBatchSize``: the norm test and the coordinate-wise norm test of AdAdaGrad (arXiv 2402.11215) deciding
when, and to what size, the mini-batch grows. The maths is in the package docstring (:mod:`optfit.batch`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from .statistics import GradientStatistics, LossFn, microbatch_statistics, per_sample_statistics

__all__ = ["AdaptiveBatchSize", "NormTestResult", "TESTS", "ESTIMATORS"]

TESTS = ("norm", "coordinate")
ESTIMATORS = ("per_sample", "microbatch")


@dataclass(frozen=True)
class NormTestResult:
    """One test: ``passed`` is the test inequality at the batch size ``tested_batch_size``; ``required_batch_size``
    is the smallest batch size that would pass (Σσ̂²/(η²‖ḡ‖²), or maxⱼ σ̂ⱼ²/(η²ḡⱼ²); inf when ḡ = 0 with
    σ̂² > 0); ``batch_size`` is the controller's size after the test."""

    test: str
    num_samples: int
    variance_sum: float
    grad_norm_sq: float
    required_batch_size: float
    tested_batch_size: int
    passed: bool
    batch_size: int

    @property
    def grew(self) -> bool:
        return self.batch_size > self.tested_batch_size


class AdaptiveBatchSize:
    """The adaptive batch-size controller of AdAdaGrad / AdAdaGrad-Norm.

    Args:
        initial_batch_size: b₀.
        eta: η > 0 of the test (the paper's experiments: 0.1 to 0.5; smaller η grows the batch sooner).
        test: "norm" (AdAdaGrad-Norm) or "coordinate" (the coordinate-wise test, AdAdaGrad).
        max_batch_size: the cap (None: no cap; a sampler also stops at the dataset size).
        estimator: how ``update`` estimates σ̂²: "per_sample" (torch.func, exact per-sample gradients) or
            "microbatch" (``microbatches`` ordinary backward passes; any model).
        microbatches: k for the micro-batch estimator (>= 2).
        chunk_size: per-sample gradients held in memory at once by the per-sample estimator (None: the batch).
        test_every: ``update`` runs the test on every ``test_every``-th call only (1: every call).
    """

    def __init__(self, initial_batch_size: int, *, eta: float = 0.1, test: str = "norm",
                 max_batch_size: int | None = None, estimator: str = "per_sample", microbatches: int = 4,
                 chunk_size: int | None = None, test_every: int = 1) -> None:
        self.initial_batch_size = _integer("initial_batch_size", initial_batch_size, 1)
        if not isinstance(eta, (int, float)) or isinstance(eta, bool) or not (eta > 0 and math.isfinite(eta)):
            raise ValueError(f"Invalid eta: {eta!r} (must be a finite number > 0)")
        if test not in TESTS:
            raise ValueError(f"Invalid test: {test!r} (choose one of {', '.join(map(repr, TESTS))})")
        if estimator not in ESTIMATORS:
            raise ValueError(f"Invalid estimator: {estimator!r} (choose one of {', '.join(map(repr, ESTIMATORS))})")
        if max_batch_size is not None:
            _integer("max_batch_size", max_batch_size, self.initial_batch_size)
        self.eta = float(eta)
        self.test = test
        self.max_batch_size = max_batch_size
        self.estimator = estimator
        self.microbatches = _integer("microbatches", microbatches, 2)
        self.chunk_size = None if chunk_size is None else _integer("chunk_size", chunk_size, 1)
        self.test_every = _integer("test_every", test_every, 1)
        self._batch_size = self.initial_batch_size
        self.calls = 0
        self.num_tests = 0
        self.num_grows = 0
        self.last: NormTestResult | None = None

    # ------------------------------------------------------------------------------------------ state
    @property
    def batch_size(self) -> int:
        """The current batch size (what ``AdaptiveBatchSampler`` yields next)."""
        return self._batch_size

    @property
    def at_max(self) -> bool:
        return self.max_batch_size is not None and self._batch_size >= self.max_batch_size

    # ------------------------------------------------------------------------------------------ the test
    def required_batch_size(self, stats: GradientStatistics) -> float:
        """The smallest b passing the test: Σⱼσ̂ⱼ² / (η²‖ḡ‖²) (norm) or maxⱼ σ̂ⱼ² / (η²ḡⱼ²) (coordinate);
        0/0 counts as 0, x/0 as inf."""
        eta2 = self.eta ** 2
        if self.test == "norm":
            var, norm_sq = stats.variance_sum, stats.grad_norm_sq
            if var <= 0:
                return 0.0
            return math.inf if norm_sq == 0 else var / (eta2 * norm_sq)
        worst = 0.0
        for k, var in stats.variance.items():
            var = var.double()
            g2 = stats.mean[k].double() ** 2
            ratio = torch.where(var > 0, var / (eta2 * g2), torch.zeros_like(var))  # var > 0, g = 0 → inf
            if ratio.numel():
                worst = max(worst, float(ratio.max()))
        return worst

    def should_grow(self, stats: GradientStatistics, batch_size: int | None = None) -> bool:
        """True when the test fails at ``batch_size`` (default: the current one): Σⱼσ̂ⱼ²/b > η²‖ḡ‖² (norm), or
        σ̂ⱼ²/b > η²ḡⱼ² for some coordinate j (coordinate)."""
        b = self._batch_size if batch_size is None else batch_size
        eta2 = self.eta ** 2
        if self.test == "norm":
            return stats.variance_sum / b > eta2 * stats.grad_norm_sq
        return any(bool((var.double() / b > eta2 * stats.mean[k].double() ** 2).any())
                   for k, var in stats.variance.items())

    def propose(self, stats: GradientStatistics) -> int:
        """The batch size ``observe`` would set: b if the test passes, else max(b, min(max_batch_size,
        ⌈required⌉)). With ḡ = 0 exactly (required = inf) it is ``max_batch_size``, or b when there is no cap."""
        return self._propose(stats, self.should_grow(stats), self.required_batch_size(stats))

    def _propose(self, stats: GradientStatistics, grow: bool, required: float) -> int:
        b = self._batch_size
        if not grow:
            return b
        cap = math.inf if self.max_batch_size is None else self.max_batch_size
        new = min(cap, required if math.isinf(required) else math.ceil(required))
        return b if math.isinf(new) else max(b, int(new))

    def observe(self, stats: GradientStatistics) -> NormTestResult:
        """Run the test on ``stats`` and grow the batch size if it fails."""
        before, grow, required = self._batch_size, self.should_grow(stats), self.required_batch_size(stats)
        new = self._propose(stats, grow, required)
        result = NormTestResult(test=self.test, num_samples=stats.num_samples, variance_sum=stats.variance_sum,
                                grad_norm_sq=stats.grad_norm_sq, required_batch_size=required,
                                tested_batch_size=before, passed=not grow, batch_size=new)
        self._batch_size = new
        self.num_tests += 1
        self.num_grows += int(new > before)
        self.last = result
        return result

    def statistics(self, model: nn.Module, loss_fn: LossFn, batch: Any) -> GradientStatistics:
        """σ̂² and ḡ of ``batch`` by the configured estimator."""
        if self.estimator == "per_sample":
            return per_sample_statistics(model, loss_fn, batch, chunk_size=self.chunk_size)
        return microbatch_statistics(model, loss_fn, batch, self.microbatches)

    def update(self, model: nn.Module, loss_fn: LossFn, batch: Any) -> NormTestResult | None:
        """Call once per training step with the step's batch: every ``test_every``-th call estimates the statistics
        and runs ``observe``; returns its result, or None when the test was not run (an off call, or the batch size
        is already ``max_batch_size``)."""
        self.calls += 1
        if (self.calls - 1) % self.test_every or self.at_max:
            return None
        return self.observe(self.statistics(model, loss_fn, batch))

    # ---------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"batch_size": self._batch_size, "calls": self.calls, "num_tests": self.num_tests,
                "num_grows": self.num_grows, "last": None if self.last is None else asdict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the counters and the batch size (the configuration stays the constructor's)."""
        self._batch_size = _integer("batch_size", state["batch_size"], 1)
        self.calls = int(state.get("calls", 0))
        self.num_tests = int(state.get("num_tests", 0))
        self.num_grows = int(state.get("num_grows", 0))
        last = state.get("last")
        self.last = None if last is None else NormTestResult(**last)

    def __repr__(self) -> str:
        cap = "" if self.max_batch_size is None else f", max_batch_size={self.max_batch_size}"
        return (f"AdaptiveBatchSize(batch_size={self._batch_size}, test={self.test!r}, eta={self.eta}{cap}, "
                f"estimator={self.estimator!r})")


def _integer(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= {minimum})")
    return value
