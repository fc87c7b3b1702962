"""Schedules (hand values), ``run_trial`` (against a hand-written loop, timing, failure modes) and
``run_experiment`` (real worker processes, crash isolation, kill -9 and resume)."""

from __future__ import annotations

import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import optfit.bench.runner as runner
from optfit import create_optimizer
from optfit.bench import schedules
from optfit.bench.protocols import fixed
from optfit.bench.records import TrialSpec
from optfit.bench.runner import run_experiment, run_trial
from optfit.bench.storage import ResultsDB, RunInProgress, _pid_alive
from optfit.bench.workload import DataMissing
from tests.bench.runner_workloads import TinyRegression

MOD = "tests.bench.runner_workloads"
ROOT = Path(__file__).resolve().parents[2]


def spec(workload: str = "TinyRegression", optimizer: str = "sgd", seed: int = 0, **hparams) -> TrialSpec:
    return TrialSpec(workload=f"{MOD}:{workload}", optimizer=optimizer, hparams=hparams or {"lr": 0.1}, seed=seed)


# -- schedules -------------------------------------------------------------------------------------------------

def test_warmup_cosine_hand_values():
    m = schedules.WarmupCosine(step_hint=4)
    assert [m(t) for t in range(6)] == pytest.approx([1.0, 0.8535533906, 0.5, 0.1464466094, 0.0, 0.0])
    m = schedules.multiplier({"kind": "warmup_cosine", "warmup": 0.1}, step_hint=100)  # W = 10, H = 100
    assert [m(t) for t in (0, 4, 9, 10, 55, 100, 500)] == pytest.approx([0.1, 0.5, 1.0, 1.0, 0.5, 0.0, 0.0])
    m = schedules.multiplier({"kind": "warmup_cosine", "warmup_steps": 10, "final": 0.1}, step_hint=100)
    assert [m(t) for t in (55, 100)] == pytest.approx([0.55, 0.1])
    assert schedules.multiplier(None, 10)(7) == 1.0 == schedules.multiplier({"kind": "constant"}, 10)(3)


def test_warmup_linear_and_wsd_hand_values():
    m = schedules.multiplier({"kind": "warmup_linear", "warmup": 0.2}, step_hint=10)  # W = 2, H = 10
    assert [m(t) for t in (0, 1, 2, 6, 10, 12)] == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.0, 0.0])
    m = schedules.multiplier({"kind": "wsd", "warmup_steps": 2, "decay_fraction": 0.4, "decay_shape": "linear",
                              "final": 0.1}, step_hint=10)  # stable to step 5, then 4 steps down to 0.1
    assert [m(t) for t in (0, 1, 5, 6, 8, 10)] == pytest.approx([0.5, 1.0, 1.0, 1.0, 0.55, 0.1])
    m = schedules.multiplier({"kind": "wsd"}, step_hint=100)  # defaults: 20 % decay, 1 − √s
    assert [m(t) for t in (0, 79, 80, 85, 100)] == pytest.approx([1.0, 1.0, 1.0, 1 - 0.25 ** 0.5, 0.0])


@pytest.mark.parametrize("schedule, cls", [({"kind": "warmup_cosine"}, "WarmupCosine"),
                                           ({"kind": "warmup_linear", "warmup": 0.1}, "WarmupLinear"),
                                           ({"kind": "wsd", "decay_shape": "cosine"}, "WSD")])
def test_attach_builds_the_optfit_scheduler(schedule, cls):
    import optfit.schedules

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = schedules.attach(opt, schedule, step_hint=20)
    assert type(sched) is getattr(optfit.schedules, cls)
    m = schedules.multiplier(schedule, step_hint=20)
    for t in range(22):
        assert opt.param_groups[0]["lr"] == 2.0 * m(t)
        opt.step()
        sched.step()


def test_schedule_drives_the_optimizer_lr():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = schedules.attach(opt, {"kind": "warmup_cosine", "warmup_steps": 2}, step_hint=4)
    seen = []
    for _ in range(5):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1.0, 2.0, 2.0, 1.0, 0.0])
    assert schedules.attach(opt, None, 4) is None


@pytest.mark.parametrize("bad, match", [({"kind": "step"}, "unknown; choose from constant, warmup_cosine"),
                                        ({"kind": "warmup_cosine", "warmup": 1.5}, "warmup"),
                                        ({"kind": "warmup_cosine", "warmup": 0.1, "warmup_steps": 3}, "not both"),
                                        ({"kind": "constant", "warmup": 0.1}, "does not take warmup"),
                                        ({"kind": "warmup_cosine", "warmup_steps": 10}, "warmup_steps"),
                                        ({"kind": "wsd", "decay_shape": "step"}, "decay_shape"),
                                        ({"kind": "wsd", "decay": 0.1}, "does not take decay"),
                                        ({"kind": "warmup_linear", "final": 2.0}, "final")])
def test_schedule_errors_name_the_argument(bad, match):
    with pytest.raises(ValueError, match=match):
        schedules.multiplier(bad, step_hint=10)


# -- run_trial -------------------------------------------------------------------------------------------------

def hand_loop(optimizer: str, hparams: dict, warmup_steps: int) -> list[tuple[int, float]]:
    """The protocol written out by hand: seed, model, optimizer, schedule, evaluation every 10 steps."""
    wl = TinyRegression()
    model = wl.build_model(0)
    opt = create_optimizer(model, optimizer, **hparams)
    def lam(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (t - warmup_steps) / (60 - warmup_steps)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    batches = wl.train_batches(0)
    out = [(0, wl.evaluate(model)["loss"])]
    for step in range(1, 61):
        batch = next(batches)

        def closure():
            opt.zero_grad()
            loss = wl.loss(model, batch)
            loss.backward()
            return loss

        if optimizer == "grad-avg":
            opt.step(closure)
        else:
            closure()
            opt.step()
        sched.step()
        if step % 10 == 0:
            with torch.no_grad():
                out.append((step, wl.evaluate(model)["loss"]))
    return out


@pytest.mark.parametrize("optimizer, hparams", [("sgd", {"lr": 0.1, "momentum": 0.9}), ("grad-avg", {"lr": 0.1})])
def test_run_trial_matches_a_hand_written_loop(optimizer, hparams):
    s = TrialSpec(f"{MOD}:TinyRegression", optimizer, hparams, schedule={"kind": "warmup_cosine", "warmup": 0.1})
    threads = torch.get_num_threads()
    res = run_trial(s)
    assert torch.get_num_threads() == threads and os.environ["OMP_NUM_THREADS"] == "1"
    assert res.status == "done", res.error
    expected = hand_loop(optimizer, hparams, warmup_steps=6)
    assert [p.step for p in res.curve] == [s for s, _ in expected]
    assert [p.metrics["loss"] for p in res.curve] == pytest.approx([v for _, v in expected], rel=1e-5)
    first = next(p for p in res.curve if p.metrics["loss"] <= TinyRegression.target)
    assert (res.steps_to_target, res.seconds_to_target) == (first.step, first.wall_s)
    assert res.steps == 60 and res.final_metrics == res.curve[-1].metrics
    assert 0 < res.optimizer_seconds < res.train_seconds
    assert "train_loss" in res.curve[1].metrics and "train_loss" not in res.curve[0].metrics
    assert [p.wall_s for p in res.curve] == sorted(p.wall_s for p in res.curve)


def test_stop_at_target():
    res = run_trial(spec(), stop_at_target=True)
    assert res.status == "done" and res.steps == res.steps_to_target == res.curve[-1].step < 60


def test_evaluation_is_not_timed():
    res = run_trial(spec("SlowEval"))  # 7 evaluations × 50 ms of sleep, 60 tiny steps
    assert res.extras["total_seconds"] > 0.35
    assert res.train_seconds < res.extras["total_seconds"] - 0.3


def test_wall_and_process_time_are_both_logged():
    res = run_trial(spec("SlowStep"))  # 30 steps sleeping 10 ms: wall time grows, process time hardly
    assert res.status == "done" and res.train_seconds >= 0.3
    assert res.extras["cpu_seconds"] < 0.5 * res.train_seconds
    assert res.curve[-1].wall_s == pytest.approx(res.train_seconds)
    assert res.curve[-1].cpu_s == pytest.approx(res.extras["cpu_seconds"])


def test_divergence_is_detected():
    res = run_trial(spec(lr=1e3))
    assert res.status == "diverged" and "non-finite training loss" in res.error
    assert 0 < res.steps < 60 and res.steps_to_target is None


@pytest.mark.parametrize("workload, optimizer, hparams, match", [
    ("Boom", "sgd", {"lr": 0.1}, "RuntimeError: boom at batch 5"),
    ("Missing", "sgd", {"lr": 0.1}, "optfit data prepare"),
    ("NoMetric", "sgd", {"lr": 0.1}, "without its metric 'loss'"),
    ("TinyRegression", "no-such-optimizer", {"lr": 0.1}, "unknown optimizer"),
    ("TinyRegression", "sgd", {"lr": 0.1, "bogus": 1}, "bogus"),
    ("NoSuchClass", "sgd", {"lr": 0.1}, "not a Workload subclass"),
])
def test_failures_become_failed_results(workload, optimizer, hparams, match):
    res = run_trial(spec(workload, optimizer, **hparams))
    assert res.status == "failed" and match in res.error


def test_boom_keeps_the_curve_so_far():
    res = run_trial(spec("Boom"))
    assert res.steps == 5 and [p.step for p in res.curve] == [0] and res.final_metrics == res.curve[0].metrics


class FakeGap(torch.optim.SGD):
    """An SGD that reports a 'selection' (its step count) and gap statistics, like the gap optimizers will."""

    def __init__(self, params, lr):
        super().__init__(params, lr=lr)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)

    def selection(self):
        return torch.tensor(self.steps % 3)

    def gap_stats(self):
        return {"steps": torch.tensor([self.steps]), "beta": (0.5, 0.9)}


def test_selection_and_gap_stats_are_recorded(monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "create_optimizer", lambda model, name, **hp: FakeGap(model.parameters(), hp["lr"]))
    res = run_trial(spec())
    assert res.extras["selection"] == [[s, s % 3] for s in range(0, 61, 10)]
    assert res.extras["gap_stats"] == {"steps": [60], "beta": [0.5, 0.9]}
    with ResultsDB(tmp_path / "r.db") as db:  # and they survive the database
        db.record_result(res, experiment="e")
        assert db.results("e")[0].extras["selection"] == res.extras["selection"]


def test_gap_trials_carry_a_gradient_stats_probe_and_others_do_not():
    res = run_trial(spec(optimizer="gap-adamw", lr=0.05))
    assert res.status == "done", res.error
    stats = res.extras["gradient_stats"]
    assert [s for s, _ in stats] == list(range(10, 61, 10))  # every evaluation after the first step
    last = stats[-1][1]
    assert last["steps"] == 60 and 0.0 <= last["predicted_beta"] < 1.0 and len(last["autocorrelation"]) == 9
    assert "gradient_stats" not in run_trial(spec()).extras
    without = run_trial(spec(optimizer="gap-adamw", lr=0.05), gradient_probe=False)
    assert without.status == "done" and "gradient_stats" not in without.extras
    assert without.final_metrics == res.final_metrics  # the probe only reads the gradients


class NeedsGraph(torch.optim.SGD):
    """Asserts that the gradients it gets carry a graph (what Hessian-vector-product optimizers need)."""

    needs_create_graph = True
    seen: list[bool] = []

    def step(self, closure=None):
        NeedsGraph.seen.append(all(p.grad.grad_fn is not None for g in self.param_groups for p in g["params"]))
        with torch.no_grad():
            for g in self.param_groups:
                for p in g["params"]:
                    p.grad = p.grad.detach()
        return super().step(closure)


def test_optimizers_that_need_create_graph_get_it(monkeypatch):
    monkeypatch.setattr(runner, "create_optimizer", lambda model, name, **hp: NeedsGraph(model.parameters(), lr=0.1))
    NeedsGraph.seen.clear()
    res = run_trial(spec())
    assert res.status == "done", res.error
    assert NeedsGraph.seen and all(NeedsGraph.seen)


# -- run_experiment --------------------------------------------------------------------------------------------

def test_run_experiment_in_worker_processes_isolates_crashes_and_resumes(tmp_path, capfd):
    db = tmp_path / "r.db"
    # the crash kills a worker; its trial is failed (max_attempts=1) by the survivor or the supervisor
    specs = fixed(f"{MOD}:TinyRegression", ["sgd"], {"sgd": {"lr": 0.1}}, seeds=3) + [spec("Boom"), spec("Crash")]
    results = run_experiment(specs, db, "exp", workers=2, max_attempts=1, poll_s=0.1)
    by_workload = {}
    for r in results:
        by_workload.setdefault(r.spec.workload.split(":")[1], []).append(r)
    assert [r.status for r in by_workload["TinyRegression"]] == ["done"] * 3
    assert by_workload["Crash"][0].status == "failed" and "died" in by_workload["Crash"][0].error
    assert by_workload["Boom"][0].status == "failed"
    err = capfd.readouterr().err
    # tqdm's meter on every line when stderr is not a terminal: done/total, elapsed < remaining
    assert re.search(r"^\[5/5 \d\d:\d\d<\d\d:\d\d\] ", err, re.M) and "target at step" in err
    assert "tiny-regression sgd seed=0" in err  # the workload's own name, not its module path
    with ResultsDB(db) as d:
        before = {r["key"]: r["finished"] for r in d.trials("exp")}
        pids = {r["claimed_by"].split(":")[1] for r in d.trials("exp") if r["status"] == "done"}
        assert str(os.getpid()) not in pids  # trials ran in worker processes
    again = run_experiment(specs, db, "exp", workers=2, retry_failed=False, progress=False)
    assert [r.spec.key() for r in again] == [r.spec.key() for r in results]
    with ResultsDB(db) as d:
        assert {r["key"]: r["finished"] for r in d.trials("exp")} == before  # nothing was rerun


KILLABLE = """
import sys
from optfit.bench.protocols import fixed
from optfit.bench.runner import run_experiment
specs = fixed("tests.bench.runner_workloads:SlowStep", ["sgd"], {"sgd": {"lr": 0.1}}, seeds=4)
run_experiment(specs, sys.argv[1], "exp", workers=0, progress=False)  # trials run in this process
"""


def test_kill_9_of_a_running_experiment_then_resume(tmp_path):
    db = tmp_path / "r.db"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(db)], cwd=ROOT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            time.sleep(0.1)
            if db.exists():
                with ResultsDB(db, check=False) as d:
                    if d.counts("exp")["done"] >= 1 and d.counts("exp")["running"] == 1:
                        break
        else:
            pytest.fail("the experiment did not start in time")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with ResultsDB(db) as d:
        rows = d.trials("exp")
        done_before = {r["key"]: r["finished"] for r in rows if r["status"] == "done"}
        (in_flight,) = [r["key"] for r in rows if r["status"] == "running"]
    specs = fixed(f"{MOD}:SlowStep", ["sgd"], {"sgd": {"lr": 0.1}}, seeds=4)
    results = run_experiment(specs, db, "exp", workers=0, progress=False)
    assert len(results) == 4 and all(r.status == "done" for r in results)
    assert all(len(r.curve) == 4 for r in results)  # steps 0, 10, 20, 30
    with ResultsDB(db) as d:
        rows = {r["key"]: r for r in d.trials("exp")}
    assert rows[in_flight]["attempts"] == 2  # the interrupted trial was rerun
    assert all(rows[k]["finished"] == t and rows[k]["attempts"] == 1 for k, t in done_before.items())


def test_run_experiment_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="workers"):
        run_experiment([], tmp_path / "r.db", "exp", workers=-1)
    with pytest.raises(TypeError, match=r"specs\[0\]"):
        run_experiment([{"workload": "x"}], tmp_path / "r.db", "exp")
    assert json.loads(json.dumps(runner._Options().__dict__))  # worker options travel as JSON


class GraphEveryOther(NeedsGraph):
    """Needs the graph on odd steps only (like AdaHessian with update_period=2)."""

    steps = 0

    def next_step_needs_graph(self):
        return GraphEveryOther.steps % 2 == 0

    def step(self, closure=None):
        GraphEveryOther.steps += 1
        return super().step(closure)


def test_the_graph_is_built_only_for_steps_that_need_it(monkeypatch):
    monkeypatch.setattr(runner, "create_optimizer",
                        lambda model, name, **hp: GraphEveryOther(model.parameters(), lr=0.1))
    NeedsGraph.seen.clear()
    GraphEveryOther.steps = 0
    assert run_trial(spec(), warmup_steps=0).status == "done"
    assert NeedsGraph.seen[:6] == [True, False, True, False, True, False]


def test_evaluation_switches_optimizers_with_eval_weights_and_back():
    """Schedule-Free keeps y in the parameters while training; the runner evaluates the average x and restores y,
    even when the evaluation raises."""
    wl = TinyRegression()
    wl.prepare()
    model = wl.build_model(0)
    calls = []

    class EvalWeights(torch.optim.SGD):
        def eval(self):
            calls.append("eval")
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(2.0)

        def train(self):
            calls.append("train")
            with torch.no_grad():
                for p in model.parameters():
                    p.div_(2.0)

    opt = EvalWeights(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    shifted = runner._evaluate(wl, model, opt)
    plain = runner._evaluate(wl, model)
    assert calls == ["eval", "train"] and shifted != plain
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))

    wl.evaluate = lambda m: (_ for _ in ()).throw(RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        runner._evaluate(wl, model, opt)
    assert calls[-2:] == ["eval", "train"]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


# -- workers die with their parent; one run per database -------------------------------------------------------

WITH_WORKERS = """
import sys
from optfit.bench.protocols import fixed
from optfit.bench.runner import run_experiment
specs = fixed("tests.bench.runner_workloads:VerySlow", ["sgd"], {"sgd": {"lr": 0.1}}, seeds=6)
run_experiment(specs, sys.argv[1], "exp", workers=2, progress=False, poll_s=0.1)
"""


def _wait_for(db: Path, predicate, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        time.sleep(0.1)
        if db.exists():
            with ResultsDB(db, check=False) as d:
                if predicate(d):
                    return
    pytest.fail("the experiment did not get there in time")


def test_kill_9_of_the_parent_takes_its_workers_down(tmp_path):
    """The trials' worker processes die with the run (no orphans taking trials), their trials go back to the
    queue, and the rerun is not refused as a second run."""
    db = tmp_path / "r.db"
    proc = subprocess.Popen([sys.executable, "-c", WITH_WORKERS, str(db)], cwd=ROOT, start_new_session=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        _wait_for(db, lambda d: d.counts("exp")["running"] == 2)
        with ResultsDB(db) as d:
            workers = [int(r["claimed_by"].split(":")[1]) for r in d.trials("exp", ["running"])]
        assert proc.pid not in workers and len(set(workers)) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, as `kill -9 <pid>` does
        proc.wait()
        deadline = time.time() + 20
        while any(_pid_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_pid_alive(w) for w in workers), "workers outlived their parent"
        with ResultsDB(db) as d:
            claims, counts = d.attempts("exp"), d.counts("exp")
            assert counts["running"] == 0 and counts["queued"] + counts["done"] == 6  # released, not lost
            assert d.live_runs() == []  # the dead run's record is dropped
        time.sleep(1.5)
        with ResultsDB(db) as d:
            assert d.attempts("exp") == claims  # nobody takes trials any more
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


HOLDER = """
import sys, time
from optfit.bench.storage import ResultsDB
with ResultsDB(sys.argv[1]) as db:
    db.begin_run("other", "optfit bench run --experiment other")
print("ready", flush=True)
time.sleep(120)
"""


def test_a_second_run_on_a_database_is_refused_unless_it_joins(tmp_path, capfd):
    db = tmp_path / "r.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().strip() == "ready"
        specs = [spec(seed=s) for s in range(2)]
        with pytest.raises(RunInProgress, match=rf"in use by another run: pid {holder.pid} .*--join") as info:
            run_experiment(specs, db, "exp", workers=0, progress=False)
        assert info.value.runs[0]["experiment"] == "other"
        with ResultsDB(db) as d:
            assert d.counts("exp")["queued"] == 0  # refused before queueing anything
        results = run_experiment(specs, db, "exp", workers=0, progress=False, join=True)
        assert [r.status for r in results] == ["done", "done"]
        assert f"joining the run(s) already working on {db}: pid {holder.pid}" in capfd.readouterr().err
        holder.kill()
        holder.wait()
        assert len(run_experiment(specs, db, "exp", workers=0, progress=False)) == 2  # a dead run is no obstacle
    finally:
        holder.kill()
        holder.wait()


def test_a_run_checks_the_data_of_its_workloads_before_any_trial(tmp_path, monkeypatch):
    monkeypatch.setenv("OPTFIT_DATA", str(tmp_path / "empty-cache"))
    specs = [spec(), spec("NeedsMnist")]
    with pytest.raises(DataMissing, match=r"(?s)no trial was started:\n  needs-mnist \(tests\.bench\.runner_workloads:"
                                          r"NeedsMnist\): dataset 'mnist'.*run `optfit data prepare --only mnist` first"):
        run_experiment(specs, tmp_path / "r.db", "exp", workers=0, progress=False)
    with ResultsDB(tmp_path / "r.db") as d:
        assert d.attempts("exp") == 0 and d.counts("exp")["queued"] == 2 and d.live_runs() == []
    results = run_experiment(specs[:1], tmp_path / "r2.db", "exp", workers=0, progress=False)
    assert results[0].status == "done"  # a workload without datasets is not held up


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_is_a_tqdm_bar_with_elapsed_time_and_eta(tmp_path, monkeypatch):
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    run_experiment([spec(seed=s) for s in range(3)], tmp_path / "r.db", "exp", workers=0)
    out = term.getvalue()
    assert re.search(r"trials: +100%\|.*\| 3/3 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ ?s?/?trials?(/s)?\]", out), out
    assert "tiny-regression sgd seed=2 done" in out


@pytest.mark.parametrize("base", ["sam", "sophia"])
def test_lookahead_over_a_closure_or_hessian_base_runs(base):
    """The runner asks the optimizer instance what it needs: Lookahead over SAM needs a closure, over Sophia (with
    its graph-based Hutchinson estimate) the gradients' graph; both train."""
    result = run_trial(spec(optimizer="lookahead", base=base, lr=0.05))
    assert result.status == "done", result.error
    assert result.final_metrics["loss"] < result.curve[0].metrics["loss"]


# -- total_steps and the learning rate used ------------------------------------------------------------------------

def test_runner_gives_total_steps_to_optimizers_that_take_it_and_records_the_lr_used():
    wl = TinyRegression()
    res = run_trial(TrialSpec(workload=f"{MOD}:TinyRegression", optimizer="auto", hparams={}, seed=0))
    assert res.status == "done", res.error
    phase = res.extras["selection"][-1][1][0]["phase"]
    assert phase == f"linear decay to step {wl.step_hint}"
    assert res.extras["lr_peak"] == pytest.approx(max(
        s[0]["step_size"] for _, s in res.extras["selection"]), rel=0.5)  # the peak is between evaluations
    anytime = run_trial(TrialSpec(workload=f"{MOD}:TinyRegression", optimizer="auto-anytime", hparams={}, seed=0))
    assert anytime.extras["selection"][-1][1][0]["phase"].startswith(("constant", "decayed"))
    sgd = run_trial(spec())
    assert sgd.extras["lr_peak"] == 0.1


def test_runner_gives_a_batch_bounding_optimizer_the_batch_and_the_stated_loss():
    res = run_trial(TrialSpec(workload=f"{MOD}:StatedRegression", optimizer="universal-mm", hparams={}, seed=0))
    assert res.status == "done", res.error
    losses = [p.metrics["loss"] for p in res.curve]
    assert losses[-1] < losses[0] / 10
    refused = run_trial(TrialSpec(workload=f"{MOD}:TinyRegression", optimizer="universal-mm", hparams={}, seed=0))
    assert refused.status == "failed" and "does not state one" in refused.error
