"""The learning-rate-free optimizers in the showdown (issue 13, part 4; issue 14's proof of ``auto``): the
self-tuning ruleset on a suite.

Entries: ``auto`` (given the workload's step hint as ``total_steps``, as the runner does for every optimizer that
takes it), each learning-rate-free optimizer at its registry defaults (Schedule-Free and DoG at a constant multiplier,
Prodigy and D-Adaptation with the showdown's warmup + cosine: ``showdown.SELF_CONSTANT``), tuned AdamW with its
tuned warmup-cosine schedule (``adamw-tuned``) and with the same hyperparameters at a constant lr
(``adamw-tuned-constant``: not re-tuned for the constant schedule, so an upper bound on what a constant-lr sweep
gives), AdamW at its defaults, Celo (when its weights are available, also given ``total_steps``) and gap-adamw. Everything goes to one
resumable SQLite database; the leaderboard and the HTML report are the showdown's own.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lr_free_showdown.py [--suite quick] [--seeds 3] [--workers 2]
        [--db out/lr_free.sqlite] [--out out/lr_free] [--optimizers a,b,...] [--workloads w3-mlp,...]
"""

from __future__ import annotations

import argparse
import dataclasses

from optfit import list_optimizers
from optfit.bench.cli import _report
from optfit.bench.runner import run_experiment
from optfit.bench.showdown import BASELINE, build_specs, suite_workloads, tuned_specs

LR_FREE = ("auto", "schedule-free-sgd", "schedule-free-adamw", "schedule-free-radam", "prodigy", "dadapt-adam",
           "dadapt-sgd", "dog")
ANCHORS = ("adamw", "gap-adamw", "celo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="quick")
    ap.add_argument("--workloads", default="", help="comma-separated workloads instead of --suite")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--db", default="out/lr_free.sqlite")
    ap.add_argument("--experiment", default="lr_free")
    ap.add_argument("--out", default="out/lr_free")
    ap.add_argument("--optimizers", default="", help="default: the learning-rate-free names and the anchors")
    args = ap.parse_args()
    known = set(list_optimizers())
    names = args.optimizers.split(",") if args.optimizers else [n for n in LR_FREE + ANCHORS if n in known]
    if "celo" in names:
        try:
            from optfit.learned import celo as _celo  # noqa: F401
            import optfit
            optfit.create_optimizer([__import__("torch").zeros(2, requires_grad=True)], "celo")
        except Exception as exc:  # noqa: BLE001 - no weights here: leave Celo out and say so
            print(f"celo left out: {exc}")
            names.remove("celo")
    workloads = args.workloads.split(",") if args.workloads else suite_workloads(args.suite)
    seeds = list(range(args.seeds))
    specs = build_specs(workloads, names + [BASELINE], "self", args.seeds)
    specs += [dataclasses.replace(s, schedule=None, label="adamw-tuned-constant") for s in tuned_specs(workloads, seeds)]
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/lr_free_showdown.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in ("", None))
    results = run_experiment(specs, args.db, args.experiment, workers=args.workers, command=command)
    keys = {s.key() for s in specs}
    _report([r for r in results if r.spec.key() in keys], args.out, BASELINE)


if __name__ == "__main__":
    main()
