"""Step time of the matrix optimizers: batched path vs a plain per-matrix loop of the same maths.

``impl="foreach"`` stacks the same-shape matrices of a param group and runs one batched kernel per shape (one
batched Newton–Schulz, one batched quantile for ROOT); ``impl="reference"`` loops over the matrices with the
same kernel on a stack of one. Both run interleaved (round-robin, median over rounds) in one process at each
thread count (``torch.set_num_threads``), so the ratio is comparable on a noisy shared machine. Stacks are
given as COUNTxROWSxCOLS (float32 parameters, fixed random gradients); the default adds 64 small 128×128
matrices (e.g. per-head blocks). These figures set ``impl="auto"``: the loop on one CPU thread, the stacks
otherwise.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/matrix_step.py [--threads 1,2] [--rounds 2]
        [--optimizers muon,adamuon,root] [--stacks 8x512x512,8x512x2048,64x128x128] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import optfit

IMPLS = ("reference", "foreach")


def make_params(count: int, rows: int, cols: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(count):
        p = (torch.randn(rows, cols, generator=gen) * 0.02).to(device).requires_grad_()
        p.grad = torch.randn(rows, cols, generator=gen).to(device)
        params.append(p)
    return params


def timed(step, device: str) -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step()
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def bench(names: list[str], stack: tuple[int, int, int], rounds: int, device: str) -> dict[tuple[str, str], float]:
    """Median seconds per step of every (optimizer, impl), interleaved."""
    steps = {}
    for name in names:
        for impl in IMPLS:
            opt = optfit.create_optimizer(make_params(*stack, device), name, impl=impl, weight_decay=0.0)
            steps[name, impl] = opt.step
    times: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    for key, step in steps.items():  # warm-up (lazy state, allocator)
        timed(step, device)
    for _ in range(rounds):
        for key, step in steps.items():
            times[key].append(timed(step, device))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--optimizers", default="muon,adamuon,root")
    parser.add_argument("--stacks", default="8x512x512,8x512x2048,64x128x128")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    names = args.optimizers.split(",")
    stacks = [tuple(int(x) for x in s.split("x")) for s in args.stacks.split(",")]
    print(f"torch {torch.__version__}, device {args.device}, median of {args.rounds} interleaved rounds\n")
    print("| optimizer | stack | threads | per-matrix loop (ms) | batched (ms) | loop / batched |")
    print("|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for stack in stacks:
            result = bench(names, stack, args.rounds, args.device)
            for name in names:
                ref, fast = result[name, "reference"], result[name, "foreach"]
                print(f"| {name} | {stack[0]} × {stack[1]}×{stack[2]} | {threads} | {ref * 1e3:.1f} | "
                      f"{fast * 1e3:.1f} | {ref / fast:.2f} |", flush=True)


if __name__ == "__main__":
    main()
