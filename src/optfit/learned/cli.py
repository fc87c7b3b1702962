"""``optfit learned …``: ``meta-train`` (PES meta-training of small_fc_lopt on CPU, resumable) and ``evaluate``
(a weights file vs untuned AdamW on held-out seeds of the meta-training tasks)."""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

__all__ = ["add_cli"]


def _tasks(text: str) -> tuple[str, ...]:
    from .meta.tasks import DATASETS

    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [t for t in names if t not in DATASETS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown task dataset(s) {bad or text!r}; choose from {', '.join(DATASETS)}")
    return names


def _cmd_meta_train(args: argparse.Namespace) -> int:
    import torch

    from .meta.train import EXPORT, MetaConfig, meta_train

    torch.set_num_threads(args.threads)
    cfg = MetaConfig(tasks=args.tasks, iterations=args.iterations, pairs=args.pairs, workers=args.workers,
                     truncation=args.truncation, min_length=args.min_length, max_length=args.max_length,
                     sigma=args.sigma, meta_lr=args.meta_lr, hidden=args.hidden, init=args.init, seed=args.seed,
                     scale_range=args.scale_range, input_range=args.input_range, max_minutes=args.max_minutes,
                     checkpoint_seconds=args.checkpoint_seconds, data_root=args.data_root, quiet=args.quiet)
    argv = getattr(args, "argv", None)
    command = "optfit " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = meta_train(cfg, args.out, stop_after=args.stop_after, handle_signals=True, command=command)
    if result["finished"] and args.export:
        Path(args.export).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(args.out) / EXPORT, args.export)
        print(f"exported {args.export}", file=sys.stderr)
    return 0 if result["finished"] else 3


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .meta.evaluate import evaluate, format_table

    from .small_fc_lopt import load_weights

    torch.set_num_threads(args.threads)
    try:
        load_weights(args.weights)  # fail early, with the loader's message
    except FileNotFoundError as exc:
        raise ValueError(str(exc)) from None
    rows = evaluate(args.weights, args.tasks, seeds=args.seeds, steps=args.steps, data_root=args.data_root,
                    log=None if args.quiet else (lambda s: print(s, flush=True)))
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``learned`` command group to an ``argparse`` sub-parser collection."""
    from .meta.init import KINDS
    from .meta.train import MetaConfig

    d = MetaConfig()
    p = subparsers.add_parser("learned", help="learned optimizers: meta-train small_fc_lopt, evaluate weights")
    sub = p.add_subparsers(dest="learned_command", required=True)
    mt = sub.add_parser("meta-train", help="meta-train small_fc_lopt with PES on the Celo-style task family "
                                           "(resumable: rerun the same command to continue)")
    mt.add_argument("--out", default="out/meta-train/small_fc_lopt", help="run folder (checkpoint, log, weights)")
    mt.add_argument("--tasks", type=_tasks, default=d.tasks, help="comma-separated datasets: mnist8, fmnist8, "
                                                                  "mnist1d, blobs (default %(default)s)")
    mt.add_argument("--iterations", type=int, default=d.iterations, help="meta-iterations in total")
    mt.add_argument("--pairs", type=int, default=d.pairs, help="antithetic pairs per task slot")
    mt.add_argument("--workers", type=int, default=d.workers, help="task slots per iteration")
    mt.add_argument("--truncation", type=int, default=d.truncation, help="inner steps per truncation")
    mt.add_argument("--min-length", type=int, default=d.min_length, help="shortest episode (inner steps)")
    mt.add_argument("--max-length", type=int, default=d.max_length, help="longest episode (inner steps)")
    mt.add_argument("--sigma", type=float, default=d.sigma, help="PES perturbation std")
    mt.add_argument("--meta-lr", type=float, default=d.meta_lr, help="Adam lr on the MLP parameters")
    mt.add_argument("--hidden", type=int, default=d.hidden, help="MLP hidden width")
    mt.add_argument("--init", choices=KINDS, default=d.init, help="initial MLP (see optfit.learned.meta.init)")
    mt.add_argument("--seed", type=int, default=d.seed)
    mt.add_argument("--scale-range", type=float, default=d.scale_range, help="parameter re-scaling augmentation")
    mt.add_argument("--input-range", type=float, default=d.input_range, help="input scaling augmentation")
    mt.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    mt.add_argument("--checkpoint-seconds", type=float, default=d.checkpoint_seconds)
    mt.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)
    mt.add_argument("--export", default=None, help="copy the final weights here when the run has finished")
    mt.add_argument("--data-root", default=None, help="dataset cache (default: optfit data's cache)")
    mt.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    mt.add_argument("--quiet", action="store_true")
    mt.set_defaults(func=_cmd_meta_train)
    ev = sub.add_parser("evaluate", help="a weights file vs AdamW(lr=1e-3) on held-out seeds of the meta-training tasks")
    ev.add_argument("--weights", default=None, help="safetensors file (default: the packaged weights)")
    ev.add_argument("--tasks", type=_tasks, default=("mnist8", "fmnist8", "mnist1d"))
    ev.add_argument("--seeds", type=int, default=3)
    ev.add_argument("--steps", type=int, default=1000)
    ev.add_argument("--json", default=None, help="write every run's numbers here")
    ev.add_argument("--data-root", default=None)
    ev.add_argument("--threads", type=int, default=1)
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)
    return p
