"""Does the LR–batch-size rule keep the final metric constant? (issue 13, part 2)

For each workload, optimizer and batch size B ∈ {B₀/4, B₀/2, B₀, 2B₀} (B₀ = the workload's own batch size) the
run sees the same number of samples as the reference run (steps = max_steps·B₀/B, the schedule's horizon and the
evaluation period scaled alike) and uses

- ``scaled``: lr = ``optfit.schedules.scale_lr(lr₀, B, B₀, rule=<optimizer name>)`` — the registry picks the rule
  (square root for AdamW, linear for SGD, arXiv 2006.09092);
- ``fixed``: lr = lr₀ at every batch size (the control: what not scaling does).

lr₀ is tuned AdamW's lr from ``tuned.json`` for AdamW and ``SELF_SETTINGS``' SGD lr for SGD — not tuned here, and
the same warmup-cosine schedule for both. Printed per (workload, optimizer, variant): the median final metric over
seeds at each batch size and its spread across batch sizes (max − min); the rule "keeps the metric constant" where
the scaled spread is smaller than the fixed one.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lr_batch_scaling.py [--workloads w10-digits,w5-cnn1d]
        [--optimizers adamw,sgd] [--seeds 2] [--workers 2]

Trials run in worker processes with one thread each (never more than the usable cores); steps and metrics do not
depend on machine load.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
from collections import defaultdict

from optfit.bench.records import TrialSpec
from optfit.bench.runner import run_trial, usable_cpus
from optfit.bench.showdown import SCHEDULE, SELF_SETTINGS, load_tuned
from optfit.bench.workloads import get_workload
from optfit.schedules import scale_lr

FACTORS = (0.25, 0.5, 1.0, 2.0)


def base_hparams(workload: str, optimizer: str) -> dict:
    if optimizer == "adamw":
        hp = dict(load_tuned()["workloads"][workload]["hparams"])
        hp["betas"] = tuple(hp["betas"])
        return hp
    if optimizer == "sgd":
        return dict(SELF_SETTINGS["sgd"])
    raise ValueError(f"--optimizers: no base setting for {optimizer!r} (adamw or sgd)")


def one_trial(job: tuple) -> tuple:
    workload_name, optimizer, variant, factor, seed = job
    wl = get_workload(workload_name)
    b0 = wl.batch_size
    b = max(1, int(round(b0 * factor)))
    scale = b0 / b
    wl.batch_size = b
    wl.max_steps = int(round(wl.max_steps * scale))
    wl.step_hint = int(round(wl.step_hint * scale))
    wl.eval_every = max(1, int(round(wl.eval_every * scale)))
    hp = base_hparams(workload_name, optimizer)
    if variant == "scaled":
        hp["lr"] = scale_lr(hp["lr"], b, b0, rule=optimizer)
    spec = TrialSpec(workload=workload_name, optimizer=optimizer, hparams=hp, seed=seed, protocol="fixed",
                     label=f"{optimizer}[{variant}]", schedule=dict(SCHEDULE))
    result = run_trial(spec, wl, gradient_probe=False)
    final = result.final_metrics.get(wl.metric) if result.status == "done" else None
    return job, b, hp["lr"], final, result.status


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="w10-digits,w5-cnn1d")
    ap.add_argument("--optimizers", default="adamw,sgd")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    workloads, optimizers = args.workloads.split(","), args.optimizers.split(",")
    jobs = [(w, o, v, f, s) for w in workloads for o in optimizers for v in ("scaled", "fixed") for f in FACTORS
            for s in range(args.seeds) if not (v == "fixed" and f == 1.0)]
    jobs += [(w, o, "fixed", 1.0, s) for w in workloads for o in optimizers for s in range(args.seeds)]
    workers = max(1, min(args.workers, usable_cpus()))
    results = defaultdict(list)
    lrs, sizes = {}, {}
    with mp.get_context("fork").Pool(workers, maxtasksperchild=1) as pool:
        for job, b, lr, final, status in pool.imap_unordered(one_trial, jobs):
            w, o, v, f, s = job
            results[(w, o, v, f)].append(final)
            lrs[(w, o, v, f)], sizes[(w, f)] = lr, b
            print(f"  {w} {o}[{v}] B={b} lr={lr:.3g} seed {s}: {status} final={final}", flush=True)
    # the reference run (B₀) is shared by both variants
    for w in workloads:
        for o in optimizers:
            results[(w, o, "scaled", 1.0)] = results[(w, o, "fixed", 1.0)]
            lrs[(w, o, "scaled", 1.0)] = lrs[(w, o, "fixed", 1.0)]
    print()
    head = " | ".join(f"B={sizes[(workloads[0], f)]}" if len(workloads) == 1 else f"B₀×{f:g}" for f in FACTORS)
    print(f"| workload | optimizer | lr rule | {head} | spread (max − min) |")
    print("|---|---|---|" + "---|" * len(FACTORS) + "---|")
    for w in workloads:
        metric = get_workload(w).metric
        for o in optimizers:
            for v in ("scaled", "fixed"):
                meds = []
                cells = []
                for f in FACTORS:
                    vals = [x for x in results[(w, o, v, f)] if x is not None]
                    med = statistics.median(vals) if len(vals) == len(results[(w, o, v, f)]) and vals else None
                    meds.append(med)
                    cells.append("diverged" if med is None else f"{med:.4g} (lr {lrs[(w, o, v, f)]:.3g})")
                ok = [m for m in meds if m is not None]
                spread = f"{max(ok) - min(ok):.4g}" if len(ok) == len(meds) else "—"
                print(f"| {w} ({metric}) | {o} | {v} | " + " | ".join(cells) + f" | {spread} |")


if __name__ == "__main__":
    main()
