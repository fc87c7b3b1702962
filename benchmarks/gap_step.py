"""Cost of a gap-adamw step against AdamW's, per step and end to end (issue 3, the speed item).

Part 1 — optimizer step time on the showdown models (``get_workload(name).build_model(0)``) and on a
transformer-sized stack (8.2 M parameters, 121 tensors), with fixed random gradients: torch.optim.AdamW
(foreach), optfit ``adamw`` (its default impl), gap-adamw ``impl="reference"`` and ``impl="flat"`` (global mode,
and per_param for flat). All candidates of one model run interleaved in one process (round-robin), each
timed over ``--steps`` steps per round; the median over ``--rounds`` rounds is reported, with the ratio to
optfit adamw.

Part 2 — end to end: ``optfit.bench.runner.run_trial`` on each ``--e2e`` workload with identical
hyperparameters (lr 3e-3, weight decay 0.01, warmup 2 % + cosine, seed 0) for adamw, gap-adamw (default impl,
i.e. flat) and gap-adamw ``impl="reference"``, repeated ``--repeats`` times interleaved; reported: the median
training wall time (``train_seconds``: forward, backward and step; evaluation excluded), the median optimizer
time and share, the ratio of median training times to adamw's, and — less sensitive to the other jobs on a
shared machine — the same ratio with the non-optimizer time pooled over all
runs of the workload: (f/b + optimizer) ÷ (f/b + adamw's optimizer). The showdown's ``GradientStats`` probe
is left out unless ``--probe``: it runs off the clock, but its memory traffic still slows the step after it.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gap_step.py [--models w10-digits,w5-cnn1d,w6-charlm,w3-mlp]
        [--stack] [--rounds 9] [--steps 20] [--e2e w10-digits,w5-cnn1d,w6-charlm] [--repeats 3] [--probe]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import optfit
from optfit.bench.records import TrialSpec
from optfit.bench.runner import run_trial
from optfit.bench.workloads import get_workload


def stack_params(d: int = 256, blocks: int = 10, vocab: int = 1024) -> list[torch.Tensor]:
    """A pre-LN transformer's parameter list: embedding, then per block qkv, proj, 2 LayerNorms and a 4d MLP."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(vocab, d)]
    for _ in range(blocks):
        shapes += [(3 * d, d), (3 * d,), (d, d), (d,), (d,), (d,), (d,), (d,), (4 * d, d), (4 * d,), (d, 4 * d), (d,)]
    return [torch.randn(s, generator=gen).mul_(0.02).requires_grad_() for s in shapes]


def model_params(name: str) -> list[torch.Tensor]:
    wl = get_workload(name)
    wl.prepare()
    return list(wl.build_model(0).parameters())


def with_grads(params: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype).mul_(1e-3)
    return params


def candidates(make_params: Callable[[], list[torch.Tensor]]) -> dict[str, Callable[[], None]]:
    out = {}
    out["torch AdamW foreach"] = torch.optim.AdamW(with_grads(make_params()), lr=1e-3, foreach=True).step
    out["optfit adamw"] = optfit.create_optimizer(with_grads(make_params()), "adamw", lr=1e-3).step
    for label, kw in [("gap-adamw reference", {"impl": "reference"}), ("gap-adamw flat", {"impl": "flat"}),
                      ("gap-adamw flat per_param", {"impl": "flat", "mode": "per_param"})]:
        out[label] = optfit.create_optimizer(with_grads(make_params()), "gap-adamw", lr=1e-3, **kw).step
    return out


def time_steps(steps: dict[str, Callable[[], None]], rounds: int, n: int) -> dict[str, tuple[float, float]]:
    """Median (wall, CPU) seconds per step of each candidate; CPU time (this thread's) is less disturbed by
    the other jobs on a shared machine than wall time."""
    for step in steps.values():  # warm-up: state creation, allocator
        for _ in range(3):
            step()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for _ in range(rounds):
        for label, step in steps.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(n):
                step()
            times[label].append(((time.perf_counter() - t0) / n, (time.thread_time() - c0) / n))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()}


def part1(models: list[str], stack: bool, rounds: int, n: int) -> None:
    print("\n## Optimizer step (median wall ms over interleaved rounds; ratio to optfit adamw, wall / CPU)\n")
    labels = list(candidates(lambda: [torch.zeros(1, requires_grad=True)]))
    print("| model | tensors | params | " + " | ".join(labels) + " |")
    print("|---|---|---|" + "---|" * len(labels))
    jobs = [(m, (lambda m=m: model_params(m))) for m in models]
    if stack:
        jobs.append(("transformer stack", stack_params))
    for name, make in jobs:
        ps = make()
        med = time_steps(candidates(make), rounds, n)
        base_w, base_c = med["optfit adamw"]
        cells = [f"{1e3 * med[k][0]:.3g} ({med[k][0] / base_w:.2f}× / {med[k][1] / base_c:.2f}×)" for k in labels]
        print(f"| {name} | {len(ps)} | {sum(p.numel() for p in ps):,} | " + " | ".join(cells) + " |", flush=True)


def part2(workloads: list[str], repeats: int, max_steps: int | None, probe: bool = False) -> None:
    print("\n## End to end (run_trial; median over interleaved repeats)\n")
    print("| workload | steps | member | train s | optimizer s | optimizer share | train ÷ adamw | "
          "(f/b + optimizer) ÷ adamw's |")
    print("|---|---|---|---|---|---|---|---|")
    members = [("adamw", "adamw", {}), ("gap-adamw (flat)", "gap-adamw", {}),
               ("gap-adamw reference", "gap-adamw", {"impl": "reference"})]
    for w in workloads:
        res: dict[str, list] = {label: [] for label, *_ in members}
        for _ in range(repeats):
            for label, name, extra in members:
                spec = TrialSpec(workload=w, optimizer=name, hparams={"lr": 3e-3, "weight_decay": 0.01, **extra},
                                 seed=0, schedule={"kind": "warmup_cosine", "warmup": 0.02})
                r = run_trial(spec, eval_at_start=False, max_steps=max_steps, gradient_probe=probe)
                if r.status != "done":
                    raise RuntimeError(f"{w} {label}: {r.status} {r.error}")
                res[label].append(r)
        base = statistics.median(r.train_seconds for r in res["adamw"])
        # forward + backward (+ scheduler) is the same work for every member: pool it over all runs, so that the
        # last column compares optimizer time only, against the noise of the shared machine
        rest = statistics.median(r.train_seconds - r.optimizer_seconds for rs in res.values() for r in rs)
        base_opt = statistics.median(r.optimizer_seconds for r in res["adamw"])
        for label, *_ in members:
            train = statistics.median(r.train_seconds for r in res[label])
            opt = statistics.median(r.optimizer_seconds for r in res[label])
            print(f"| {w} | {res[label][0].steps} | {label} | {train:.2f} | {opt:.2f} | {opt / train:.0%} | "
                  f"{train / base:.3f} | {(rest + opt) / (rest + base_opt):.3f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="w10-digits,w5-cnn1d,w6-charlm,w3-mlp")
    parser.add_argument("--stack", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--e2e", default="w10-digits,w5-cnn1d,w6-charlm")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=None, help="cap each trial (default: the workload's)")
    parser.add_argument("--probe", action=argparse.BooleanOptionalAction, default=False,
                        help="attach the showdown's GradientStats probe to the gap trials (off: time the optimizer alone)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = [m for m in args.models.split(",") if m]
    if models or args.stack:
        part1(models, args.stack, args.rounds, args.steps)
    e2e = [w for w in args.e2e.split(",") if w]
    if e2e:
        part2(e2e, args.repeats, args.max_steps, args.probe)


if __name__ == "__main__":
    main()
