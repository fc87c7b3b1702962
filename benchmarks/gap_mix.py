"""Does gap-mix beat its best single member? (issue 3, part 2)

For each workload and seed: gap-mix choosing per tensor among ("adam", "sign", "orthogonal") against gap-mix
restricted to each single rule — the same unit-RMS step size (lr = 0.3 × the workload's AdamW lr of
gap_vs_sweep.py, about AdamW's own update RMS), warmup + cosine, weight decay 0.01. Prints the median final
validation metric per member, the best single member, and whether the mix is within noise of it or better.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gap_mix.py [--workloads ...] [--seeds 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from optfit.bench.records import TrialSpec
from optfit.bench.runner import run_experiment
from optfit.bench.workloads import get_workload

from gap_vs_sweep import LR, SCHEDULE

RULES = ("adam", "sign", "orthogonal")
WORKLOADS = ("w10-digits", "w1-logreg-smoke", "w9-noisy-quadratic", "w7-lstm", "w2-softmax")


def specs(workloads, seeds):
    out = []
    for w in workloads:
        lr = 0.3 * LR.get(w, LR.get(w.replace("-smoke", ""), 1e-3))
        members = [("gap-mix[" + ",".join(RULES) + "]", RULES)] + [(f"gap-mix[{r}]", (r,)) for r in RULES]
        for label, rules in members:
            for s in range(seeds):
                out.append(TrialSpec(workload=w, optimizer="gap-mix", hparams={"lr": lr, "rules": rules}, seed=s,
                                     protocol="fixed", label=label, schedule=SCHEDULE))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--db", default="out/gap_mix.sqlite")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    todo = specs(workloads, args.seeds)
    keys = {s.key() for s in todo}
    results = [r for r in run_experiment(todo, args.db, "gap-mix", workers=args.workers) if r.spec.key() in keys]
    by = defaultdict(list)
    for r in results:
        by[(r.spec.workload, r.spec.label)].append(r)
    print("\n| workload | metric | member | median final | spread | selection at the end (first seed) |")
    print("|---|---|---|---|---|---|")
    verdicts = []
    for w in workloads:
        wl = get_workload(w)
        sign = 1 if wl.higher_is_better else -1
        med = {}
        for (ww, label), rs in sorted(by.items()):
            if ww != w:
                continue
            vals = [r.final_metrics.get(wl.metric) for r in rs if r.status == "done"]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            med[label] = (statistics.median(vals), max(vals) - min(vals))
            sel = rs[0].extras.get("selection", [[None, None]])[-1][1] if rs[0].extras else None
            print(f"| {w} | {wl.metric} | {label} | {med[label][0]:.4g} | {med[label][1]:.2g} | {sel} |")
        singles = {k: v for k, v in med.items() if "," not in k}
        mix = next((v for k, v in med.items() if "," in k), None)
        if singles and mix:
            best = max(singles, key=lambda k: sign * singles[k][0])
            ok = sign * mix[0] >= sign * singles[best][0] - singles[best][1]
            verdicts.append((w, best, ok, sign * (mix[0] - singles[best][0]) > 0))
    print()
    for w, best, ok, better in verdicts:
        print(f"- {w}: best single member {best}; mix {'better than' if better else 'within noise of' if ok else 'worse than'} it")


if __name__ == "__main__":
    main()
