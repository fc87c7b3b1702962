"""Optimizer step throughput on 8 × (1024×1024) matrices + 8 bias vectors (8.4 M parameters).

All candidates run interleaved in one process (round-robin, median over rounds), at each thread count, so
ratios are comparable even on a noisy shared machine. Printed per candidate: ms/step, ratio to
``torch.optim.AdamW(fused=True)`` and to a ``torch.compile``d ``torch.optim.AdamW(foreach=True)``, bytes
moved per step (read θ, g and each state tensor; write θ and each state tensor), the fraction of the
memory-bandwidth bound that implies, and the cost per byte relative to optfit ``adamw``.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_throughput.py [--threads 1,2] [--rounds 5]
        [--optimizers adamw,lion,...] [--impls auto,foreach,compiled]

``--vs-torch-fused`` measures instead optfit's default path (``impl="auto"``, ``nonfinite="raise"``) of adamw,
adam, amsgrad, sgd (plain and Nesterov) and adagrad against torch.optim's ``fused=True`` optimizer of the same
maths, on the 8.4 M set and on a 49 k-parameter, 10-tensor MLP (``--sizes 8.4m,49k``). Printed: the median
over rounds of each round's ratio (candidates interleaved, so ratios hold on a shared machine), for the default,
for ``nonfinite="ignore"`` and for ``impl="foreach"`` (the kernels the default path ran before), and the
non-finite check's share of the default step, 1 − ignore/raise:

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/step_throughput.py --vs-torch-fused --threads 1,2 --rounds 15
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import optfit


# 8 × (1024×1024) + 8 × 1024 = 8.4 M; a 64-128-128-128-56-10 MLP (weights and biases) = 49 138 in 10 tensors
SIZES = {"8.4m": [(1024, 1024), (1024,)] * 8,
         "49k": [(128, 64), (128,), (128, 128), (128,), (128, 128), (128,), (56, 128), (56,), (10, 56), (10,)]}


def make_params(seed: int = 0, size: str = "8.4m") -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in SIZES[size]:
        p = torch.randn(shape, generator=gen).mul_(0.02) if len(shape) > 1 else torch.zeros(shape)
        params.append(p.requires_grad_())
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


# registry name, optfit hyperparameters, the torch.optim class and arguments of the same maths (fused)
VS_TORCH_FUSED = [
    ("adamw", {}, "AdamW", {}),
    ("adam", {}, "Adam", {}),
    ("amsgrad", {}, "Adam", {"amsgrad": True}),
    ("sgd", {}, "SGD", {}),
    ("sgd", {"momentum": 0.9, "nesterov": True}, "SGD", {"momentum": 0.9, "nesterov": True}),
    ("adagrad", {}, "Adagrad", {}),
]


def vs_torch_fused(size: str, threads: int, rounds: int) -> None:
    """optfit's default path against torch's fused optimizer of the same maths, interleaved; ratios only."""
    steps = 5 if size == "8.4m" else 300
    rows = []
    for name, hp, cls_name, torch_hp in VS_TORCH_FUSED:
        info = optfit.optimizer_info(name)
        lr = {"lr": 1e-3}
        theirs = getattr(torch.optim, cls_name)(make_params(size=size), **lr, **torch_hp, fused=True)
        ours = optfit.create_optimizer(make_params(size=size), name, **lr, **hp)
        ours_ignore = optfit.create_optimizer(make_params(size=size), name, **lr, **hp, nonfinite="ignore")
        before = optfit.create_optimizer(make_params(size=size), name, **lr, **hp, impl="foreach")
        label = name + "".join(f" {k}={v}" for k, v in hp.items())
        rows.append((label, f"torch.optim.{cls_name}({', '.join(f'{k}={v}' for k, v in torch_hp.items())}"
                     f"{', ' if torch_hp else ''}fused=True)", [theirs.step, ours.step, ours_ignore.step, before.step]))
        assert info.cls is type(ours)
    times = {label: [[], [], [], []] for label, _, _ in rows}
    for label, _, fns in rows:
        for fn in fns:
            for _ in range(3):
                fn()
    for _ in range(rounds):
        for label, _, fns in rows:
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                times[label][i].append((time.perf_counter() - t0) / steps)
    n_params = sum(p.numel() for p in make_params(size=size))
    print(f"\n## {threads} thread(s) — {n_params:,} params in {len(SIZES[size])} tensors, {rounds} rounds\n")
    print("| optfit (default path) | torch.optim, same maths | default ÷ torch | nonfinite=ignore ÷ torch | "
          "non-finite check, share of the default step | impl=\"foreach\" (the kernels of the previous default) "
          "÷ torch |")
    print("|---|---|---|---|---|---|")
    for label, torch_label, _ in rows:
        t_torch, t_raise, t_ignore, t_before = times[label]
        ratio = statistics.median(r / t for r, t in zip(t_raise, t_torch))
        ratio_ignore = statistics.median(r / t for r, t in zip(t_ignore, t_torch))
        ratio_before = statistics.median(r / t for r, t in zip(t_before, t_torch))
        share = statistics.median(1 - i / r for r, i in zip(t_raise, t_ignore))
        print(f"| {label} | {torch_label} | {ratio:.2f} | {ratio_ignore:.2f} | {100 * share:.0f}% "
              f"| {ratio_before:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--optimizers", default="", help="comma-separated registry names (default: all)")
    parser.add_argument("--impls", default="foreach,compiled")
    parser.add_argument("--vs-torch-fused", action="store_true",
                        help="optfit's default path vs torch's fused optimizers (see the module docstring)")
    parser.add_argument("--sizes", default="8.4m,49k", help="with --vs-torch-fused: 8.4m and/or 49k")
    args = parser.parse_args()
    if args.vs_torch_fused:
        print(f"torch {torch.__version__}, optfit {optfit.__version__}")
        for threads in map(int, args.threads.split(",")):
            torch.set_num_threads(threads)
            for size in args.sizes.split(","):
                vs_torch_fused(size, threads, args.rounds)
        return
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
