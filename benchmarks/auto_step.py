"""auto's step cost against optfit AdamW's default step (issue 14: ≤ 1.25×), on the showdown workloads' own models
and on the 8.4 M-parameter set of step_throughput.py. Candidates run interleaved in one process (round-robin, median
over rounds of each round's ratio), one thread, gradients fixed random tensors (the optimizer step alone).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/auto_step.py [--rounds 7] [--workloads w10-digits,...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import optfit
from optfit.bench.workloads import get_workload
from step_throughput import make_params

NAMES = ("adamw", "auto", "auto-anytime", "prodigy")


def candidates(make):
    out = {}
    for name in NAMES:
        params = make()
        for p in params:
            p.grad = torch.randn_like(p) * 1e-2
        out[name] = optfit.create_optimizer(params, name)
    params = make()
    for p in params:
        p.grad = torch.randn_like(p) * 1e-2
    out["torch AdamW(fused=True)"] = torch.optim.AdamW(params, lr=1e-3, fused=True)
    return out


def measure(opts, steps: int, rounds: int) -> dict[str, float]:
    for opt in opts.values():
        for _ in range(3):
            opt.step()
    times = {k: [] for k in opts}
    for _ in range(rounds):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                opt.step()
            times[k].append((time.perf_counter() - t0) / steps)
    base = times["adamw"]
    return {k: statistics.median(t / b for t, b in zip(v, base)) for k, v in times.items()} | {
        "adamw ms": 1e3 * statistics.median(base)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workloads", default="w10-digits,w9-noisy-quadratic,w1-logreg,w2-softmax,w5-cnn1d,w7-lstm")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, optfit {optfit.__version__}; ratio to optfit adamw's default step (1 thread)\n")
    print("| model | params (tensors) | adamw ms/step | " + " | ".join(n for n in NAMES[1:]) + " | torch AdamW(fused=True) |")
    print("|---|---|---|" + "---|" * (len(NAMES) - 1) + "---|")
    rows = [(w, lambda w=w: [p.detach().requires_grad_() for p in get_workload(w).build_model(0).parameters()], 200)
            for w in args.workloads.split(",") if w]
    rows.append(("8.4 M set", lambda: make_params(size="8.4m"), 3))
    for label, make, steps in rows:
        params = make()
        r = measure(candidates(make), steps, args.rounds)
        print(f"| {label} | {sum(p.numel() for p in params):,} ({len(params)}) | {r['adamw ms']:.3g} | "
              + " | ".join(f"{r[n]:.2f}×" for n in NAMES[1:]) + f" | {r['torch AdamW(fused=True)']:.2f}× |")


if __name__ == "__main__":
    main()
