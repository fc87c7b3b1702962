"""Celo step time against optfit AdamW: eager (the vectorised kernel) and ``impl="compiled"`` (torch.compile).

Two models, gradients fixed (only ``opt.step`` is timed, the learned LSTM scheduler included):
(a) an MLP 784-1024-256-10 (1.07 M parameters), (b) an MLP 64-256-128-10 on 8×8-digit-sized inputs (51 k).
One process, one thread; the candidates of a model run interleaved (round-robin, median over rounds) so the
ratios stay comparable on a shared machine. The first compiled step (tracing + inductor + C++ build) is timed
apart; ``--fresh-cache`` points inductor at an empty cache folder so that time is a cold build.

    OMP_NUM_THREADS=1 OPTFIT_CELO_DIR=../shared/data/celo .venv/bin/python benchmarks/celo_step.py \\
        [--rounds 7] [--steps 5] [--fresh-cache]
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import statistics
import sys
import tempfile
import time


def mlp_params(sizes: tuple[int, ...], seed: int = 0) -> list:
    import torch

    gen = torch.Generator().manual_seed(seed)
    params = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        params.append(torch.randn(fan_out, fan_in, generator=gen).mul_(fan_in ** -0.5).requires_grad_())
        params.append(torch.zeros(fan_out).requires_grad_())
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-2)
    return params


def bench_model(label: str, sizes: tuple[int, ...], rounds: int, steps: int) -> None:
    import optfit  # imported after --fresh-cache has set the inductor cache folder

    def build(name: str, **kw):
        params = mlp_params(sizes)
        opt = optfit.create_optimizer(params, name, **kw)
        if name == "adamw":
            return lambda: opt.step()
        return lambda: opt.step(loss=1.0)

    candidates = {"optfit adamw": build("adamw"),
                  "celo eager": build("celo", total_steps=10_000),
                  "celo compiled": build("celo", total_steps=10_000, impl="compiled")}
    first = {}
    for name, step in candidates.items():  # the first step builds the state (and compiles)
        t0 = time.perf_counter()
        step()
        first[name] = time.perf_counter() - t0
    for step in candidates.values():
        for _ in range(2):
            step()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, step in candidates.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            times[name].append((time.perf_counter() - t0) / steps)
    n = sum(p.numel() for p in mlp_params(sizes))
    med = {name: statistics.median(t) for name, t in times.items()}
    print(f"\n## {label}: MLP {'-'.join(map(str, sizes))}, {n:,} parameters, {len(sizes) * 2 - 2} tensors\n")
    print("| candidate | ms/step | ÷ optfit adamw | first step (s) |")
    print("|---|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {1e3 * t:.3f} | {t / med['optfit adamw']:.2f} | {first[name]:.2f} |")
    print(f"\ncompiled ÷ eager: {med['celo compiled'] / med['celo eager']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fresh-cache", action="store_true", help="compile with an empty inductor cache")
    args = parser.parse_args()
    if args.fresh_cache:  # an empty inductor cache, removed at exit
        cache = tempfile.mkdtemp(prefix="celo_step_inductor_")
        atexit.register(shutil.rmtree, cache, True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    import torch

    from optfit.learned import Celo

    if (reason := Celo.unavailable_reason()):
        sys.exit(f"celo unavailable: {reason}")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, rounds={args.rounds} × steps={args.steps}, "
          f"inductor cache {'fresh' if args.fresh_cache else 'default (may be warm)'}")
    bench_model("(a)", (784, 1024, 256, 10), args.rounds, args.steps)
    bench_model("(b)", (64, 256, 128, 10), args.rounds, args.steps)


if __name__ == "__main__":
    main()
