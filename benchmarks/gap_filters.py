"""The gap selector over other filter families (issue 3 §2): Grokfast (α, λ) pre-filters and AdamW's β₂.

For each workload and seed, every run with the same lr (gap_vs_sweep.py's per-workload AdamW lr), β₁ 0.9, weight
decay 0.01 and warmup 2 % + cosine:

- **grokfast**: AdamW with each fixed Grokfast EMA filter of the candidate set — (0.98, 0) is plain AdamW,
  (0.98, 2) and (0.9, 2) are ``grad_filter=grokfast_ema(α, λ)`` — against gap-grokfast choosing among
  them:
  ``published`` (current-gradient score, hysteresis 10), ``next`` (next-gradient score, score EMA 0.9) and
  ``shared`` (one second moment of the raw gradient instead of one per candidate).
- **beta2**: AdamW with β₂ fixed at 0.95, 0.99, 0.999 against gap-adamw-beta2 (``published`` and ``next``).

Plain AdamW (β₂ 0.999, no filter) is one run shared by both families. Reported per workload: the median (over
seeds) final validation metric of every member, whether each gap variant is within noise of the best fixed member
(no worse than its median by more than the noise: the larger of that member's seed spread, max − min, and the
median spread of the fixed members — two seeds often give the best member a spread of 0) and whether it beats the
median fixed member, and the share of steps each candidate was chosen (mean over seeds). Steps and metrics do not
depend on the machine's load; seconds do.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gap_filters.py --workers 1 [--workloads w10-digits,...]
        [--seeds 2] [--families grokfast,beta2] [--db out/gap_filters.sqlite] [--report]

``--report`` prints the tables from the finished trials in the database without running anything.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from optfit.bench.records import TrialSpec
from optfit.bench.runner import run_experiment
from optfit.bench.storage import ResultsDB
from optfit.bench.workloads import get_workload

from gap_vs_sweep import LR, SCHEDULE, final_value

# the quick-suite workloads of gap_vs_sweep.py that fit ~25 min on one core (add w1-logreg for ≈ 25 min more)
WORKLOADS = ("w10-digits", "w9-noisy-quadratic", "w7-lstm", "w5-cnn1d")
FILTERS = ((0.98, 0.0), (0.98, 2.0), (0.9, 2.0))
BETA2 = (0.95, 0.99, 0.999)
COMMON = {"weight_decay": 0.01}
GAP_VARIANTS = {
    "grokfast": {"published": {"second_moment": "per_candidate"},
                 "next": {"second_moment": "per_candidate", "score": "next", "score_ema": 0.9},
                 "shared": {"second_moment": "shared"}},
    "beta2": {"published": {"score": "current", "score_ema": 0.0}, "next": {"score": "next", "score_ema": 0.9}},
}
PLAIN = "adamw(b2=0.999)"  # = the (0.98, 0) filter member = the β₂ 0.999 member


def _filter_label(a, lam):
    return PLAIN if lam == 0 else f"adamw+grokfast({a:g},{lam:g})"


def members(family):
    """[(label, optimizer, extra hparams)] of one family: fixed members first, then gap variants; plus, per gap
    label, the candidate → member label map used for the shares."""
    if family == "grokfast":
        fixed = [(_filter_label(a, lam), "adamw", {"betas": (0.9, 0.999)} if lam == 0 else
                  {"betas": (0.9, 0.999), "grad_filter": {"kind": "ema", "alpha": a, "lamb": lam}})
                 for a, lam in FILTERS]
        gap = [(f"gap-grokfast[{v}]", "gap-grokfast", {"filter_candidates": [list(f) for f in FILTERS], **kw})
               for v, kw in GAP_VARIANTS["grokfast"].items()]
    else:
        fixed = [(f"adamw(b2={b:g})", "adamw", {"betas": (0.9, b)}) for b in BETA2]
        gap = [(f"gap-adamw-beta2[{v}]", "gap-adamw-beta2", {"beta2_candidates": BETA2, "beta1": 0.9, **kw})
               for v, kw in GAP_VARIANTS["beta2"].items()]
    return fixed, gap


def build_specs(workloads, seeds, families):
    out, seen = [], set()
    for w in workloads:
        for fam in families:
            fixed, gap = members(fam)
            for label, opt, hp in fixed + gap:
                for s in range(seeds):
                    spec = TrialSpec(workload=w, optimizer=opt, hparams={"lr": LR.get(w, 1e-3), **COMMON, **hp},
                                     seed=s, protocol="sweep", label=label, schedule=SCHEDULE)
                    if spec.key() not in seen:
                        seen.add(spec.key())
                        out.append(spec)
    return out


def _shares(results):
    """Mean over seeds of the fraction of steps each candidate was chosen (group-averaged gap_stats)."""
    rows = []
    for r in results:
        stats = r.extras.get("gap_stats") or []
        if stats:
            k = len(stats[0]["fraction"])
            rows.append([statistics.fmean(g["fraction"][j] for g in stats) for j in range(k)])
    return [statistics.fmean(col) for col in zip(*rows)] if rows else []


def summarise(results, workloads, family):
    fixed, gap = members(family)
    fixed_labels, gap_labels = [lab for lab, *_ in fixed], [lab for lab, *_ in gap]
    cand_names = [f"({a:g},{lam:g})" for a, lam in FILTERS] if family == "grokfast" else [f"{b:g}" for b in BETA2]
    by = defaultdict(list)
    for r in results:
        by[(r.spec.workload, r.spec.label)].append(r)
    lines = ["| workload (metric) | " + " | ".join(fixed_labels + gap_labels) + " | shares of steps per gap variant |",
             "|---|" + "---|" * (len(fixed_labels) + len(gap_labels) + 1)]
    tally = {lab: [0, 0, 0] for lab in gap_labels}  # within noise, beats median, workloads
    for w in workloads:
        wl = get_workload(w)
        sign = 1.0 if wl.higher_is_better else -1.0
        med, spread = {}, {}
        for lab in fixed_labels + gap_labels:
            vals = [v for v in (final_value(r, wl.metric) for r in by.get((w, lab), [])) if v is not None]
            if vals:
                med[lab], spread[lab] = statistics.median(vals), max(vals) - min(vals)
        have = [lab for lab in fixed_labels if lab in med]
        if not have:
            continue
        best = max(have, key=lambda lab: sign * med[lab])
        median_fixed = statistics.median(sign * med[lab] for lab in have)
        # two seeds make the best member's own spread a poor noise estimate (often 0 on accuracy): use the larger of
        # it and the median spread of the fixed members, plus a rounding margin
        noise = max(spread[best], statistics.median(spread[lab] for lab in have)) + 1e-12 * abs(med[best])
        cells = []
        for lab in fixed_labels + gap_labels:
            if lab not in med:
                cells.append("—")
                continue
            cell = f"{med[lab]:.4g}"
            if lab == best:
                cell = f"**{cell}**"
            if lab in gap_labels:
                within = sign * med[lab] >= sign * med[best] - noise
                beats = sign * med[lab] > median_fixed
                tally[lab][0] += within
                tally[lab][1] += beats
                tally[lab][2] += 1
                cell += (" ≈" if within else " ✗") + (" >med" if beats else "")
            cells.append(cell)
        shares = []
        for lab in gap_labels:
            sh = _shares(by.get((w, lab), []))
            if sh:
                shares.append(lab.split("[")[1].rstrip("]") + ": " +
                              ", ".join(f"{c} {100 * x:.0f}%" for c, x in zip(cand_names, sh)))
        lines.append(f"| {w} ({wl.metric}) | " + " | ".join(cells) + " | " + "; ".join(shares) + " |")
    lines.append("")
    lines.append("(median of the seeds' final values; **best fixed**; ≈ within noise of the best fixed member, "
                 "✗ worse; >med better than the median fixed member; noise = max(best member's seed spread, median "
                 "spread of the fixed members))")
    for lab, (within, beats, n) in tally.items():
        lines.append(f"- {lab}: within noise of the best fixed member on {within}/{n} workloads; beats the median "
                     f"fixed member on {beats}/{n}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--families", default="grokfast,beta2")
    parser.add_argument("--db", default="out/gap_filters.sqlite")
    parser.add_argument("--report", action="store_true", help="only print the tables from finished trials")
    args = parser.parse_args()
    workloads = [w for w in args.workloads.split(",") if w]
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in GAP_VARIANTS]
    if bad:
        parser.error(f"--families: unknown {bad}; choose from {list(GAP_VARIANTS)}")
    todo = build_specs(workloads, args.seeds, families)
    keys = {s.key() for s in todo}
    if args.report:
        with ResultsDB(args.db) as db:
            finished = db.results("gap-filters")
    else:
        finished = run_experiment(todo, args.db, "gap-filters", workers=args.workers)
    results = [r for r in finished if r.spec.key() in keys]
    for fam in families:
        print(f"\n## {fam}\n")
        print(summarise(results, workloads, fam))


if __name__ == "__main__":
    main()
