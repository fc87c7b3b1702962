"""Optimizer step throughput on 8 × (1024×1024) matrices + 8 bias vectors (8.4 M parameters).

All candidates run interleaved in one process (round-robin, median over rounds), at each thread count, so
ratios are comparable even on a noisy shared machine. Printed per candidate: ms/step, ratio to
``torch.optim.AdamW(fused=True)`` and to a ``torch.compile``d ``torch.optim.AdamW(foreach=True)``, bytes
moved per step (read θ, g and each state tensor; write θ and each state tensor), the fraction of the
memory-bandwidth bound that implies, and the cost per byte relative to optfit ``adamw``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_throughput.py [--threads 1,2] [--rounds 5]
        [--optimizers adamw,lion,...] [--impls foreach,compiled]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import optfit


def make_params(seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for _ in range(8):
        params.append(torch.randn(1024, 1024, generator=gen).mul_(0.02).requires_grad_())
        params.append(torch.zeros(1024).requires_grad_())
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen).mul_(1e-3)
    return params


def copy_bandwidth(nbytes: int = 256 << 20, repeats: int = 5) -> float:
    """Bytes per second of a large tensor copy (read + write counted)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


class Candidate:
    def __init__(self, label: str, step: Callable[[], None], state_tensors: float):
        self.label, self.step, self.state_tensors = label, step, state_tensors
        self.times: list[float] = []

    @property
    def bytes_per_param(self) -> float:
        return 4 * (3 + 2 * self.state_tensors)


def torch_candidates() -> list[Candidate]:
    out = []
    p1 = make_params()
    fused = torch.optim.AdamW(p1, lr=1e-3, fused=True)
    out.append(Candidate("torch AdamW fused", fused.step, 2))
    p2 = make_params()
    fe = torch.optim.AdamW(p2, lr=1e-3, foreach=True)
    out.append(Candidate("torch AdamW foreach", fe.step, 2))
    p3 = make_params()
    fc = torch.optim.AdamW(p3, lr=1e-3, foreach=True)
    out.append(Candidate("torch AdamW foreach+compile", torch.compile(fc.step), 2))
    return out


def optfit_candidates(names: list[str], impls: list[str]) -> list[Candidate]:
    out = []
    for name in names:
        info = optfit.optimizer_info(name)
        if (reason := getattr(info.cls, "unavailable_reason", lambda: None)()):
            print(f"skipped {name}: {reason}")
            continue
        for impl in impls:
            if impl == "foreach" and not info.supports_foreach:
                continue
            if impl not in getattr(info.cls, "IMPLS", (impl,)):
                continue
            variants = [("", {})]
            if name == "adamw" and impl != "reference":
                variants.append((" nonfinite=ignore", {"nonfinite": "ignore"}))
            for suffix, extra in variants:
                params = make_params()
                opt = optfit.create_optimizer(params, name, impl=impl, **extra)
                closure = (lambda: torch.tensor(1.0)) if info.needs_closure else None
                out.append(Candidate(f"optfit {name} [{impl}]{suffix}", lambda o=opt, c=closure: o.step(c),
                                     info.state_tensors))
    return out


def run(candidates: list[Candidate], rounds: int, steps: int) -> None:
    for c in candidates:  # warm-up (and compilation) outside the timed rounds
        for _ in range(3):
            c.step()
    for _ in range(rounds):
        for c in candidates:
            t0 = time.perf_counter()
            for _ in range(steps):
                c.step()
            c.times.append((time.perf_counter() - t0) / steps)


def report(candidates: list[Candidate], n_params: int, bandwidth: float, threads: int) -> None:
    med = {c.label: statistics.median(c.times) for c in candidates}
    fused, compiled = med["torch AdamW fused"], med["torch AdamW foreach+compile"]
    adamw_per_byte = None
    for c in candidates:
        if c.label.startswith("optfit adamw [") and "nonfinite" not in c.label:
            per_byte = med[c.label] / c.bytes_per_param
            adamw_per_byte = per_byte if adamw_per_byte is None else min(adamw_per_byte, per_byte)
    print(f"\n## {threads} thread(s) — {n_params / 1e6:.1f} M params, copy bandwidth {bandwidth / 1e9:.1f} GB/s\n")
    print("| candidate | ms/step | ÷ fused | ÷ compiled | B/param | % of bandwidth bound | per-byte ÷ optfit adamw |")
    print("|---|---|---|---|---|---|---|")
    for c in candidates:
        t = med[c.label]
        bound = c.bytes_per_param * n_params / bandwidth
        rel = f"{(t / c.bytes_per_param) / adamw_per_byte:.2f}" if adamw_per_byte else "-"
        print(f"| {c.label} | {1e3 * t:.1f} | {t / fused:.2f} | {t / compiled:.2f} | {c.bytes_per_param:.0f} | "
              f"{100 * bound / t:.0f}% | {rel} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--optimizers", default="", help="comma-separated registry names (default: all)")
    parser.add_argument("--impls", default="foreach,compiled")
    args = parser.parse_args()
    # matrix optimizers take seconds per step on 8 × 1024² (benchmarks/matrix_step.py measures them): name them to include
    names = args.optimizers.split(",") if args.optimizers else [
        n for n in optfit.list_optimizers() if optfit.optimizer_info(n).family != "matrix"]
    impls = args.impls.split(",")
    n_params = sum(p.numel() for p in make_params())
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        candidates = torch_candidates() + optfit_candidates(names, impls)
        run(candidates, args.rounds, args.steps)
        report(candidates, n_params, copy_bandwidth(), threads)


if __name__ == "__main__":
    main()
