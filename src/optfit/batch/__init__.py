"""Adaptive batch sizes by the norm tests of AdAdaGrad (Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes
for Adaptive Gradient Methods", arXiv 2402.11215; the norm test is Byrd, Chin, Nocedal & Wu 2012).

The mini-batch gradient ḡ = ∇F_B(θ) of a batch B of b samples is a good enough descent direction when its variance
is small against its size. With per-sample gradients gᵢ = ∇ℓ(θ; ξᵢ), σⱼ² the per-sample variance of coordinate j
and Var(ḡⱼ) = σⱼ²/b, the tests, with the expectations replaced by their sample estimates (σ̂ⱼ² the unbiased
sample variance over the batch, ∇F by ḡ), are

    norm test (AdAdaGrad-Norm):        E‖ḡ − ∇F‖² ≤ η²‖∇F‖²      →   Σⱼ σ̂ⱼ² / b  ≤ η² ‖ḡ‖²
    coordinate-wise (AdAdaGrad):       E(ḡⱼ − ∂ⱼF)² ≤ η²(∂ⱼF)² ∀j →   σ̂ⱼ² / b     ≤ η² ḡⱼ²   for every j

and when a test fails the next batch size is the smallest that would pass it, never smaller than b and capped:

    b ← min(b_max, max(b, ⌈Σⱼ σ̂ⱼ² / (η²‖ḡ‖²)⌉))           (norm)
    b ← min(b_max, max(b, ⌈maxⱼ σ̂ⱼ² / (η² ḡⱼ²)⌉))         (coordinate; 0/0 counts as 0)

So the batch grows as ‖∇F‖ shrinks against the gradient noise, and stays put while the signal dominates. The
coordinate-wise test is the stronger one (summing its inequalities over j gives the norm test); a coordinate with
ḡⱼ ≈ 0 but σ̂ⱼ > 0 sends it to ``max_batch_size`` (whose default, None, means "the dataset").
b here is the controller's current batch size (the size the next batches are drawn at); the statistics may come
from that batch or from part of it (σ̂² is a per-sample quantity).

Pieces:

* ``AdaptiveBatchSize(initial_batch_size, eta=0.1, test="norm" | "coordinate", max_batch_size=None,
  estimator="per_sample" | "microbatch", microbatches=4, chunk_size=None, test_every=1)`` — the controller:
  ``batch_size``; ``update(model, loss_fn, batch)`` (estimate + test; returns a ``NormTestResult`` or None when
  skipped); ``observe(stats)`` (test given statistics); ``should_grow(stats)``, ``required_batch_size(stats)``,
  ``propose(stats)`` (pure); ``last``, ``num_tests``, ``num_grows``; ``state_dict`` / ``load_state_dict``.
* ``AdaptiveBatchSampler(dataset_or_len, controller, shuffle=True, seed=0, drop_last=False)`` — the
  ``batch_sampler`` of a DataLoader: one permutation per epoch cut at the controller's current size, no repeats
  within an epoch, resumable mid-epoch with ``state_dict`` / ``load_state_dict``; ``set_epoch``.
* ``GradientStatistics`` (ḡ, σ̂², n; ``grad_norm_sq``, ``variance_sum``, ``assign_grads(model)``,
  ``from_samples``, ``from_microbatches``), ``per_sample_gradients`` / ``per_sample_statistics`` (torch.func:
  functional_call + vmap(grad), chunked) and ``microbatch_statistics`` (k backward passes, any model) — see
  :mod:`optfit.batch.statistics` for the estimators.

``loss_fn(model, batch)`` returns the batch's mean loss; ``batch`` is what the DataLoader yields. Typical loop
(AdAdaGrad-Norm)::

    controller = AdaptiveBatchSize(16, eta=0.1, test="norm", max_batch_size=4096)
    sampler = AdaptiveBatchSampler(dataset, controller, seed=0)
    loader = DataLoader(dataset, batch_sampler=sampler)
    opt = optfit.create_optimizer(model, "adadagrad-norm")
    loss_fn = lambda m, b: F.cross_entropy(m(b[0]), b[1])
    for epoch in range(epochs):
        for batch in loader:
            stats = per_sample_statistics(model, loss_fn, batch)    # or controller.update(model, loss_fn, batch)
            controller.observe(stats)                                # the next batches are drawn at the new size
            opt.zero_grad()
            stats.assign_grads(model)                                # ḡ as the gradient: no second backward
            opt.step()

Checkpoint ``controller.state_dict()`` and ``sampler.state_dict()`` beside the model and optimizer. Growing
batches past memory is the caller's business (gradient accumulation over slices of the batch). Single process:
for DDP, split each yielded batch across ranks and all-reduce the statistics.
"""

from .controller import ESTIMATORS, TESTS, AdaptiveBatchSize, NormTestResult
from .sampler import AdaptiveBatchSampler
from .statistics import GradientStatistics, microbatch_statistics, per_sample_gradients, per_sample_statistics

__all__ = ["AdaptiveBatchSize", "AdaptiveBatchSampler", "NormTestResult", "GradientStatistics",
           "per_sample_gradients", "per_sample_statistics", "microbatch_statistics", "TESTS", "ESTIMATORS"]
