"""Honest evaluation of a small_fc_lopt weights file against untuned AdamW on the meta-training task family.

Each evaluation task is a fixed member of the family (no augmentation) trained from a **held-out seed**: training
draws its init and data seeds from [0, 1e9), evaluation uses 1e9 + seed. Every optimizer sees the same
initialisation and the same minibatch sequence. Reported per run: the mean minibatch loss over the last 10 % of
steps (``final``), the mean over all steps (``mean``, the meta-objective's analogue), test cross-entropy and
accuracy at the end. The learned optimizer runs as the ordinary ``SmallFCLOpt`` class (not the batched
meta-training path).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch

from ..small_fc_lopt import SmallFCLOpt
from .tasks import TaskModule, TaskSpec, load_dataset

__all__ = ["EVAL_ARCHS", "eval_specs", "train_once", "evaluate", "format_table"]

EVAL_SEED_OFFSET = 10**9
EVAL_ARCHS = (((32,), "relu"), ((32, 32), "tanh"))


def eval_specs(datasets: tuple[str, ...], seeds: int, steps: int, batch_size: int = 128) -> list[TaskSpec]:
    return [TaskSpec(dataset=d, hidden=h, activation=a, batch_size=batch_size, length=steps,
                     init_seed=EVAL_SEED_OFFSET + s, data_seed=EVAL_SEED_OFFSET + 1000 + s)
            for d in datasets for h, a in EVAL_ARCHS for s in range(seeds)]


def optimizer_factories(weights: str | os.PathLike | None) -> dict[str, Callable[[Any], torch.optim.Optimizer]]:
    return {"small-fc-lopt": lambda ps: SmallFCLOpt(ps, weights=None if weights is None else str(weights)),
            "adamw(1e-3)": lambda ps: torch.optim.AdamW(ps, lr=1e-3)}


def train_once(spec: TaskSpec, make_opt: Callable, data_root: str | None = None) -> dict[str, float]:
    data = load_dataset(spec.dataset, data_root)
    model = TaskModule(spec, data)
    opt = make_opt(model.parameters())
    gen = torch.Generator().manual_seed(spec.data_seed)
    losses = []
    for _ in range(spec.length):
        x, y = model.task.batch(gen)

        def closure():
            opt.zero_grad()
            loss = model(x, y)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure).detach()))
    tail = losses[-max(1, spec.length // 10):]
    test_loss, test_acc = model.evaluate(data.x_test, data.y_test)
    bad = not all(math.isfinite(v) for v in losses)
    return {"final": sum(tail) / len(tail), "mean": sum(losses) / len(losses), "test_loss": test_loss,
            "test_acc": test_acc, "diverged": bad}


def evaluate(weights: str | os.PathLike | None, datasets: tuple[str, ...], seeds: int = 3, steps: int = 1000,
             data_root: str | None = None, log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """One row per (task, seed, optimizer)."""
    rows = []
    factories = optimizer_factories(weights)
    for spec in eval_specs(datasets, seeds, steps):
        for name, make in factories.items():
            torch.manual_seed(0)
            r = train_once(spec, make, data_root)
            row = {"dataset": spec.dataset, "hidden": "x".join(map(str, spec.hidden)), "act": spec.activation,
                   "seed": spec.init_seed - EVAL_SEED_OFFSET, "steps": steps, "optimizer": name, **r}
            rows.append(row)
            if log:
                log(f"{row['dataset']:8} {row['hidden']:6} {row['act']:5} seed {row['seed']}  {name:14} "
                    f"final {r['final']:.4f}  mean {r['mean']:.4f}  test_loss {r['test_loss']:.4f}  "
                    f"test_acc {r['test_acc']:.4f}")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Per task (dataset, arch): mean over seeds for each optimizer, and the lopt/AdamW win count."""
    keys = sorted({(r["dataset"], r["hidden"], r["act"]) for r in rows})
    names = list(dict.fromkeys(r["optimizer"] for r in rows))
    lines = [f"{'task':22} " + "  ".join(f"{n + ' final/test_acc':>30}" for n in names) + "   lopt wins (final)"]
    wins = total = 0
    for key in keys:
        sub = [r for r in rows if (r["dataset"], r["hidden"], r["act"]) == key]
        cells = []
        for n in names:
            rs = [r for r in sub if r["optimizer"] == n]
            cells.append(f"{sum(r['final'] for r in rs) / len(rs):>14.4f} / {sum(r['test_acc'] for r in rs) / len(rs):.4f}"
                         .rjust(30))
        by_seed: dict[int, dict[str, float]] = {}
        for r in sub:
            by_seed.setdefault(r["seed"], {})[r["optimizer"]] = r["final"]
        w = sum(1 for d in by_seed.values() if len(names) > 1 and d[names[0]] < d[names[1]])
        wins, total = wins + w, total + len(by_seed)
        lines.append(f"{'/'.join(key):22} " + "  ".join(cells) + f"   {w}/{len(by_seed)}")
    lines.append(f"{names[0]} has the lower final training loss in {wins}/{total} runs")
    return "\n".join(lines)
