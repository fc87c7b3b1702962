"""The meta-training loop: PES over truncated unrolls of the task family, Adam on the MLP parameters,
checkpoints that make a killed run continue bit-exactly when the same command is run again.

Per iteration, each of ``workers`` task slots runs one truncation of ``truncation`` inner steps for
N = 2·``pairs`` particles (the learned optimizer's MLP parameters θ + ε_j, antithetic ε) on its current task and
returns a PES estimate (``pes.py``); the estimates are averaged and θ takes an Adam step (lr cosine-decayed
from ``meta_lr`` to ``meta_lr/10`` over ``iterations``). A slot whose episode (``TaskSpec.length`` inner steps)
ends, or whose particles diverge, draws a new task. The truncation loss is the mean over its steps of the
minibatch cross-entropy divided by ln(classes), clipped at ``loss_clip`` (non-finite → ``loss_clip``).

Everything random comes from generators whose states are in the checkpoint; the wall-clock bound only decides
where a run stops, never what it computes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor

from ..small_fc_lopt import LoptWeights, init_state, lopt_steps, save_weights, unflatten
from .init import initial_weights
from .pes import PESState, pes_truncation
from .tasks import BatchedMLP, TaskSpec, init_params, load_dataset, sample_task

__all__ = ["MetaConfig", "meta_train", "CHECKPOINT", "EXPORT"]

CHECKPOINT, EXPORT, LOG = "checkpoint.pt", "small_fc_lopt.safetensors", "log.jsonl"
CKPT_VERSION = 1
RUN_FIELDS = ("iterations", "max_minutes", "checkpoint_seconds", "data_root", "quiet")  # may change on resume


@dataclass
class MetaConfig:
    """What defines a meta-training run (``RUN_FIELDS`` only steer this invocation)."""

    tasks: tuple[str, ...] = ("mnist8", "fmnist8", "mnist1d")
    iterations: int = 3000
    pairs: int = 4
    workers: int = 2
    truncation: int = 20
    min_length: int = 100
    max_length: int = 1000
    sigma: float = 0.01
    meta_lr: float = 1e-3
    hidden: int = 32
    init: str = "adam"
    seed: int = 0
    scale_range: float = 3.0
    input_range: float = 2.0
    loss_clip: float = 2.0
    max_minutes: float | None = None
    checkpoint_seconds: float = 60.0
    data_root: str | None = None
    quiet: bool = False

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        for name in ("iterations", "pairs", "workers", "truncation", "min_length", "hidden"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "iterations" else 1):
                raise ValueError(f"Invalid {name}: {v!r} (must be a positive integer)")
        if self.max_length < self.min_length:
            raise ValueError(f"Invalid max_length: {self.max_length} (must be >= min_length {self.min_length})")
        for name in ("sigma", "meta_lr", "loss_clip", "scale_range", "input_range", "checkpoint_seconds"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"Invalid {name}: {v!r} (must be a positive number)")
        if not self.tasks:
            raise ValueError("Invalid tasks: empty")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        return {k: v for k, v in d.items() if k not in RUN_FIELDS}


# ------------------------------------------------------------------------------------------- task slots
@dataclass
class Slot:
    """One task being unrolled by N particles."""

    spec: TaskSpec
    phis: list[Tensor]
    lstate: list[dict[str, Tensor]]
    pes: PESState
    data_gen: torch.Generator
    t: int = 0
    done: bool = False
    last_loss: float = float("nan")
    task: Any = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "phis": self.phis, "lstate": self.lstate, "xi": self.pes.xi,
                "data_gen": self.data_gen.get_state(), "t": self.t, "done": self.done, "last_loss": self.last_loss}


def _new_slot(spec: TaskSpec, n: int, dim: int, cfg: MetaConfig) -> Slot:
    data = load_dataset(spec.dataset, cfg.data_root)
    phis = [p.unsqueeze(0).repeat(n, *([1] * p.ndim)) for p in init_params(spec, data.n_inputs, data.n_classes)]
    slot = Slot(spec, phis, [init_state(p) for p in phis], PESState(torch.zeros(n, dim)),
                torch.Generator().manual_seed(spec.data_seed))
    slot.task = BatchedMLP(spec, data)
    return slot


def _slot_from_dict(d: dict[str, Any], cfg: MetaConfig) -> Slot:
    spec = TaskSpec.from_dict(d["spec"])
    gen = torch.Generator()
    gen.set_state(d["data_gen"])
    slot = Slot(spec, list(d["phis"]), [dict(s) for s in d["lstate"]], PESState(d["xi"]), gen, int(d["t"]),
                bool(d["done"]), float(d["last_loss"]))
    slot.task = BatchedMLP(spec, load_dataset(spec.dataset, cfg.data_root))
    return slot


def _batched_weights(thetas: Tensor, base: LoptWeights) -> SimpleNamespace:
    ts = unflatten(thetas, base.shapes())
    return SimpleNamespace(layers=list(zip(ts[0::2], ts[1::2])), mom_decays=base.mom_decays,
                           rms_decay=base.rms_decay, fac_decays=base.fac_decays, exp_mult=base.exp_mult,
                           step_mult=base.step_mult)


@torch.no_grad()
def unroll(slot: Slot, thetas: Tensor, steps: int, base: LoptWeights, loss_clip: float) -> Tensor:
    """Advance every particle ``steps`` inner steps with its own optimizer parameters; mean clipped loss (N,)."""
    w = _batched_weights(thetas, base)
    norm = math.log(slot.task.data.n_classes)
    total = torch.zeros(thetas.shape[0])
    for _ in range(steps):
        x, y = slot.task.batch(slot.data_gen)
        losses, grads = slot.task.loss_and_grads(slot.phis, x, y)
        total += torch.nan_to_num(losses / norm, nan=loss_clip, posinf=loss_clip).clamp(max=loss_clip)
        for p, s in zip(slot.phis, lopt_steps(slot.phis, grads, slot.lstate, w, float(slot.t))):
            p.sub_(s)
        slot.t += 1
    return total / steps


# ----------------------------------------------------------------------------------------- checkpoints
def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_log(history: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
    os.replace(tmp, path)


class _Progress:
    """tqdm when installed, else a plain line at most every ``every`` seconds."""

    def __init__(self, total: int, start: int, quiet: bool, every: float = 15.0):
        self.total, self.quiet, self.every, self.last = total, quiet, every, 0.0
        self.t0, self.start = time.time(), start
        self.bar = None
        if not quiet:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=start, desc="meta-train", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, it: int, loss: float, cpu_h: float) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", cpu_h=f"{cpu_h:.3f}")
            return
        now = time.time()
        if now - self.last < self.every and it < self.total:
            return
        self.last = now
        rate = (it - self.start) / max(now - self.t0, 1e-9)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        print(f"meta-train {it}/{self.total} ({100 * it / max(self.total, 1):.0f}%)  loss(ema) {loss:.4f}  "
              f"{rate:.2f} it/s  eta {eta / 60:.1f} min  cpu {cpu_h:.3f} h", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------------------------------------- the loop
def meta_train(cfg: MetaConfig, out: str | os.PathLike, *, stop_after: int | None = None,
               handle_signals: bool = False, command: str = "") -> dict[str, Any]:
    """Run (or continue) meta-training in ``out``; returns a summary. ``stop_after`` ends this invocation after
    that many iterations (as if killed right after a checkpoint). Writes ``checkpoint.pt``, ``log.jsonl`` and the
    current parameters as ``small_fc_lopt.safetensors`` at every checkpoint."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = initial_weights(cfg.hidden, cfg.seed, cfg.init)
    dim, n = base.flat().numel(), 2 * cfg.pairs
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=True)
        if ck.get("version") != CKPT_VERSION:
            raise ValueError(f"{ckpt_path}: checkpoint version {ck.get('version')!r}, expected {CKPT_VERSION}")
        diff = {k: (ck["config"].get(k), v) for k, v in cfg.identity().items() if ck["config"].get(k) != v}
        if diff:
            raise ValueError(f"{ckpt_path} belongs to another run; differing settings (checkpoint, now): {diff}; "
                             "use another --out or the same settings")
        theta, m, v = ck["theta"], ck["adam_m"], ck["adam_v"]
        noise_gen, task_gen = torch.Generator(), torch.Generator()
        noise_gen.set_state(ck["noise_gen"])
        task_gen.set_state(ck["task_gen"])
        slots = [None if s is None else _slot_from_dict(s, cfg) for s in ck["slots"]]
        it, cpu_s, history = int(ck["iteration"]), float(ck["cpu_seconds"]), list(ck["history"])
        loss_ema = float(ck["loss_ema"])
    else:
        theta = base.flat().clone()
        m, v = torch.zeros_like(theta), torch.zeros_like(theta)
        noise_gen = torch.Generator().manual_seed(cfg.seed * 2 + 1)
        task_gen = torch.Generator().manual_seed(cfg.seed * 2 + 2)
        slots, it, cpu_s, history, loss_ema = [None] * cfg.workers, 0, 0.0, [], float("nan")

    def checkpoint() -> None:
        nonlocal cpu_s, cpu_mark
        cpu_s += time.process_time() - cpu_mark
        cpu_mark = time.process_time()
        state = {"version": CKPT_VERSION, "config": cfg.identity(), "iteration": it, "theta": theta, "adam_m": m,
                 "adam_v": v, "noise_gen": noise_gen.get_state(), "task_gen": task_gen.get_state(),
                 "slots": [None if s is None else s.to_dict() for s in slots], "cpu_seconds": cpu_s,
                 "history": history, "loss_ema": loss_ema}
        _save_atomic(state, ckpt_path)
        _write_log(history, out / LOG)
        meta = {"meta_iterations": str(it), "cpu_hours": f"{cpu_s / 3600:.4f}",
                "config": json.dumps(cfg.identity(), sort_keys=True), "command": command,
                "note": "meta-trained by optfit (PES on the Celo-style task family)"}
        save_weights(out / EXPORT, base.with_flat(theta), meta)

    stop = {"flag": False}
    old_handlers = {}
    if handle_signals:  # finish the current iteration, checkpoint, exit; a second Ctrl-C aborts at once
        def _on_signal(signum: int, frame: Any) -> None:
            if stop["flag"] and signum == signal.SIGINT:
                raise KeyboardInterrupt
            stop["flag"] = True
        old_handlers = {s: signal.signal(s, _on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    cpu_mark, wall0, last_ckpt = time.process_time(), time.time(), time.time()
    progress = _Progress(cfg.iterations, it, cfg.quiet)
    done_here, interrupted = 0, False
    try:
        while it < cfg.iterations:
            it = _iteration(cfg, it, theta, m, v, slots, noise_gen, task_gen, base, n, dim, history)
            mean_loss = history[-1]["loss"]
            loss_ema = mean_loss if math.isnan(loss_ema) else 0.98 * loss_ema + 0.02 * mean_loss
            done_here += 1
            progress.update(it, loss_ema, (cpu_s + time.process_time() - cpu_mark) / 3600)
            timeout = cfg.max_minutes is not None and time.time() - wall0 >= 60 * cfg.max_minutes
            if stop["flag"] or timeout or (stop_after is not None and done_here >= stop_after):
                interrupted = it < cfg.iterations
                break
            if time.time() - last_ckpt >= cfg.checkpoint_seconds:
                checkpoint()
                last_ckpt = time.time()
    finally:  # on an exception the last checkpoint stands (a half-done iteration is never saved)
        progress.close()
        for sig, h in old_handlers.items():
            signal.signal(sig, h)
    checkpoint()
    if not cfg.quiet:
        state = "stopped (rerun the same command to continue)" if interrupted else "finished"
        print(f"meta-train {state} at iteration {it}/{cfg.iterations}; cpu {cpu_s / 3600:.3f} h; "
              f"weights: {out / EXPORT}", file=sys.stderr, flush=True)
    return {"iteration": it, "finished": it >= cfg.iterations, "cpu_hours": cpu_s / 3600, "theta": theta,
            "weights": str(out / EXPORT), "loss_ema": loss_ema}


def _iteration(cfg: MetaConfig, it: int, theta: Tensor, m: Tensor, v: Tensor, slots: list, noise_gen, task_gen,
               base: LoptWeights, n: int, dim: int, history: list) -> int:
    """One meta-iteration (in place on θ, the Adam moments and the slots); returns the new iteration count."""
    grads, losses_all = [], []
    for k in range(cfg.workers):
        if slots[k] is None or slots[k].done:
            spec = sample_task(task_gen, cfg.tasks, cfg.min_length, cfg.max_length, cfg.scale_range,
                               cfg.input_range)
            slots[k] = _new_slot(spec, n, dim, cfg)
        slot = slots[k]
        steps = min(cfg.truncation, slot.spec.length - slot.t)
        g, losses = pes_truncation(theta, slot.pes, cfg.sigma, noise_gen,
                                   lambda th: unroll(slot, th, steps, base, cfg.loss_clip))
        grads.append(g)
        losses_all.append(losses)
        slot.last_loss = float(losses.mean())
        diverged = not all(bool(torch.isfinite(p).all()) for p in slot.phis)
        if slot.t >= slot.spec.length or diverged:
            slot.done = True
            history.append({"episode_end": it + 1, "dataset": slot.spec.dataset, "length": slot.spec.length,
                            "hidden": list(slot.spec.hidden), "final_loss": round(slot.last_loss, 6),
                            "diverged": diverged})
    g = torch.stack(grads).mean(0)
    it += 1
    lr = cfg.meta_lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(it / max(cfg.iterations, 1), 1.0))))
    m.mul_(0.9).add_(g, alpha=0.1)
    v.mul_(0.999).add_(g * g, alpha=0.001)
    theta -= lr * (m / (1 - 0.9 ** it)) / ((v / (1 - 0.999 ** it)).sqrt() + 1e-8)
    history.append({"it": it, "loss": round(float(torch.stack(losses_all).mean()), 6),
                    "grad_norm": round(float(g.norm()), 6)})
    return it
