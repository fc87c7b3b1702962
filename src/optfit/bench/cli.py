"""``optfit bench run | report | tune``: the showdown from the command line."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

from ..registry import list_optimizers
from .names import unknown


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (recorded with results, tuned settings and targets)."""
    argv = getattr(args, "argv", None)
    return "optfit " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _workload_names(args: argparse.Namespace) -> list[str]:
    from .showdown import suite_workloads
    from .workloads import BUILTIN, get_workload, list_workloads

    names = suite_workloads(args.suite) if args.suite else []
    for n in _csv(args.workloads) if getattr(args, "workloads", "") else []:
        if n not in BUILTIN and ":" not in n:
            raise ValueError(unknown("workload", n, list_workloads(), flag="--workloads")
                             + " (a workload of your own goes to --workload package.module:ClassName)")
        names.append(n)
    names += list(args.workload or [])
    if not names:
        raise ValueError("give --suite, --workloads or --workload")
    for n in names:
        get_workload(n)  # ValueError listing the choices, or naming the module:Class that failed
    return list(dict.fromkeys(names))


def check_writable_folder(folder: str | Path, flag: str) -> Path:
    """Create ``folder`` if needed and prove it takes a file (a real write: permissions alone do not tell a
    read-only file system, nor root's rights); ``ValueError`` naming ``flag`` otherwise. Run before any trial, so
    a report that cannot be written does not surface after hours of training."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag}: cannot create the folder {folder} ({exc.strerror or exc})") from None
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".optfit-write-check-"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag}: cannot write to {folder} ({exc.strerror or exc}); choose a writable folder") \
            from None
    return path


def check_writable_file(file: str | Path, flag: str) -> Path:
    """``file`` can be (re)written: an existing file opens for appending (nothing is changed), a new one's folder
    takes a file. ``ValueError`` naming ``flag`` otherwise."""
    path = Path(file)
    if path.is_dir():
        raise ValueError(f"{flag}: {file} is a folder; give a file path")
    if not path.exists():
        check_writable_folder(path.parent, flag)
        return path
    try:
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag}: cannot write to {file} ({exc.strerror or exc})") from None
    return path


def _results_db_path(args: argparse.Namespace) -> str:
    """``--db`` for a command that writes results: a missing folder is created and said so, as is a new
    database (a mistyped path would otherwise start from scratch without a word)."""
    path = Path(args.db)
    if path.is_dir():
        raise ValueError(f"--db: {args.db} is a folder; give the path of a results database file")
    where = f"optfit bench {getattr(args, 'bench_command', 'run')}"
    if not path.parent.exists():
        try:
            path.parent.mkdir(parents=True)
        except OSError as exc:
            raise ValueError(f"--db: cannot create the folder {path.parent} ({exc.strerror or exc})") from None
        print(f"{where}: created the folder {path.parent} for --db {args.db}", file=sys.stderr)
    if not path.exists():
        print(f"{where}: new results database {args.db}", file=sys.stderr)
    return str(path)


def _hparams(args: argparse.Namespace, optimizers: list[str]) -> dict | None:
    """``--hparams`` as a dict, checked: valid JSON, an object, used by ``--protocol fixed`` only, and accepted by
    every optimizer it goes to (each is built once on a tiny model)."""
    if not args.hparams:
        return None
    try:
        hparams = json.loads(args.hparams)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--hparams: not valid JSON ({exc.msg} at character {exc.pos}); give an object such as "
                         "'{\"lr\": 0.001, \"betas\": [0.9, 0.95]}'") from None
    if not isinstance(hparams, dict):
        raise ValueError(f"--hparams: expected a JSON object of hyperparameters such as '{{\"lr\": 0.001}}', got "
                         f"{type(hparams).__name__} {args.hparams!r}")
    if args.protocol != "fixed":
        raise ValueError(f"--hparams: used with --protocol fixed only (this run is --protocol {args.protocol}, which "
                         "sets the hyperparameters itself)")
    from ..factory import create_optimizer
    from .showdown import BASELINE

    import torch

    hp = {k: tuple(v) if isinstance(v, list) else v for k, v in hparams.items()}

    def build(name: str, **kwargs) -> None:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        create_optimizer(model, name, **kwargs)

    for name in optimizers:
        if name == BASELINE:
            continue
        try:
            build(name, **hp)
        except Exception as exc:  # noqa: BLE001 - reported as the flag's error if the defaults do build
            try:
                build(name)
            except Exception:  # noqa: BLE001 - not a --hparams problem; the trial will report it
                continue
            from .report import format_hparams

            raise ValueError(f"--hparams: {name} does not accept {format_hparams(hparams)} ({exc})") from None
    return hparams


def _optimizer_names(text: str, flag: str = "--optimizers") -> list[str]:
    from .showdown import BASELINE

    optimizers = _csv(text)
    if not optimizers:
        raise ValueError(f"{flag}: no optimizer given; `optfit list` shows the names")
    valid = set(list_optimizers()) | {BASELINE}
    for o in optimizers:
        if o not in valid:
            raise ValueError(unknown("optimizer", o, valid, flag=flag, limit=200))
    return optimizers


def check_report_dependencies() -> None:
    """The HTML report draws its figures with matplotlib (an optional dependency): say so before a run, not
    after its trials."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise ValueError("the HTML report needs matplotlib, which is not installed: pip install 'optfit[report]' "
                         "(or `optfit bench report --format csv|json` for the data alone)")


def _report(results, out: str, baseline: str, experiment=None) -> None:
    """Write report.html first, then print the leaderboard (a closed stdout must not cost the report)."""
    from .report import leaderboard_text, results_text, write_report
    from .showdown import workloads_meta
    from .summary import summarize

    meta = workloads_meta(r.spec.workload for r in results)
    summary = summarize(results, meta, baseline)
    path = write_report(results, meta, out, baseline=baseline, experiment=experiment)
    print(leaderboard_text(summary), flush=True)
    print(results_text(summary), flush=True)
    print(f"report: {path}")


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import run_experiment
    from .showdown import BASELINE, build_specs

    workloads = _workload_names(args)
    optimizers = _optimizer_names(args.optimizers)
    hparams = _hparams(args, optimizers)
    specs = build_specs(workloads, optimizers, args.protocol, args.seeds, hparams)
    check_report_dependencies()
    check_writable_folder(args.out, "--out")
    db = _results_db_path(args)
    command = _command(args)
    results = run_experiment(specs, db, args.experiment, workers=args.workers, command=command,
                             progress=not args.quiet, join=getattr(args, "join", False))
    keys = {s.key() for s in specs}
    _report([r for r in results if r.spec.key() in keys], args.out, BASELINE, args.experiment)
    return 0


def _open_for_reading(args: argparse.Namespace):
    from .storage import ResultsDB

    if not Path(args.db).exists():
        raise ValueError(f"--db: {args.db} does not exist (run `optfit bench run --db {args.db} ...` first)")
    return ResultsDB(args.db, readonly=True)


def _experiment(db, name: str | None) -> str | None:
    """``name`` checked against the database's experiments (None: all of them)."""
    if name is None:
        return None
    names = [e["name"] for e in db.experiments()]
    if name not in names:
        raise ValueError(unknown("experiment", name, names, flag="--experiment") + f" (in {db.path})")
    return name


def _cmd_report(args: argparse.Namespace) -> int:
    from . import export

    if args.format == "html":
        check_report_dependencies()
        check_writable_folder(args.out, "--out")
    with _open_for_reading(args) as db:
        experiment = _experiment(db, args.experiment)
        if args.format != "html":
            rows = export.trial_rows(db, experiment)
            if not rows:
                raise ValueError(f"--db: no trials in {'experiment ' + repr(experiment) if experiment else 'any experiment'}"
                                 f" of {args.db}")
            (export.write_csv if args.format == "csv" else export.write_json)(rows, sys.stdout)
            return 0
        results = db.results(experiment)
        names = [experiment] if experiment else [e["name"] for e in db.experiments()]
    if not results:
        raise ValueError(f"--db: no finished trials in experiment {args.experiment!r} of {args.db}")
    _report(results, args.out, args.baseline, names)
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from . import export

    with _open_for_reading(args) as db:
        experiment = _experiment(db, args.experiment)
        text = export.trials_text(db, experiment, args.status) if experiment else export.experiments_text(db)
    print(text)
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from . import protocols
    from .runner import run_experiment
    from .showdown import TUNED_PATH, load_tuned, tuned_from_results

    workloads = _workload_names(args)
    specs = protocols.external_tuning(workloads, "adamw", trials=args.trials, studies=args.studies)
    out = check_writable_file(args.tuned or TUNED_PATH, "--tuned")
    db = _results_db_path(args)
    command = _command(args)
    results = run_experiment(specs, db, "tune-adamw", workers=args.workers, command=command, join=args.join)
    asked = set(workloads)  # the experiment may hold other workloads' trials: their entries stay as they are
    found = tuned_from_results([r for r in results if r.spec.workload in asked], command)
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
    path = check_writable_file(args.targets or _common.TARGETS_PATH, "--targets")
    results = []
    if workloads:
        specs = tuned_specs(workloads, range(args.seeds), load_tuned(args.tuned) if args.tuned else None)
        results = run_experiment(specs, _results_db_path(args), "targets", workers=args.workers, command=command,
                                 join=args.join)
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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help (``(default: …)``), unless the help already says it or there is none
    worth printing (no value, an empty string, a switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or "%(default)" in text or "(default" in text.lower()
                or action.default in (None, "", False, argparse.SUPPRESS) or text == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def _selection_args(p: argparse.ArgumentParser, db_default: str = "out/showdown.sqlite") -> None:
    p.add_argument("--suite", default="", help="a workload suite: smoke (no data to prepare), quick or full")
    p.add_argument("--workloads", default="", help="comma-separated built-in workload names, w1-logreg … "
                   "w10-digits (an unknown name lists them all)")
    p.add_argument("--workload", action="append", metavar="MODULE:CLASS",
                   help="a workload of your own as package.module:ClassName, imported from the current directory "
                        "(repeatable; see docs/workloads.md)")
    p.add_argument("--db", default=db_default, help="results database (SQLite; a rerun resumes it). A missing folder "
                   "is created, and a new database is announced on stderr")
    p.add_argument("--workers", type=int, default=None,
                   help="trial processes (default: one per usable CPU; 0 runs the trials in this process)")
    p.add_argument("--join", action="store_true",
                   help="run alongside another live run on the same --db (otherwise refused, naming its pid); they "
                        "share the CPUs, and the queue when the experiment is the same")


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    kw = {"formatter_class": HelpFormatter}
    p_bench = subparsers.add_parser("bench", help="run the showdown and write its report", **kw)
    sub = p_bench.add_subparsers(dest="bench_command", required=True, metavar="{run,report,list,tune,targets}")
    p_run = sub.add_parser("run", help="run trials (resumes), print the leaderboard, write the HTML report", **kw)
    _selection_args(p_run)
    p_run.add_argument("--optimizers", default="adamw-tuned,adamw,gap-adamw",
                       help="comma-separated registry names (`optfit list --names`); adamw-tuned = the tuned AdamW "
                            "baseline")
    p_run.add_argument("--protocol", default="self",
                       help="self: registry defaults, the same on every workload; external: tune each optimizer "
                            "(5 trials x 3 studies); fixed: the --hparams for every workload")
    p_run.add_argument("--hparams", default="", metavar="JSON",
                       help="hyperparameters for --protocol fixed, a JSON object such as '{\"lr\": 0.001}'")
    p_run.add_argument("--seeds", type=int, default=1, help="seeds per workload and optimizer (seeds 0..N-1)")
    p_run.add_argument("--experiment", default="showdown", help="experiment name in the database")
    p_run.add_argument("--out", default="out/showdown", help="folder for report.html (checked writable before the run)")
    p_run.add_argument("--quiet", action="store_true", help="no progress display")
    p_run.set_defaults(func=_cmd_run)
    p_rep = sub.add_parser("report", help="the report of an existing results database (HTML, CSV or JSON)", **kw)
    p_rep.add_argument("--db", required=True, help="results database to read (a read-only one works)")
    p_rep.add_argument("--experiment", default=None, help="experiment to report (default: every experiment in the "
                                                           "database)")
    p_rep.add_argument("--out", default="out/showdown", help="folder for report.html (--format html)")
    p_rep.add_argument("--baseline", default="adamw-tuned", help="label that ratios and claims are taken against")
    p_rep.add_argument("--format", default="html", choices=("html", "csv", "json"),
                       help="html: leaderboard on stdout and report.html in --out; csv/json: one record per trial "
                            "on stdout (json adds the curves)")
    p_rep.set_defaults(func=_cmd_report)
    p_list = sub.add_parser("list", help="the experiments of a results database, or the trials of one", **kw)
    p_list.add_argument("--db", default="out/showdown.sqlite", help="results database to read")
    p_list.add_argument("--experiment", default=None, help="list this experiment's trials (default: list the "
                                                            "experiments)")
    p_list.add_argument("--status", default="", help="with --experiment: only these statuses, comma-separated "
                                                     "(queued, running, done, diverged, failed)")
    p_list.set_defaults(func=_cmd_list)
    p_tune = sub.add_parser("tune", help="tune AdamW by the external-tuning protocol and record it in tuned.json",
                            **kw)
    _selection_args(p_tune)
    p_tune.add_argument("--trials", type=int, default=5, help="trials per study")
    p_tune.add_argument("--studies", type=int, default=3, help="independent studies per workload")
    p_tune.add_argument("--tuned", default="", help="output JSON (default: the package's tuned.json)")
    p_tune.set_defaults(func=_cmd_tune)
    p_tgt = sub.add_parser("targets", help="set targets AlgoPerf-style: median over seeds of tuned AdamW's best metric",
                           **kw)
    _selection_args(p_tgt)
    p_tgt.add_argument("--seeds", type=int, default=5, help="tuned-AdamW runs per workload")
    p_tgt.add_argument("--targets", default="", help="targets JSON to update (default: the package's targets.json)")
    p_tgt.add_argument("--tuned", default="", help="tuned-AdamW JSON to rerun (default: the package's tuned.json)")
    p_tgt.add_argument("--same-version", action="store_true", help="do not bump the file's version")
    p_tgt.set_defaults(func=_cmd_targets)
