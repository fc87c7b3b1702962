"""Adaptive batch size (AdAdaGrad's norm test) against fixed batch sizes: samples and steps to target
(issue 13, part 2).

For each workload (classification tasks with in-memory data) and seed, AdAdaGrad-Norm (``adadagrad-norm`` at its
defaults) trains with

- ``fixed B`` for B ∈ {B₀/4, B₀, 4·B₀} (B₀ = the workload's own batch size), and
- ``adaptive``: ``optfit.batch.AdaptiveBatchSize`` starting at B₀/4, the norm test with η = 0.1 (the authors'
  default) on per-sample statistics of every batch (vmap; ḡ from the same statistics, so no second backward), never
  above 16·B₀,

each for the same sample budget (the workload's ``max_steps · B₀``), evaluated every ``eval_every · B₀`` samples.
Printed: samples and steps at the first evaluation that reached the workload's target, the final metric, and for
the adaptive run its final batch size. Samples and steps do not depend on machine load; no timing is reported.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/adaptive_batch.py [--workloads w10-digits,w5-cnn1d] [--seeds 2]
"""

from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn.functional as F

import optfit
from optfit.batch import AdaptiveBatchSampler, AdaptiveBatchSize, per_sample_statistics
from optfit.bench.workloads import get_workload


def run(workload_name: str, seed: int, mode: str, batch: int) -> dict:
    wl = get_workload(workload_name)
    wl.prepare()
    b0 = wl.batch_size
    x, y = wl.tensors[:2]
    torch.manual_seed(seed)
    model = wl.build_model(seed)
    opt = optfit.create_optimizer(model, "adadagrad-norm")
    controller = AdaptiveBatchSize(batch, eta=0.1, test="norm", max_batch_size=min(16 * b0, len(x)))
    fixed = _Fixed(batch)
    sampler = AdaptiveBatchSampler(len(x), controller if mode == "adaptive" else fixed, seed=seed, drop_last=True)
    budget, every = wl.max_steps * b0, wl.eval_every * b0
    seen, steps, next_eval = 0, 0, every
    out = {"samples": None, "steps": None, "final": None, "batch": batch}

    def loss_fn(m, bt):
        return F.cross_entropy(m(bt[0]), bt[1])

    model.train()
    while seen < budget:
        for idx in sampler:
            bt = (x[idx], y[idx])
            opt.zero_grad(set_to_none=True)
            if mode == "adaptive":
                stats = per_sample_statistics(model, loss_fn, bt)
                controller.observe(stats)
                stats.assign_grads(model)
            else:
                loss_fn(model, bt).backward()
            opt.step()
            seen, steps = seen + len(idx), steps + 1
            if seen >= next_eval or seen >= budget:
                next_eval += every
                value = wl.evaluate(model)[wl.metric]
                model.train()
                out["final"] = value
                if out["samples"] is None and wl.reached(value):
                    out["samples"], out["steps"] = seen, steps
            if seen >= budget:
                break
    out["batch"] = controller.batch_size if mode == "adaptive" else batch
    return out


class _Fixed:
    """The sampler's size source for a fixed batch size."""

    def __init__(self, b: int) -> None:
        self.batch_size = b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="w10-digits,w5-cnn1d")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print("| workload | run | samples to target | steps to target | final metric | final batch |")
    print("|---|---|---|---|---|---|")
    for w in args.workloads.split(","):
        b0 = get_workload(w).batch_size
        runs = [("fixed", b0 // 4), ("fixed", b0), ("fixed", 4 * b0), ("adaptive", b0 // 4)]
        for mode, b in runs:
            res = [run(w, s, mode, b) for s in range(args.seeds)]
            reached = [r for r in res if r["samples"] is not None]

            def med(key, rs=reached):
                return f"{statistics.median(r[key] for r in rs):.0f}" if rs else "—"

            label = f"fixed B={b}" if mode == "fixed" else f"adaptive from B={b}"
            finals = statistics.median(r["final"] for r in res)
            print(f"| {w} | {label} | {med('samples')} ({len(reached)}/{len(res)}) | {med('steps')} | {finals:.4g} | "
                  f"{med('batch', res)} |", flush=True)


if __name__ == "__main__":
    main()
