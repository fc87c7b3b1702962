"""One gap run against the fixed-β sweep over the same candidates (issue 3, part 4).

For each workload and seed: AdamW with β₁ fixed at each candidate, and gap-adamw variants choosing among the
same candidates — all with the same lr, β₂, weight decay and warmup+cosine schedule. Reported per workload:
median (over seeds) final validation metric and steps to target of each member, whether each gap variant is
"within noise" of the best fixed β (its median is no worse than the best fixed β's median by more than the
best member's seed spread, max − min, or it is better), and whether it beats the median fixed β.

Results go to a resumable SQLite database (re-running skips finished trials); trials run in worker
processes with one thread each. Steps and metrics do not depend on machine load; seconds do.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gap_vs_sweep.py [--workloads w1-logreg,w3-mlp,...]
        [--seeds 3] [--workers 2] [--db out/gap_vs_sweep.sqlite] [--variants published,ema,next]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from optfit.bench.protocols import sweep_vs_gap
from optfit.bench.runner import run_experiment
from optfit.bench.workloads import get_workload

WORKLOADS = ("w1-logreg", "w3-mlp", "w5-cnn1d", "w6-charlm", "w7-lstm", "w9-noisy-quadratic", "w10-digits")
# one lr per workload for every member (AdamW's usual scale for the task); not tuned per member
LR = {"w1-logreg": 1e-2, "w2-softmax": 1e-3, "w3-mlp": 1e-3, "w4-cnn": 1e-3, "w5-cnn1d": 3e-3, "w6-charlm": 3e-3,
      "w7-lstm": 3e-3, "w8-autoencoder": 1e-3, "w9-noisy-quadratic": 1e-2, "w10-digits": 3e-3}
VARIANTS = {
    "published": {},                                  # the rule as published: score ⟨g_t, u_t⟩, hysteresis 10
    "ema": {"score_ema": 0.9},                        # the recipe for noisy small batches
    "next": {"score": "next", "score_ema": 0.9},      # scored against the next, independent gradient
    "per_param": {"mode": "per_param", "score_ema": 0.9},
}
BETAS = (0.5, 0.9, 0.99)
SCHEDULE = {"kind": "warmup_cosine", "warmup": 0.02}


def build_specs(workloads, seeds, variants):
    specs = []
    for w in workloads:
        for i, v in enumerate(variants):
            members = sweep_vs_gap([w], base="adamw", gap="gap-adamw", betas=BETAS, lr=LR.get(w, 1e-3), seeds=seeds,
                                   hparams={"weight_decay": 0.01}, schedule=SCHEDULE, gap_hparams=VARIANTS[v])
            for s in members:
                if s.optimizer == "gap-adamw":
                    s.label = f"gap-adamw[{v}]"
                    specs.append(s)
                elif i == 0:
                    specs.append(s)
    return specs


def final_value(result, metric):
    return result.final_metrics.get(metric) if result.status == "done" else None


def summarise(results, workloads):
    by = defaultdict(list)
    for r in results:
        by[(r.spec.workload, r.spec.label)].append(r)
    wins, beats_median, rows = defaultdict(int), defaultdict(int), []
    labels = sorted({lab for _, lab in by})
    gap_labels = [lab for lab in labels if lab.startswith("gap")]
    fixed_labels = [lab for lab in labels if not lab.startswith("gap")]
    for w in workloads:
        wl = get_workload(w)
        sign = 1.0 if wl.higher_is_better else -1.0
        med, spread, steps = {}, {}, {}
        for lab in labels:
            vals = [final_value(r, wl.metric) for r in by.get((w, lab), [])]
            vals = [v for v in vals if v is not None]
            if not vals:
                continue
            med[lab], spread[lab] = statistics.median(vals), max(vals) - min(vals)
            st = [r.steps_to_target for r in by[(w, lab)] if r.steps_to_target is not None]
            steps[lab] = (statistics.median(st) if st else None, len(st), len(by[(w, lab)]))
        fixed = [lab for lab in fixed_labels if lab in med]
        if not fixed:
            continue
        best = max(fixed, key=lambda lab: sign * med[lab])
        median_fixed = statistics.median(sign * med[lab] for lab in fixed)
        for lab in labels:
            if lab not in med:
                continue
            note = ""
            if lab in gap_labels:
                within = sign * med[lab] >= sign * med[best] - spread[best]
                better_median = sign * med[lab] > median_fixed
                wins[lab] += within
                beats_median[lab] += better_median
                note = ("within noise of best" if within else "worse than best") + \
                       (", beats median fixed" if better_median else ", below median fixed")
            elif lab == best:
                note = "best fixed β"
            s_med, n_hit, n = steps[lab]
            rows.append((w, wl.metric, lab, med[lab], spread[lab], s_med, f"{n_hit}/{n}", note))
    return rows, wins, beats_median, len({r[0] for r in rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--db", default="out/gap_vs_sweep.sqlite")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    variants = [v for v in args.variants.split(",") if v]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        parser.error(f"--variants: unknown {bad}; choose from {list(VARIANTS)}")
    specs = build_specs(workloads, args.seeds, variants)
    results = run_experiment(specs, args.db, "gap-vs-sweep", workers=args.workers)
    results = [r for r in results if r.spec.key() in {s.key() for s in specs}]
    rows, wins, beats, n_w = summarise(results, workloads)
    print("\n| workload | metric | member | median final | seed spread | median steps to target | reached | note |")
    print("|---|---|---|---|---|---|---|---|")
    for w, metric, lab, m, sp, st, hit, note in rows:
        print(f"| {w} | {metric} | {lab} | {m:.4g} | {sp:.2g} | {'-' if st is None else int(st)} | {hit} | {note} |")
    print(f"\nSummary over {n_w} workloads, {args.seeds} seeds each (target: within noise of the best fixed β on "
          "≥ 80 % of workloads, and better than the median fixed β overall):")
    for lab in sorted(wins):
        print(f"- {lab}: within noise of the best fixed β on {wins[lab]}/{n_w}; beats the median fixed β on "
              f"{beats[lab]}/{n_w}")


if __name__ == "__main__":
    main()
