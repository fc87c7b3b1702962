"""The trial runner: ``run_trial`` trains one ``TrialSpec`` in this process; ``run_experiment`` runs many in
worker processes that share one results database.

Timing (AlgoPerf-style): the clock runs over data loading, forward, backward, ``optimizer.step()`` and the
schedule; evaluation is untimed. Both wall time (``time.perf_counter``) and process time
(``time.process_time``) are logged; process time well below wall time flags a contended machine.
``optimizer_seconds`` is the wall time inside ``optimizer.step()``; for closure optimizers the first closure
call of each step (the forward/backward every optimizer needs) is subtracted, so extra gradient evaluations
count as optimizer overhead. ``train_seconds`` is the timed wall total; ``extras["cpu_seconds"]`` its
process-time twin.

``stop_at_target`` is off by default: every run goes to the workload's budget so curves and final-loss
ratios are comparable; steps/seconds to target are still those of the first evaluation that reached it.
Turn it on for AlgoPerf's stop-at-target behaviour (shorter runs, truncated curves).
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..factory import create_optimizer
from ..gap.stats import GradientStats
from ..registry import optimizer_info
from . import schedules
from .records import CurvePoint, TrialResult, TrialSpec
from .storage import FINISHED, ResultsDB, describe_run, make_worker_id
from .workload import DataMissing, Workload
from .workloads import get_workload

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class _Diverged(Exception):
    pass


def _jsonable(value: Any) -> Any:
    """Optimizer introspection (tensors, numpy, tuples, dicts) as plain JSON values."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _hparams(spec: TrialSpec) -> dict[str, Any]:
    """Spec hyperparameters with JSON lists turned back into tuples (``betas``, candidate grids)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in spec.hparams.items()}


def effective_lr(optimizer: Any) -> float:
    """The step size the optimizer will use next, as a learning rate: ``optimizer.effective_lr()`` where the class
    defines it (auto: d·ψ; Prodigy / D-Adaptation: d·lr), else the first param group's ``lr``."""
    fn = getattr(optimizer, "effective_lr", None)
    try:
        value = fn() if callable(fn) else optimizer.param_groups[0]["lr"]
        return float(value)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return 0.0


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass


def _evaluate(workload: Workload, model: torch.nn.Module,
              optimizer: torch.optim.Optimizer | None = None) -> dict[str, float]:
    """The workload's metrics; an optimizer with ``eval()``/``train()`` (Schedule-Free: the parameters hold the
    interpolated point y while training, the average x is what is evaluated) is switched to evaluation weights and
    back around it."""
    was_training = model.training
    swap = optimizer is not None and callable(getattr(optimizer, "eval", None)) \
        and callable(getattr(optimizer, "train", None))
    if swap:
        optimizer.eval()
    model.eval()
    try:
        with torch.no_grad():
            metrics = {k: float(v) for k, v in workload.evaluate(model).items()}
    finally:
        model.train(was_training)
        if swap:
            optimizer.train()
    if workload.metric not in metrics:
        raise KeyError(f"workload {workload.name or type(workload).__name__}.evaluate() returned "
                       f"{sorted(metrics)}, without its metric {workload.metric!r}")
    return metrics


class _Trainer:
    """One training step with the right calling convention, timing the optimizer's share."""

    def __init__(self, workload: Workload, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 needs_closure: bool, probe: GradientStats | None = None) -> None:
        # the instance may say more than its record: Lookahead needs what its base needs
        self.workload, self.model, self.optimizer = workload, model, optimizer
        self.needs_closure = needs_closure or bool(getattr(optimizer, "needs_closure", False))
        self.create_graph = bool(getattr(optimizer, "needs_create_graph", False))
        self.probe = probe
        self.optimizer_seconds = 0.0
        self.untimed_seconds = 0.0  # the probe's share of a step (wall, CPU), taken off the clocks by run_trial
        self.untimed_cpu_seconds = 0.0

    def _backward(self, loss: torch.Tensor) -> None:
        graph_step = getattr(self.optimizer, "next_step_needs_graph", None)  # only Hessian steps need the graph
        if not self.create_graph or (graph_step is not None and not graph_step()):
            loss.backward()
            return
        with warnings.catch_warnings():  # the grad↔param cycle it warns about is broken by zero_grad(set_to_none)
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
            loss.backward(create_graph=True)

    def _probe(self) -> float:
        """Feed the gradients to the probe; return the seconds it took (not optimizer time)."""
        if self.probe is None:
            return 0.0
        t0, c0 = time.perf_counter(), time.process_time()
        self.probe.update()
        spent = time.perf_counter() - t0
        self.untimed_seconds += spent
        self.untimed_cpu_seconds += time.process_time() - c0
        return spent

    def step(self, batch: Any) -> float:
        opt, model, wl = self.optimizer, self.model, self.workload
        if not self.needs_closure:
            opt.zero_grad(set_to_none=True)
            loss = wl.loss(model, batch)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise _Diverged(f"non-finite training loss {value}")
            self._backward(loss)
            self._probe()
            t0 = time.perf_counter()
            opt.step()
            self.optimizer_seconds += time.perf_counter() - t0
            return value
        calls: list[float] = []

        def closure() -> torch.Tensor:
            c0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out = wl.loss(model, batch)
            self._backward(out)
            probed = self._probe() if not calls else 0.0  # the step's own gradients, once
            calls.append(time.perf_counter() - c0 - probed)
            return out

        if hasattr(opt, "set_batch"):  # bounds the loss from the model's graph: it needs the batch itself
            _, inputs, targets = wl.loss_inputs(batch)
            opt.set_batch(inputs, targets)
        t0, probe0 = time.perf_counter(), self.untimed_seconds
        loss = opt.step(closure)
        total = time.perf_counter() - t0 - (self.untimed_seconds - probe0)
        self.optimizer_seconds += total - (calls[0] if calls else 0.0)
        value = float("nan") if loss is None else float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        if not math.isfinite(value):
            raise _Diverged(f"non-finite training loss {value}")
        return value


def run_trial(spec: TrialSpec, workload: Workload | None = None, *, stop_at_target: bool = False,
              eval_at_start: bool = True, warmup_steps: int = 2, max_steps: int | None = None,
              on_eval: Callable[[CurvePoint], None] | None = None, gradient_probe: bool = True) -> TrialResult:
    """Train ``spec`` in this process and return its result; never raises for a failing trial.

    ``workload`` overrides ``get_workload(spec.workload)``. One thread (``torch.set_num_threads(1)``, the
    previous value restored afterwards; ``OMP/MKL/OPENBLAS_NUM_THREADS=1`` for child processes). The model is
    built from ``spec.seed``; ``warmup_steps`` steps on a throw-away copy warm up kernels and allocators before
    the clock starts. Evaluations at step 0 (``eval_at_start``), every ``eval_every`` steps and at the last
    step. A non-finite loss (or metric) gives status ``"diverged"``, an exception ``"failed"`` with the error.
    Optimizers with ``selection()`` / ``gap_stats()`` get ``extras["selection"] = [[step, selection], ...]``
    and ``extras["gap_stats"]`` (the last one). ``extras["lr_peak"]``: the largest step size the optimizer used, as a
    learning rate (``effective_lr``: a learning-rate-free method's own step, a schedule's peak). Gap-family trials also carry a ``GradientStats`` probe (run after
    each backward pass, off the clock; ``gradient_probe=False`` leaves it out, e.g. to time the optimizer alone,
    since the probe's memory traffic still slows the step after it): ``extras["gradient_stats"] = [[step,
    summary], ...]``, its noise scale, fitted ρ and predicted β* at every evaluation. Optimizer classes with ``needs_create_graph`` get
    ``loss.backward(create_graph=True)`` (AdaHessian, FOSI: Hessian-vector products).
    """
    os.environ.update(THREAD_ENV)
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    torch.set_num_threads(1)
    result = TrialResult(spec=spec, status="failed")
    clock = {"wall": 0.0, "cpu": 0.0}
    trainer: _Trainer | None = None
    t_begin = time.perf_counter()
    try:
        workload = get_workload(spec.workload) if workload is None else workload
        budget = workload.max_steps if max_steps is None else int(max_steps)
        workload.prepare()
        info = optimizer_info(spec.optimizer)
        hparams = _hparams(spec)
        if info.needs_batch and "loss" not in hparams:  # Universal MM: the loss it bounds is the workload's
            stated = workload.loss_inputs(next(iter(workload.train_batches(spec.seed))))
            if stated is None:
                raise ValueError(f"{info.name} needs the workload's loss as F.mse_loss or F.cross_entropy of "
                                 f"model(inputs); {workload.name} does not state one (Workload.loss_inputs)")
            hparams["loss"] = stated[0]
        if info.takes_total_steps and "total_steps" not in hparams:
            hparams["total_steps"] = workload.step_hint  # the planned run length (auto's horizon, Celo's t/N)
            # the budget runs past the step hint by design (schedules end there too): no warning about it
            warnings.filterwarnings("ignore", message=r"auto: step \d+ is past total_steps", category=RuntimeWarning)
        _seed_everything(spec.seed)
        model = workload.build_model(spec.seed)
        if warmup_steps > 0:
            _warm_up(workload, model, spec, hparams, info.needs_closure, warmup_steps)
        _seed_everything(spec.seed + 1)
        optimizer = create_optimizer(model, spec.optimizer, **hparams)
        scheduler = schedules.attach(optimizer, spec.schedule, workload.step_hint)
        probe = GradientStats(list(model.parameters())) if info.family == "gap" and gradient_probe else None
        trainer = _Trainer(workload, model, optimizer, info.needs_closure, probe)
        batches = iter(workload.train_batches(spec.seed))
        model.train()
        selection: list[list[Any]] = []
        lr_seen = {"peak": 0.0}

        def evaluate(step: int, window: list[float]) -> bool:
            metrics = _evaluate(workload, model, optimizer)
            if window:
                metrics["train_loss"] = sum(window) / len(window)
            point = CurvePoint(step, clock["wall"], clock["cpu"], metrics)
            result.curve.append(point)
            if hasattr(optimizer, "selection"):
                selection.append([step, _jsonable(optimizer.selection())])
                result.extras["selection"] = selection
            if hasattr(optimizer, "gap_stats"):
                result.extras["gap_stats"] = _jsonable(optimizer.gap_stats())
            if lr_seen["peak"] > 0:
                result.extras["lr_peak"] = lr_seen["peak"]
            if probe is not None and probe.steps:
                result.extras.setdefault("gradient_stats", []).append([step, _jsonable(probe.summary())])
            if on_eval is not None:
                on_eval(point)
            value = metrics[workload.metric]
            if not math.isfinite(value):
                raise _Diverged(f"non-finite {workload.metric} {value} at step {step}")
            if result.steps_to_target is None and workload.reached(value):
                result.steps_to_target, result.seconds_to_target = step, clock["wall"]
            return result.steps_to_target is not None and stop_at_target

        if eval_at_start and evaluate(0, []):
            budget = 0
        window: list[float] = []
        for step in range(1, budget + 1):
            w0, c0 = time.perf_counter(), time.process_time()
            u0, uc0 = trainer.untimed_seconds, trainer.untimed_cpu_seconds
            try:
                window.append(trainer.step(next(batches)))
                if scheduler is not None:
                    scheduler.step()
                result.steps = step
            finally:
                # the probe is measurement, not training
                clock["wall"] += time.perf_counter() - w0 - (trainer.untimed_seconds - u0)
                clock["cpu"] += time.process_time() - c0 - (trainer.untimed_cpu_seconds - uc0)
            lr_seen["peak"] = max(lr_seen["peak"], effective_lr(optimizer))  # off the clock: a read of the groups
            if step % workload.eval_every == 0 or step == budget:
                if evaluate(step, window):
                    break
                window = []
        result.status = "done"
        if result.curve:
            result.final_metrics = dict(result.curve[-1].metrics)
    except _Diverged as exc:
        result.status, result.error = "diverged", str(exc)
    except FloatingPointError as exc:  # optfit optimizers raise this on a non-finite gradient
        result.status, result.error = "diverged", f"{type(exc).__name__}: {exc}"
    except DataMissing as exc:  # the message names the command that fetches the data
        result.status, result.error = "failed", f"DataMissing: {exc}"
    except Exception as exc:  # noqa: BLE001 - a failing trial is a result, not a crash of the runner
        tb = traceback.format_exc(limit=-6)
        result.status, result.error = "failed", f"{type(exc).__name__}: {exc}\n{tb}"
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
    if result.status != "done" and result.curve:
        result.final_metrics = dict(result.curve[-1].metrics)
    result.train_seconds = clock["wall"]
    result.optimizer_seconds = trainer.optimizer_seconds if trainer is not None else 0.0
    result.extras.update(cpu_seconds=clock["cpu"], total_seconds=time.perf_counter() - t_begin,
                         stop_at_target=stop_at_target, warmup_steps=warmup_steps)
    return result


def _warm_up(workload: Workload, model: torch.nn.Module, spec: TrialSpec, hparams: dict[str, Any],
             needs_closure: bool, steps: int) -> None:
    """A few untimed steps on a copy of the model (same data stream, discarded) so that lazy kernel and
    allocator set-up does not land in the first timed steps. Failures here surface in the real run."""
    import copy
    try:
        clone = copy.deepcopy(model)
        opt = create_optimizer(clone, spec.optimizer, **hparams)
        trainer = _Trainer(workload, clone, opt, needs_closure)
        batches = iter(workload.train_batches(spec.seed))
        for _ in range(steps):
            trainer.step(next(batches))
    except Exception:  # noqa: BLE001 - the timed run reports the real error
        pass


# -- many trials, many processes ----------------------------------------------------------------------------

@dataclass
class _Options:
    stale_after: float | None = 300.0
    max_attempts: int = 3
    heartbeat_s: float = 10.0
    stop_at_target: bool = False


class _Heartbeat(threading.Thread):
    """Refreshes the claimed trial's heartbeat every ``interval`` s on its own connection."""

    def __init__(self, db_path: str, experiment: str, key: str, worker_id: str, interval: float) -> None:
        super().__init__(daemon=True)
        self.args = (db_path, experiment, key, worker_id)
        self.interval, self.stop_event = interval, threading.Event()

    def run(self) -> None:
        db_path, experiment, key, worker_id = self.args
        try:
            with ResultsDB(db_path, check=False) as db:
                while not self.stop_event.wait(self.interval):
                    db.heartbeat(experiment, key, worker_id)
        except Exception:  # noqa: BLE001 - a missed heartbeat only risks a rerun, never a wrong result
            pass

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=5)


def work(db_path: str | os.PathLike[str], experiment: str, options: _Options | None = None,
         worker_id: str | None = None, on_result: Callable[[TrialResult], None] | None = None) -> int:
    """Claim and run trials of ``experiment`` until none is left; returns how many this worker ran.
    An interrupted trial (Ctrl-C, SIGTERM) is released back to the queue."""
    options = options or _Options()
    worker_id = worker_id or make_worker_id()
    done = 0
    with ResultsDB(db_path, check=False) as db:
        while True:
            spec = db.claim_next(experiment, worker_id, stale_after=options.stale_after,
                                 max_attempts=options.max_attempts)
            if spec is None:
                return done
            beat = _Heartbeat(str(db_path), experiment, spec.key(), worker_id, options.heartbeat_s)
            beat.start()
            try:
                result = run_trial(spec, stop_at_target=options.stop_at_target)
            except BaseException:
                beat.stop()
                db.release(experiment, spec.key(), worker_id)
                raise
            beat.stop()
            db.record_result(result, experiment=experiment, worker_id=worker_id)
            done += 1
            if on_result is not None:
                on_result(result)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send ``sig`` to this process when its parent dies (``prctl(PR_SET_PDEATHSIG)``)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol
        return False


def _watch_parent(parent: int, interval: float = 1.0, grace: float = 15.0) -> threading.Thread:
    """Fallback for ``PR_SET_PDEATHSIG`` (other systems, or a parent that died before it was set): a daemon
    thread that sends this process SIGTERM once its parent is gone (then exits hard after ``grace`` seconds)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(143)

    thread = threading.Thread(target=watch, name="optfit-parent-watch", daemon=True)
    thread.start()
    return thread


def _worker_main(argv: list[str]) -> int:
    """A worker process: claims trials until none is left. It dies with the ``run_experiment`` that started it
    (SIGTERM on the parent's death: ``PR_SET_PDEATHSIG`` on Linux, a parent-pid watchdog everywhere), and
    SIGTERM releases its trial back to the queue. Ctrl-C is the parent's to handle (it stops the workers)."""
    db_path, experiment, opts = argv[0], argv[1], json.loads(argv[2])
    parent = int(argv[3]) if len(argv) > 3 else os.getppid()

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 143
    _watch_parent(parent)
    try:
        work(db_path, experiment, _Options(**opts))
    except KeyboardInterrupt:
        return 130
    return 0


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


class _Progress:
    """Progress on stderr through ``tqdm``: on a terminal a live bar (done/total, elapsed time, ETA) with one line
    per finished trial above it; elsewhere (a log file, a pipe) only the lines, each starting with tqdm's
    ``[done/total elapsed<ETA]``. Trials finished before this run count as done but not in the rate."""

    def __init__(self, total: int, enabled: bool, finished: Iterable[str] = (), file: Any = None) -> None:
        from tqdm import tqdm

        self.enabled, self.total, self.seen, self.since = enabled, total, set(finished), 0.0
        self.file = sys.stderr if file is None else file
        self.initial, self.start = len(self.seen), time.monotonic()
        self.format_meter = tqdm.format_meter
        self.bar = None
        isatty = getattr(self.file, "isatty", None)
        if enabled and callable(isatty) and isatty():
            self.bar = tqdm(total=total, initial=self.initial, unit="trial", file=self.file, dynamic_ncols=True,
                            smoothing=0.0, desc="trials")

    def meter(self) -> str:
        """``[n/total elapsed<remaining]`` (tqdm's formatting; ``?`` until a trial of this run has finished)."""
        return self.format_meter(len(self.seen), self.total, time.monotonic() - self.start, initial=self.initial,
                                 bar_format="[{n_fmt}/{total_fmt} {elapsed}<{remaining}]")

    def update(self, db: ResultsDB, experiment: str) -> None:
        if not self.enabled:
            return
        from .workloads import display_name

        rows = db.trials(experiment, FINISHED, finished_after=self.since - 10.0)  # margin: stamp ≠ commit order
        for row in rows:
            self.since = max(self.since, row["finished"] or 0.0)
            if row["key"] in self.seen:
                continue
            self.seen.add(row["key"])
            spec = row["spec"]
            ttt = (f"target at step {row['steps_to_target']} ({row['seconds_to_target']:.2f}s)"
                   if row["steps_to_target"] is not None else "target not reached")
            line = (f"{display_name(spec.workload)} {spec.label or spec.optimizer} seed={spec.seed} {row['status']}: "
                    f"{ttt}, {row['steps'] or 0} steps in {row['train_seconds'] or 0:.2f}s")
            if row["status"] == "failed" and row["error"]:
                line += f" — {row['error'].splitlines()[0]}"
            if self.bar is not None:
                self.bar.write(line, file=self.file)
                self.bar.update(1)
            else:
                print(f"{self.meter()} {line}", file=self.file, flush=True)
        if self.bar is not None:
            self.bar.refresh()  # elapsed time and ETA move on between trials too

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def check_data(workloads: Iterable[str]) -> None:
    """Raise ``DataMissing`` listing every workload in ``workloads`` whose data is absent (``Workload.check_data``)
    and the one ``optfit data prepare`` command that fetches it all. Names that do not resolve are left to the
    trials, which record the error."""
    from .data import MANIFEST, PREPARE_HINT

    missing: list[tuple[str, str]] = []
    for name in dict.fromkeys(workloads):
        try:
            workload = get_workload(name)
        except Exception:  # noqa: BLE001 - the trial reports it
            continue
        try:
            workload.check_data()
        except DataMissing as exc:
            missing.append((name, str(exc)))
    if not missing:
        return
    from .workloads import display_name

    shown = {name: display_name(name) + (f" ({name})" if display_name(name) != name else "") for name, _ in missing}
    lines = "\n".join(f"  {shown[name]}: {message}" for name, message in missing)
    needed = [d for name, _ in missing for d in getattr(get_workload(name), "datasets", ()) if d in MANIFEST]
    fix = f"`{PREPARE_HINT} --only {','.join(dict.fromkeys(needed))}`" if needed else f"`{PREPARE_HINT}`"
    raise DataMissing(f"the data of {len(missing)} workload(s) is missing, so no trial was started:\n{lines}\n"
                      f"run {fix} first (`optfit data status` shows the cache)")


def _spawn(db_path: str, experiment: str, opts: _Options) -> subprocess.Popen:
    env = dict(os.environ, **THREAD_ENV)
    paths = [p or os.getcwd() for p in sys.path] + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in paths if p))
    # SIGINT ignored from the first line: Ctrl-C reaches the whole process group, and the parent stops its workers
    code = ("import signal; signal.signal(signal.SIGINT, signal.SIG_IGN); import sys; "
            "from optfit.bench.runner import _worker_main; sys.exit(_worker_main(sys.argv[1:]))")
    return subprocess.Popen([sys.executable, "-c", code, db_path, experiment, json.dumps(opts.__dict__),
                             str(os.getpid())], env=env)


def run_experiment(specs: Iterable[TrialSpec], db_path: str | os.PathLike[str], experiment: str, *,
                   workers: int | None = None, progress: bool = True, command: str | None = None,
                   stop_at_target: bool = False, retry_failed: bool = True, stale_after: float | None = 300.0,
                   max_attempts: int = 3, heartbeat_s: float = 10.0, poll_s: float = 0.5, join: bool = False,
                   check_data_first: bool = True) -> list[TrialResult]:
    """Queue ``specs`` under ``experiment`` in the database at ``db_path`` and run what is not finished.

    Runs ``min(workers, usable CPUs, pending trials)`` worker processes (``workers=None``: one per usable
    CPU; ``workers=0``: in this process, without crash isolation). Each worker claims trials one at a time,
    so a crash or ``kill -9`` loses only the trial in flight; that trial is rerun (at most ``max_attempts``
    claims) and a dead worker is replaced while queued trials outnumber the live ones. Re-running the same
    call resumes: finished trials are skipped (failed ones are retried when ``retry_failed``); queued trials
    of the experiment that are not in ``specs`` run too. Trials never run in the parent when ``workers`` > 0.

    Workers die with the process that called this (``kill -9`` included; see ``_worker_main``), and Ctrl-C or
    SIGTERM stops them, their trials going back to the queue. Another live run on the same database (any
    experiment) raises ``RunInProgress`` naming its pid before anything is queued, unless ``join=True``: then
    this run says so on stderr and works alongside it (on the same experiment, both share the queue).
    With ``check_data_first`` the workloads of the pending trials must have their data (``Workload.check_data``)
    or ``DataMissing`` is raised before any trial starts. Progress: tqdm on stderr (see ``_Progress``).
    Returns the experiment's finished results.
    """
    db_path = str(Path(db_path))
    opts = _Options(stale_after=stale_after, max_attempts=max_attempts, heartbeat_s=heartbeat_s,
                    stop_at_target=stop_at_target)
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be a non-negative int or None, got {workers!r}")
    specs = list(specs)
    for i, spec in enumerate(specs):
        if not isinstance(spec, TrialSpec):
            raise TypeError(f"specs[{i}] must be a TrialSpec, got {type(spec).__name__}")
    with ResultsDB(db_path) as db:
        run_key, others = db.begin_run(experiment, command if command is not None else " ".join(sys.argv),
                                       join=join)
        try:
            if others:
                print(f"{experiment}: joining the run(s) already working on {db_path}: "
                      f"{'; '.join(describe_run(r) for r in others)} (they share the CPUs"
                      f"{' and, on this experiment, the queue' if any(r.get('experiment') == experiment for r in others) else ''})",
                      file=sys.stderr, flush=True)
            db.add_trials(experiment, specs, command=command, retry_failed=retry_failed)
            counts = db.counts(experiment)
            pending = counts["queued"] + counts["running"]
            if pending and check_data_first:
                check_data(r["workload"] for r in db.trials(experiment, ("queued", "running")))
            if pending and progress:
                print(f"{experiment}: {pending} of {sum(counts.values())} trials to run", file=sys.stderr, flush=True)
            bar = _Progress(sum(counts.values()), progress and pending > 0,
                            (r["key"] for r in db.trials(experiment, FINISHED)))
            try:
                if pending and workers == 0:
                    work(db_path, experiment, opts, on_result=lambda _: bar.update(db, experiment))
                elif pending:
                    _supervise(db, db_path, experiment, opts, min(workers or usable_cpus(), usable_cpus(), pending),
                               bar, poll_s)
                bar.update(db, experiment)
            finally:
                bar.close()
            return db.results(experiment)
        finally:
            db.end_run(run_key)


def _supervise(db: ResultsDB, db_path: str, experiment: str, opts: _Options, n: int, bar: _Progress,
               poll_s: float) -> None:
    """Keep up to ``n`` workers busy. When a worker exits, trials of dead workers are requeued (or failed after
    ``max_attempts``) and a replacement starts only if queued trials outnumber the live workers. Workers that
    die three times in a row before claiming anything (a broken environment) stop the run."""
    procs: list[subprocess.Popen] = []
    futile, mark = 0, -1
    try:
        while True:
            alive = [p for p in procs if p.poll() is None]
            dead = [p for p in procs if p.poll() is not None]
            procs = alive
            if dead or not procs:
                if any(p.returncode != 0 for p in dead):
                    futile = futile + 1 if db.attempts(experiment) == mark else 0
                    if futile >= 3:
                        raise RuntimeError(f"{experiment}: worker processes exit (code {dead[-1].returncode}) before "
                                           "running a trial; see their messages above, or run with workers=0")
                db.reclaim(experiment, stale_after=opts.stale_after, max_attempts=opts.max_attempts)
                queued = db.counts(experiment)["queued"]
                if not procs and not queued:
                    return
                mark = db.attempts(experiment)
                while queued > len(procs) and len(procs) < n:
                    procs.append(_spawn(db_path, experiment, opts))
            time.sleep(poll_s)
            bar.update(db, experiment)
    except BaseException:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise
