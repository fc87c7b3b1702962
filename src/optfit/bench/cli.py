"""``optfit bench run | report | tune``: the showdown from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..registry import list_optimizers


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (recorded with results, tuned settings and targets)."""
    argv = getattr(args, "argv", None)
    return "optfit " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _workload_names(args: argparse.Namespace) -> list[str]:
    from .showdown import suite_workloads

    names = suite_workloads(args.suite) if args.suite else []
    names += _csv(args.workloads) if getattr(args, "workloads", "") else []
    names += list(args.workload or [])
    if not names:
        raise ValueError("give --suite, --workloads or --workload")
    from .workloads import get_workload

    for n in names:
        get_workload(n)  # ValueError listing the choices, or naming the module:Class that failed
    return list(dict.fromkeys(names))


def _report(results, out: str, baseline: str) -> None:
    from .report import leaderboard_text, write_report
    from .showdown import workloads_meta
    from .summary import summarize

    meta = workloads_meta(r.spec.workload for r in results)
    summary = summarize(results, meta, baseline)
    print(leaderboard_text(summary))
    path = write_report(results, meta, out, baseline=baseline)
    print(f"report: {path}")


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_experiment
    from .showdown import BASELINE, build_specs

    workloads = _workload_names(args)
    optimizers = _csv(args.optimizers)
    valid = set(list_optimizers()) | {BASELINE}
    bad = [o for o in optimizers if o not in valid]
    if bad or not optimizers:
        raise ValueError(f"--optimizers: unknown {', '.join(bad) or '(none given)'}; choose from "
                         f"{', '.join(sorted(valid))}")
    hparams = json.loads(args.hparams) if args.hparams else None
    specs = build_specs(workloads, optimizers, args.protocol, args.seeds, hparams)
    command = _command(args)
    results = run_experiment(specs, args.db, args.experiment, workers=args.workers, command=command,
                             progress=not args.quiet)
    keys = {s.key() for s in specs}
    _report([r for r in results if r.spec.key() in keys], args.out, BASELINE)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .storage import ResultsDB

    if not Path(args.db).exists():
        raise ValueError(f"--db: {args.db} does not exist (run `optfit bench run --db {args.db} ...` first)")
    with ResultsDB(args.db) as db:
        results = db.results(args.experiment)
    if not results:
        raise ValueError(f"--db: no finished trials in experiment {args.experiment!r} of {args.db}")
    _report(results, args.out, args.baseline)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from . import protocols
    from .runner import run_experiment
    from .showdown import TUNED_PATH, load_tuned, tuned_from_results

    workloads = _workload_names(args)
    specs = protocols.external_tuning(workloads, "adamw", trials=args.trials, studies=args.studies)
    command = _command(args)
    results = run_experiment(specs, args.db, "tune-adamw", workers=args.workers, command=command)
    asked = set(workloads)  # the experiment may hold other workloads' trials: their entries stay as they are
    found = tuned_from_results([r for r in results if r.spec.workload in asked], command)
    out = Path(args.tuned) if args.tuned else TUNED_PATH
    merged = load_tuned(out)
    merged.update({k: v for k, v in found.items() if k != "workloads"})
    merged["workloads"] = {**merged.get("workloads", {}), **found["workloads"]}
    if len({w.get("command") for w in merged["workloads"].values()}) > 1:
        merged["command"] = "per workload: see each entry's command"  # a partial re-tune keeps the others
    out.write_text(json.dumps(merged, indent=1, sort_keys=True) + "\n")
    for w, entry in found["workloads"].items():
        print(f"{w}: {entry['hparams']}  steps to target {entry['steps_to_target']}  final {entry['final']}")
    print(f"written: {out}")
    return 0


def _cmd_targets(args: argparse.Namespace) -> int:
    """AlgoPerf-style targets: rerun tuned AdamW with ``--seeds`` seeds; target = median over seeds of the best
    validation metric each run reached. Writes a new version of targets.json (the old one stays in git)."""
    import statistics

    from .runner import run_experiment
    from .showdown import load_tuned, tuned_specs
    from .workloads import _common, get_workload

    workloads = []
    for w in _workload_names(args):
        wl = get_workload(w)
        if wl.target_is_defined:
            print(f"{w}: target {wl.metric} {wl.target:g} is part of the task's definition; kept")
        else:
            workloads.append(w)
    command = _command(args)
    results = []
    if workloads:
        specs = tuned_specs(workloads, range(args.seeds), load_tuned(args.tuned) if args.tuned else None)
        results = run_experiment(specs, args.db, "targets", workers=args.workers, command=command)
    path = Path(args.targets) if args.targets else _common.TARGETS_PATH
    doc = json.loads(path.read_text())
    for w in workloads:
        wl = get_workload(w)
        best = []
        for r in results:
            if r.spec.workload != w or r.status != "done":
                continue
            values = [pt.metrics[wl.metric] for pt in r.curve if wl.metric in pt.metrics]
            if values:
                best.append(max(values) if wl.higher_is_better else min(values))
        if len(best) < args.seeds:
            raise ValueError(f"{w}: only {len(best)} of {args.seeds} tuned runs finished; target not changed")
        target = float(statistics.median(best))
        doc["workloads"][w] = {"metric": wl.metric, "higher_is_better": wl.higher_is_better,
                               "target": target,  # unrounded: rounding would move it past the median run
                               "source": f"median over {args.seeds} seeds of tuned AdamW's best {wl.metric} "
                                         f"(`{command}`)"}
        print(f"{w}: target {wl.metric} {'>=' if wl.higher_is_better else '<='} {target:.6g} "
              f"(seed bests {', '.join(f'{b:.4g}' for b in best)})")
    doc["version"] = int(doc.get("version", 1)) + 1 if not args.same_version else doc.get("version", 1)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"written: {path} (version {doc['version']}; set TARGETS_VERSION in workloads/_common.py to match)")
    return 0


def _selection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", default="", help="smoke, quick or full")
    p.add_argument("--workloads", default="", help="comma-separated built-in workload names")
    p.add_argument("--workload", action="append", help="a user workload as package.module:ClassName (repeatable)")
    p.add_argument("--db", default="out/showdown.sqlite", help="results database (SQLite; resumable)")
    p.add_argument("--workers", type=int, default=None, help="trial processes (default: one per CPU)")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    p_bench = subparsers.add_parser("bench", help="run the showdown and write its report")
    sub = p_bench.add_subparsers(dest="bench_command", required=True)
    p_run = sub.add_parser("run", help="run trials (resumes), print the leaderboard, write the HTML report")
    _selection_args(p_run)
    p_run.add_argument("--optimizers", default="adamw-tuned,adamw,gap-adamw",
                       help="comma-separated registry names; adamw-tuned = the tuned AdamW baseline")
    p_run.add_argument("--protocol", default="self", help="self, external or fixed")
    p_run.add_argument("--hparams", default="", help="JSON hyperparameters for --protocol fixed")
    p_run.add_argument("--seeds", type=int, default=1)
    p_run.add_argument("--experiment", default="showdown")
    p_run.add_argument("--out", default="out/showdown", help="folder for report.html")
    p_run.add_argument("--quiet", action="store_true")
    p_run.set_defaults(func=_cmd_run)
    p_rep = sub.add_parser("report", help="write the report of an existing results database")
    p_rep.add_argument("--db", required=True)
    p_rep.add_argument("--experiment", default=None, help="default: every experiment in the database")
    p_rep.add_argument("--out", default="out/showdown")
    p_rep.add_argument("--baseline", default="adamw-tuned")
    p_rep.set_defaults(func=_cmd_report)
    p_tune = sub.add_parser("tune", help="tune AdamW by the external-tuning protocol and record it in tuned.json")
    _selection_args(p_tune)
    p_tune.add_argument("--trials", type=int, default=5)
    p_tune.add_argument("--studies", type=int, default=3)
    p_tune.add_argument("--tuned", default="", help="output JSON (default: the package's tuned.json)")
    p_tune.set_defaults(func=_cmd_tune)
    p_tgt = sub.add_parser("targets", help="set targets AlgoPerf-style: median over seeds of tuned AdamW's best metric")
    _selection_args(p_tgt)
    p_tgt.add_argument("--seeds", type=int, default=5)
    p_tgt.add_argument("--targets", default="", help="targets JSON to update (default: the package's targets.json)")
    p_tgt.add_argument("--tuned", default="", help="tuned-AdamW JSON to rerun (default: the package's tuned.json)")
    p_tgt.add_argument("--same-version", action="store_true", help="do not bump the file's version")
    p_tgt.set_defaults(func=_cmd_targets)
