"""Command line: ``optfit list`` (the registry table), ``optfit demo`` (the smoke showdown), ``optfit data …``
(offline datasets) and ``optfit bench …`` (the showdown).

Errors of input (unknown names, with close matches; bad flags; unusable files) are one line on stderr and exit
status 2; Ctrl-C stops cleanly with status 130 (a run's finished trials are kept, a rerun resumes); a closed
output pipe (``optfit list | head``) ends quietly."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from pathlib import Path

from .registry import list_optimizers, markdown_table, optimizer_info


def _cmd_list(args: argparse.Namespace) -> int:
    names = list_optimizers(args.pattern)
    if not names:
        from .bench.names import close_matches

        close = close_matches(args.pattern, list_optimizers()) if not set("*?[") & set(args.pattern) else []
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        print(f"no optimizer matches {args.pattern!r}{hint}; optfit list shows all", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown_table())
        return 0
    if args.names:
        print(",".join(names))
        return 0
    infos = [optimizer_info(n) for n in names]
    width, fam, pap = max(map(len, names)), max(len(i.family) for i in infos), max(len(i.paper) for i in infos)
    for name, info in zip(names, infos):
        print(f"{name:<{width}}  {info.family:<{fam}}  {info.paper:<{pap}}  {info.description}")
    return 0


DEMO_OPTIMIZERS = ("adamw-tuned", "auto", "adamw", "schedule-free-adamw", "prodigy", "dadapt-adam", "dog", "nadamw", "lion", "sgd",
                   "gap-adamw", "gap-sgd", "muon")


def code_fingerprint() -> str:
    """sha256 over the package's Python sources (paths and contents): changes whenever optfit's code does."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _fresh_if_code_changed(out: str) -> None:
    """The demo resumes its database, unless optfit's code changed since it was written: then its results
    (timings above all) describe other code, and the database is set aside as ``showdown.sqlite.old``."""
    folder = Path(out)
    db, stamp = folder / "showdown.sqlite", folder / "code.sha256"
    current = code_fingerprint()
    if db.exists() and (not stamp.exists() or stamp.read_text().strip() != current):
        for suffix in ("", "-wal", "-shm"):
            old = Path(f"{db}{suffix}")
            if old.exists():
                old.replace(f"{db}.old{suffix}")
        print(f"demo: optfit's code changed since {db} was written; starting afresh (the old one is "
              f"{db}.old)", file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    stamp.write_text(current + "\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    """The main job: the smoke showdown (``optfit bench run --suite smoke``) with the demo's optimizers."""
    from .bench import cli as bench_cli

    _fresh_if_code_changed(args.out)
    names = args.optimizers or ",".join(n for n in DEMO_OPTIMIZERS if n == "adamw-tuned" or n in list_optimizers())
    run_args = argparse.Namespace(suite="smoke", workloads="", workload=None, db=f"{args.out}/showdown.sqlite",
                                  workers=args.workers, optimizers=names, protocol="self", hparams="",
                                  seeds=args.seeds, experiment="demo", out=args.out, quiet=False, join=False,
                                  argv=getattr(args, "argv", None), bench_command="run")
    return bench_cli._cmd_run(run_args)


def _with_formatter(parser: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]) -> None:
    """Give ``parser`` and all its subcommands' parsers the help formatter (defaults shown everywhere)."""
    parser.formatter_class = formatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _with_formatter(child, formatter)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    from .bench.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="optfit", description="Fit the optimizer to the task.")
    parser.add_argument("--version", action="version", version=f"optfit {__version__}",
                        help="print optfit's version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    p_list = sub.add_parser("list", help="list the registered optimizers")
    p_list.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'adam*'")
    p_list.add_argument("--markdown", action="store_true", help="print the README table")
    p_list.add_argument("--names", action="store_true",
                        help="print the matching names comma-separated (for --optimizers)")
    p_list.set_defaults(func=_cmd_list)
    p_demo = sub.add_parser("demo", help="the smoke showdown: several optimizers incl. tuned AdamW and gap-adamw on "
                                         "the smoke suite; prints the leaderboard, writes the HTML report")
    p_demo.add_argument("--optimizers", default="", help="comma-separated registry names (and adamw-tuned)")
    p_demo.add_argument("--seeds", type=int, default=1, help="seeds per workload and optimizer")
    p_demo.add_argument("--workers", type=int, default=None, help="trial processes (default: one per CPU)")
    p_demo.add_argument("--out", default="out/demo", help="folder for report.html and the results database")
    p_demo.set_defaults(func=_cmd_demo)
    from .bench import cli as bench_cli
    from .bench import data as bench_data

    bench_data.add_cli(sub)
    bench_cli.add_cli(sub)
    from .learned import cli as learned_cli
    learned_cli.add_cli(sub)
    _with_formatter(parser, HelpFormatter)
    return parser


def _quiet_broken_pipe() -> int:
    """The reader of stdout went away (``| head``): no traceback, and nothing more to flush at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor behind sys.stdout
        pass
    return 141  # 128 + SIGPIPE, as a process killed by the signal would report


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except KeyboardInterrupt:
        return 130
    args.argv = list(argv) if argv is not None else None  # recorded as the command that produced results
    from .bench.storage import ResultsDBError
    from .bench.workload import DataMissing

    name = args.command + (f" {args.bench_command}" if getattr(args, "bench_command", None) else "")
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except (ValueError, KeyError, ResultsDBError, DataMissing) as exc:  # bad input: one clear line, no traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"optfit {name}: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        runs = name in ("demo", "bench run", "bench tune", "bench targets")
        print(f"\noptfit {name}: interrupted" + ("; finished trials are kept in the results database, and rerunning "
                                                 "the same command resumes" if runs else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
