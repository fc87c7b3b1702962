"""A results database as data and as text: ``optfit bench report --format csv|json`` (one record per trial) and
``optfit bench list`` (the experiments, or the trials of one)."""

from __future__ import annotations

import csv
import json
import math
import time
from typing import Any, TextIO

from .storage import STATUSES, ResultsDB, describe_run

COLUMNS = ("experiment", "workload", "workload_name", "label", "optimizer", "protocol", "seed", "study",
           "trial_index", "status", "attempts", "steps", "steps_to_target", "seconds_to_target", "train_seconds",
           "optimizer_seconds", "hparams", "schedule", "error")


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become ``None`` (recursively)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def trial_rows(db: ResultsDB, experiment: str | None = None, *, curves: bool = True) -> list[dict[str, Any]]:
    """One dict per trial (every status) of ``experiment`` (None: all), in database order: the ``COLUMNS`` with
    exact values, ``final_metrics`` and, with ``curves``, the ``curve`` (a list of ``{step, wall_s, cpu_s,
    metrics}``) of finished trials."""
    from .workloads import display_name

    rows = db.trials(experiment)
    by_key = {}
    if curves:
        by_key = {(r["experiment"], r["spec"].key()): None for r in rows}
        names = {experiment} if experiment else {r["experiment"] for r in rows}
        for name in names:
            for res in db.results(name):
                by_key[(name, res.spec.key())] = [{"step": p.step, "wall_s": p.wall_s, "cpu_s": p.cpu_s,
                                                   "metrics": p.metrics} for p in res.curve]
    out = []
    for r in rows:
        spec = r["spec"]
        row = {"experiment": r["experiment"], "workload": spec.workload, "workload_name": display_name(spec.workload),
               "label": spec.label or spec.optimizer, "optimizer": spec.optimizer, "protocol": spec.protocol,
               "seed": spec.seed, "study": spec.study, "trial_index": spec.trial_index, "status": r["status"],
               "attempts": r["attempts"], "steps": r["steps"], "steps_to_target": r["steps_to_target"],
               "seconds_to_target": r["seconds_to_target"], "train_seconds": r["train_seconds"],
               "optimizer_seconds": r["optimizer_seconds"], "hparams": spec.hparams, "schedule": spec.schedule,
               "error": r["error"] or "", "final_metrics": r["final_metrics"] or {}}
        if curves:
            row["curve"] = by_key.get((r["experiment"], spec.key())) or []
        out.append(row)
    return out


def write_csv(rows: list[dict[str, Any]], file: TextIO) -> None:
    """``COLUMNS`` plus one ``final_<metric>`` column per metric found; hyperparameters and schedule as JSON, the
    error's first line; empty cells for missing values."""
    metrics = sorted({k for r in rows for k in r["final_metrics"]})
    writer = csv.writer(file, lineterminator="\n")
    writer.writerow([*COLUMNS, *(f"final_{m}" for m in metrics)])
    for r in rows:
        cells = []
        for c in COLUMNS:
            v = r[c]
            if c in ("hparams", "schedule"):
                v = "" if v is None else json.dumps(v, sort_keys=True, default=str)
            elif c == "error":
                v = v.splitlines()[0] if v else ""
            cells.append("" if v is None else v)
        cells += ["" if r["final_metrics"].get(m) is None else r["final_metrics"][m] for m in metrics]
        writer.writerow(cells)
    file.flush()


def write_json(rows: list[dict[str, Any]], file: TextIO) -> None:
    """``{"trials": rows}`` as strict JSON (NaN and infinities as null)."""
    json.dump({"trials": _finite(rows)}, file, indent=1, sort_keys=True, default=str, allow_nan=False)
    file.write("\n")
    file.flush()


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    clean = [["".join(ch if ch.isprintable() else "?" for ch in c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in clean)) if clean else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *map(line, clean)])


def experiments_text(db: ResultsDB) -> str:
    """The experiments of ``db``: trials per status, when created, the command; and the live runs."""
    rows = []
    for e in db.experiments():
        counts = db.counts(e["name"])
        rows.append([e["name"], str(sum(counts.values())), *(str(counts[s]) for s in STATUSES),
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(e["created"])), e["command"] or ""])
    if not rows:
        return f"{db.path}: no experiments"
    text = _table(["experiment", "trials", *STATUSES, "created", "command"], rows, set(range(1, 7)))
    runs = db.live_runs()
    if runs:
        text += "\n\nin progress: " + "; ".join(describe_run(r) for r in runs)
    return text + f"\n\n`optfit bench list --db {db.path} --experiment NAME` lists an experiment's trials"


def trials_text(db: ResultsDB, experiment: str, statuses: str = "") -> str:
    """The trials of ``experiment`` (optionally only the comma-separated ``statuses``), one line each."""
    from .names import unknown
    from .report import format_hparams
    from .workloads import display_name

    wanted = [s.strip() for s in statuses.split(",") if s.strip()]
    for s in wanted:
        if s not in STATUSES:
            raise ValueError(unknown("status", s, STATUSES, flag="--status"))
    rows = []
    for r in db.trials(experiment, wanted or None):
        spec = r["spec"]
        ttt = "" if r["steps_to_target"] is None else str(r["steps_to_target"])
        secs = "" if r["train_seconds"] is None else f"{r['train_seconds']:.2f}"
        note = (r["error"] or "").splitlines()[0][:80] if r["error"] else ""
        rows.append([str(r["id"]), display_name(spec.workload), spec.label or spec.optimizer, str(spec.seed),
                     r["status"], str(r["steps"] or 0), ttt, secs, format_hparams(spec.hparams), note])
    if not rows:
        return f"experiment {experiment!r}: no trials" + (f" with status {', '.join(wanted)}" if wanted else "")
    return _table(["id", "workload", "optimizer", "seed", "status", "steps", "to target", "train s", "hparams",
                   "error"], rows, {0, 3, 5, 6, 7})
