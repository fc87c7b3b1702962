"""The digits smoke workload: a 64-64-10 MLP on scikit-learn's bundled 8×8 handwritten digits (1 797 images,
shipped inside the scikit-learn wheel, so it works offline). Used by ``make demo`` until the showdown lands."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from ..factory import create_optimizer

DEFAULT_OPTIMIZERS = ("sgd", "adam", "adamw", "cadamw", "nadamw", "radam", "lion", "ademamix", "adabelief",
                      "adafactor", "sania")
# per-optimizer settings for this workload (lr on the optimizer's own scale); the rest are registry defaults
SETTINGS = {"sgd": {"lr": 0.1, "momentum": 0.9, "nesterov": True}, "adam": {"lr": 3e-3}, "adamw": {"lr": 3e-3},
            "cadamw": {"lr": 3e-3}, "nadamw": {"lr": 3e-3}, "radam": {"lr": 3e-3}, "lion": {"lr": 1e-3},
            "ademamix": {"lr": 3e-3}, "adabelief": {"lr": 3e-3}, "adafactor": {}, "sania": {}}


@dataclass
class Result:
    optimizer: str
    train_loss: float
    val_loss: float
    val_accuracy: float
    ms_per_step: float
    steps: int


def load_digits_tensors(seed: int = 0) -> tuple[torch.Tensor, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the demo extra installs it
        raise RuntimeError("the digits workload needs scikit-learn: pip install 'optfit[demo]'") from exc
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[perm], y[perm]
    n_val = len(x) // 5
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


def train(name: str, steps: int = 300, batch_size: int = 64, seed: int = 0, **hparams) -> Result:
    xtr, ytr, xva, yva = load_digits_tensors(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = create_optimizer(model, name, **{**SETTINGS.get(name, {}), **hparams})
    gen = torch.Generator().manual_seed(seed + 1)
    loss_fn = nn.CrossEntropyLoss()
    elapsed = 0.0
    for _ in range(steps):
        idx = torch.randint(len(xtr), (batch_size,), generator=gen)
        xb, yb = xtr[idx], ytr[idx]

        def closure():
            opt.zero_grad()
            out = loss_fn(model(xb), yb)
            out.backward()
            return out

        t0 = time.perf_counter()
        opt.step(closure)
        elapsed += time.perf_counter() - t0
    with torch.no_grad():
        logits = model(xva)
        val_loss = float(loss_fn(logits, yva))
        acc = float((logits.argmax(1) == yva).float().mean())
        train_loss = float(loss_fn(model(xtr), ytr))
    return Result(name, train_loss, val_loss, acc, 1000 * elapsed / steps, steps)


def format_table(results: list[Result]) -> str:
    header = f"{'optimizer':<12}{'train loss':>12}{'val loss':>10}{'val acc':>9}{'ms/step*':>10}"
    lines = [header, "-" * len(header)]
    for r in sorted(results, key=lambda r: r.val_loss):
        lines.append(f"{r.optimizer:<12}{r.train_loss:>12.4f}{r.val_loss:>10.4f}{r.val_accuracy:>9.3f}"
                     f"{r.ms_per_step:>10.2f}")
    lines.append("* wall time of opt.step(closure): forward, backward and the update")
    return "\n".join(lines)


def demo(names: tuple[str, ...] = DEFAULT_OPTIMIZERS, steps: int = 300, out_dir: str | Path = "out/demo") -> list[Result]:
    """Train the digits MLP with each optimizer (closure-driven, so closure-needing ones work too), print a
    leaderboard sorted by validation loss, and write it to ``out_dir`` as JSON and Markdown."""
    torch.set_num_threads(1)
    results = []
    for name in names:
        results.append(train(name, steps=steps))
        print(f"  trained {name:<10} val acc {results[-1].val_accuracy:.3f}", flush=True)
    table = format_table(results)
    print("\nDigits MLP (64-64-10), %d steps, batch 64, seed 0 — sorted by validation loss\n" % steps)
    print(table)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
    (out / "leaderboard.md").write_text("```\n" + table + "\n```\n")
    print(f"\nreport written to {out.resolve()}/leaderboard.md")
    return results
