"""The results database: resume, atomic claiming across processes, kill -9 safety, clear errors."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optfit.bench.records import CurvePoint, TrialResult, TrialSpec
from optfit.bench.storage import ResultsDB, ResultsDBError, make_worker_id

SRC = Path(__file__).resolve().parents[2] / "src"


def specs(n: int, workload: str = "w") -> list[TrialSpec]:
    return [TrialSpec(workload=workload, optimizer="sgd", hparams={"lr": 0.1}, seed=i) for i in range(n)]


def fake_result(spec: TrialSpec, n: int = 5, status: str = "done") -> TrialResult:
    curve = [CurvePoint(step=10 * i, wall_s=0.1 * i, cpu_s=0.09 * i, metrics={"loss": 1.0 / (i + 1)}) for i in range(n)]
    return TrialResult(spec=spec, status=status, curve=curve, steps_to_target=20, seconds_to_target=0.2,
                       final_metrics={"loss": 1.0 / n, "odd": math.inf}, train_seconds=0.4, optimizer_seconds=0.1,
                       steps=10 * (n - 1), extras={"selection": [[0, 1], [10, 2]], "gap_stats": {"g": [0.5, 0.1]}})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_add_is_idempotent_and_resume_skips_finished(tmp_path):
    path = tmp_path / "r.db"
    with ResultsDB(path) as db:
        assert db.add_trials("exp", specs(3), command="optfit bench run") == 3
        assert db.add_trials("exp", specs(3)) == 0
        assert db.add_trials("other", specs(1)) == 1  # experiments are separate namespaces
        wid = make_worker_id()
        first = db.claim_next("exp", wid)
        assert first == specs(3)[0]
        assert db.record_result(fake_result(first), experiment="exp", worker_id=wid)
        assert db.experiments()[0]["command"] == "optfit bench run"
    with ResultsDB(path) as db:  # a new process would see the same: the done trial is not handed out again
        got = [db.claim_next("exp", make_worker_id()) for _ in range(3)]
        assert got[:2] == specs(3)[1:] and got[2] is None
        assert db.counts("exp") == {"queued": 0, "running": 2, "done": 1, "diverged": 0, "failed": 0}
        (res,) = db.results("exp")
        assert db.results("other") == []


def test_record_result_round_trip(tmp_path):
    with ResultsDB(tmp_path / "r.db") as db:
        spec = TrialSpec("w", "adamw", {"lr": 1e-3, "betas": (0.9, 0.99)}, seed=4, protocol="external",
                         label="adamw-tuned", schedule={"kind": "warmup_cosine", "warmup": 0.02}, study=2,
                         trial_index=3)
        original = fake_result(spec, n=7)
        assert db.record_result(original, experiment="e")  # not queued before: added on the fly
        (back,) = db.results("e")
        assert back.spec.key() == spec.key() and back.spec.hparams["betas"] == [0.9, 0.99]
        assert back.curve == original.curve
        for name in ("status", "steps_to_target", "seconds_to_target", "final_metrics", "train_seconds",
                     "optimizer_seconds", "steps", "extras"):
            assert getattr(back, name) == getattr(original, name), name
        row = db.trials("e")[0]
        assert row["versions"]["torch"] and row["machine"]["hostname"] and row["finished"] >= row["started"]
        # finished trials are not overwritten unless asked (a reclaimed trial finished twice)
        assert not db.record_result(fake_result(spec, n=2), experiment="e")
        assert len(db.results("e")[0].curve) == 7
        assert db.record_result(fake_result(spec, n=2), experiment="e", overwrite=True)
        assert len(db.results("e")[0].curve) == 2
        with pytest.raises(ValueError, match="experiment="):
            db.record_result(fake_result(specs(1, "unknown")[0]))
        with pytest.raises(ValueError, match="status"):
            db.record_result(fake_result(spec, status="running"), experiment="e")


def test_dead_or_stale_workers_trials_are_rerun(tmp_path):
    with ResultsDB(tmp_path / "r.db") as db:
        db.add_trials("exp", specs(2))
        host = make_worker_id().split(":")[0]
        ghost = f"{host}:{dead_pid()}:dead"
        spec = db.claim_next("exp", ghost)
        # a live owner (this process) keeps its trial; the dead one's trial comes back first (oldest id)
        again = db.claim_next("exp", make_worker_id(), max_attempts=3)
        assert again == spec
        assert db.trials("exp")[0]["attempts"] == 2
        assert db.claim_next("exp", make_worker_id()) == specs(2)[1]
        assert db.claim_next("exp", make_worker_id()) is None  # both owners alive: nothing to take
        # an owner on another host is judged by its heartbeat only
        db.add_trials("far", specs(1))
        db.claim_next("far", "elsewhere:1:x")
        assert db.claim_next("far", make_worker_id(), stale_after=None) is None
        assert db.claim_next("far", make_worker_id(), stale_after=60.0) is None
        assert db.claim_next("far", make_worker_id(), stale_after=0.0) == specs(1)[0]


def test_a_trial_that_keeps_killing_its_worker_fails_after_max_attempts(tmp_path):
    with ResultsDB(tmp_path / "r.db") as db:
        db.add_trials("exp", specs(1))
        host = make_worker_id().split(":")[0]
        for _ in range(2):
            assert db.claim_next("exp", f"{host}:{dead_pid()}:t", max_attempts=2) is not None
        assert db.claim_next("exp", make_worker_id(), max_attempts=2) is None
        (res,) = db.results("exp")
        assert res.status == "failed" and "died or stalled 2 times" in res.error


def test_release_and_heartbeat(tmp_path):
    with ResultsDB(tmp_path / "r.db") as db:
        db.add_trials("exp", specs(1))
        wid = make_worker_id()
        spec = db.claim_next("exp", wid)
        assert db.heartbeat("exp", spec.key(), wid) and not db.heartbeat("exp", spec.key(), "someone-else")
        db.release("exp", spec.key(), wid)
        row = db.trials("exp")[0]
        assert row["status"] == "queued" and row["attempts"] == 0
        assert db.claim_next("exp", wid) == spec


READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
print(conn.execute("SELECT COUNT(*) FROM trials WHERE status = 'done'").fetchone()[0])
conn.close()
"""


def _done_seen_by_another_process(path: Path) -> int:
    out = subprocess.run([sys.executable, "-c", READER, str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_a_second_connection_in_one_process_keeps_commits_visible(tmp_path):
    """Regression: opening the file from Python (to sniff its header) dropped the process's POSIX locks, so
    another process closing its connection deleted the live WAL and later commits became invisible."""
    path = tmp_path / "r.db"
    first = ResultsDB(path)
    first.add_trials("exp", specs(2))
    second = ResultsDB(path)  # as a worker's heartbeat thread does
    assert _done_seen_by_another_process(path) == 0
    first.record_result(fake_result(specs(2)[0]), experiment="exp")
    assert _done_seen_by_another_process(path) == 1
    second.record_result(fake_result(specs(2)[1]), experiment="exp")
    assert _done_seen_by_another_process(path) == 2
    first.close()
    second.close()


def _claimer(path: str, out: "mp.Queue") -> None:
    db = ResultsDB(path, check=False)
    wid = make_worker_id()
    mine = []
    while (spec := db.claim_next("exp", wid)) is not None:
        mine.append(spec.key())
        db.record_result(fake_result(spec, n=2), experiment="exp", worker_id=wid)
    out.put(mine)


def test_two_processes_never_claim_the_same_trial(tmp_path):
    path = str(tmp_path / "r.db")
    with ResultsDB(path) as db:
        db.add_trials("exp", specs(300))
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(path, out)) for _ in range(3)]
    for p in procs:
        p.start()
    claimed = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    everything = [k for mine in claimed for k in mine]
    assert len(everything) == 300 and len(set(everything)) == 300
    assert sum(1 for mine in claimed if mine) >= 2  # they really ran concurrently
    with ResultsDB(path) as db:
        assert db.counts("exp")["done"] == 300


HAMMER = r"""
import os, random, sys, time, types
src, path = sys.argv[1], sys.argv[2]
for name, sub in (("optfit", "optfit"), ("optfit.bench", os.path.join("optfit", "bench"))):
    module = types.ModuleType(name)          # load storage without optfit/__init__ (no torch: fast start)
    module.__path__ = [os.path.join(src, sub)]
    sys.modules[name] = module
from optfit.bench.records import CurvePoint, TrialResult
from optfit.bench.storage import ResultsDB, make_worker_id
db = ResultsDB(path, check=False)
wid = make_worker_id()
print("ready", flush=True)
while (spec := db.claim_next("exp", wid, max_attempts=1000)) is not None:
    n = 20 + spec.seed % 30
    curve = [CurvePoint(i, 0.1 * i, 0.1 * i, {"loss": 1.0 / (i + 1), "seed": spec.seed}) for i in range(n)]
    time.sleep(random.random() * 0.004)
    db.record_result(TrialResult(spec, "done", curve, steps=n, final_metrics={"loss": 1.0 / n},
                                 extras={"n": n}), experiment="exp", worker_id=wid)
"""


def _check_consistent(path: Path, n_trials: int) -> list[dict]:
    with ResultsDB(path) as db:  # opens (quick_check passes) after every kill
        rows = db.trials("exp")
        assert len(rows) == n_trials
        for res in db.results("exp"):
            n = 20 + res.spec.seed % 30
            assert res.status == "done" and res.steps == n and res.extras == {"n": n}
            assert [p.step for p in res.curve] == list(range(n)), "a finished trial lost curve points"
            assert all(p.metrics["seed"] == res.spec.seed for p in res.curve)
        running = [r for r in rows if r["status"] == "running"]
        assert len(running) <= 1
        return running


def test_kill_9_at_random_moments_never_corrupts_or_loses_finished_trials(tmp_path):
    path = tmp_path / "r.db"
    n_trials = 250
    with ResultsDB(path) as db:
        db.add_trials("exp", specs(n_trials))
    rng = random.Random(7)
    script = tmp_path / "hammer.py"
    script.write_text(HAMMER)
    in_flight: list[str] = []
    killed: set[str] = set()
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, str(script), str(SRC), str(path)], stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.12))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed.add(str(proc.pid))
        running = _check_consistent(path, n_trials)
        if running:  # owned by a killed hammer (an earlier one if this one died before its first claim)
            assert running[0]["claimed_by"].split(":")[1] in killed
            in_flight.append(running[0]["key"])
    assert in_flight, "no kill landed while a trial was in flight"
    subprocess.run([sys.executable, str(script), str(SRC), str(path)], check=True, stdout=subprocess.DEVNULL,
                   timeout=120)
    _check_consistent(path, n_trials)
    with ResultsDB(path) as db:
        rows = {r["key"]: r for r in db.trials("exp")}
        assert all(r["status"] == "done" for r in rows.values())
        assert all(rows[k]["attempts"] >= 2 for k in in_flight)  # the interrupted trials were rerun


# -- files that are not (healthy) optfit databases -----------------------------------------------------------

def _assert_clear_error(path: Path, *words: str) -> None:
    with pytest.raises(ResultsDBError) as info:
        ResultsDB(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message
    assert info.value.__cause__ is None  # no sqlite3 traceback chained to the message
    assert info.value.__context__ is None or info.value.__suppress_context__


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.db"
    path.write_bytes(random.Random(0).randbytes(8192))
    _assert_clear_error(path, "not an SQLite file")


def test_sqlite_header_then_garbage(tmp_path):
    path = tmp_path / "fake.db"
    path.write_bytes(b"SQLite format 3\x00" + random.Random(1).randbytes(8192))
    _assert_clear_error(path, "not an SQLite file")


def test_truncated_database(tmp_path):
    path = tmp_path / "cut.db"
    with ResultsDB(path) as db:
        db.add_trials("exp", specs(400))
        for spec in specs(400):
            db.record_result(fake_result(spec, n=20), experiment="exp")
    size = path.stat().st_size
    assert size > 100_000 and not Path(f"{path}-wal").exists()
    with open(path, "r+b") as fh:
        fh.truncate(size // 2)
    _assert_clear_error(path, "corrupt")
    with open(path, "r+b") as fh:
        fh.truncate(60)  # not even a whole header left
    _assert_clear_error(path, "corrupt")


def test_foreign_sqlite_database(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER, amount REAL)")
    conn.commit()
    conn.close()
    _assert_clear_error(path, "another application", "invoices")
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # left untouched
    conn.execute("PRAGMA application_id = 1234")
    conn.execute("DROP TABLE invoices")
    conn.close()
    _assert_clear_error(path, "application_id")


def test_newer_schema_and_directory(tmp_path):
    path = tmp_path / "r.db"
    ResultsDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    _assert_clear_error(path, "newer optfit")
    _assert_clear_error(tmp_path, "directory")


# -- read-only databases --------------------------------------------------------------------------------------

def filled_db(path: Path) -> Path:
    with ResultsDB(path) as db:
        db.add_trials("e", specs(2))
        spec = db.claim_next("e", make_worker_id())
        db.record_result(fake_result(spec), experiment="e")
    return path


def test_a_database_opened_read_only_reads_and_says_read_only_when_written(tmp_path):
    path = filled_db(tmp_path / "r.db")
    with ResultsDB(path, readonly=True) as db:
        assert db.counts("e")["done"] == 1 and len(db.results("e")[0].curve) == 5
        with pytest.raises(ResultsDBError, match=r"r\.db is read-only") as info:
            db.add_trials("e", specs(3))
    assert "corrupt" not in str(info.value) and "move it aside" not in str(info.value)
    with pytest.raises(ResultsDBError, match="does not exist"):
        ResultsDB(tmp_path / "missing.db", readonly=True)
    assert not (tmp_path / "missing.db").exists()


def test_sqlite_read_only_errors_are_not_called_corrupt(tmp_path):
    db = ResultsDB(tmp_path / "r.db")
    message = str(db._error(sqlite3.OperationalError("attempt to write a readonly database")))
    db.close()
    assert "is read-only" in message and "corrupt" not in message and "move it aside" not in message


def in_read_only_folder(folder: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -c code args`` with ``folder`` read-only, as a user would meet it: a read-only mount when
    running as root (root ignores permission bits), permission bits otherwise."""
    env = dict(os.environ, PYTHONPATH=f"{SRC.parent}{os.pathsep}{SRC}", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", code, *args]
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.rglob("*")]}
        for p in modes:
            p.chmod(modes[p] & ~0o222)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
    import shutil

    if shutil.which("unshare") is None:
        pytest.skip("running as root without unshare(1): cannot make a read-only folder")
    wrapped = ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder), *cmd]
    proc = subprocess.run(wrapped, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0 and ("mount" in proc.stderr or "unshare" in proc.stderr):
        pytest.skip(f"cannot make a read-only mount here: {proc.stderr.strip()[:200]}")
    return proc


CLI = "import sys; from optfit.cli import main; sys.exit(main(sys.argv[1:]))"


def test_read_only_database_on_a_read_only_folder(tmp_path):
    """`bench run` refuses it before any trial, saying read-only (not corrupt); `bench list` and `bench report`
    read it as it is."""
    folder = tmp_path / "ro"
    folder.mkdir()
    path = filled_db(folder / "r.db")
    before = path.read_bytes()
    run = in_read_only_folder(folder, CLI, "bench", "run", "--db", str(path), "--workload",
                              "tests.bench.runner_workloads:TinyRegression", "--optimizers", "sgd", "--workers", "0",
                              "--out", str(tmp_path / "out"))
    assert run.returncode == 2, run.stderr
    assert "read-only" in run.stderr and "corrupt" not in run.stderr and "Traceback" not in run.stderr
    listing = in_read_only_folder(folder, CLI, "bench", "list", "--db", str(path))
    assert listing.returncode == 0 and "e " in listing.stdout, listing.stderr
    csv_out = in_read_only_folder(folder, CLI, "bench", "report", "--db", str(path), "--format", "csv")
    assert csv_out.returncode == 0 and csv_out.stdout.count("\n") == 3, csv_out.stderr  # header + 2 trials
    assert path.read_bytes() == before


def test_read_only_out_folder_is_refused_before_any_trial(tmp_path):
    folder = tmp_path / "ro"
    (folder / "out").mkdir(parents=True)
    db = tmp_path / "r.db"
    run = in_read_only_folder(folder, CLI, "bench", "run", "--db", str(db), "--workload",
                              "tests.bench.runner_workloads:TinyRegression", "--optimizers", "sgd", "--workers", "0",
                              "--out", str(folder / "out"))
    assert run.returncode == 2 and "--out" in run.stderr and "cannot write" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and not db.exists()  # refused before the database was touched


# -- one run at a time ----------------------------------------------------------------------------------------

def test_live_runs_are_recorded_and_dead_ones_dropped(tmp_path):
    from optfit.bench.storage import RUN_PREFIX, RunInProgress, _process_start

    with ResultsDB(tmp_path / "r.db") as db:
        key, others = db.begin_run("e", "cmd")
        assert others == [] and [r["pid"] for r in db.live_runs()] == [os.getpid()]
        with pytest.raises(RunInProgress, match=rf"pid {os.getpid()} .*experiment 'e'.*`cmd`"):
            db.begin_run("f")
        key2, others = db.begin_run("f", join=True)
        assert [r["key"] for r in others] == [key]
        db.end_run(key)
        db.end_run(key2)
        assert db.live_runs() == []
        # a dead pid, and a live pid whose process started at another time (the pid was reused), are not runs
        import json

        with db._tx() as conn:
            for pid, start in ((dead_pid(), None), (os.getpid(), (_process_start(os.getpid()) or 0) + 1)):
                conn.execute("INSERT INTO meta VALUES (?, ?)", (f"{RUN_PREFIX}x:{pid}", json.dumps(
                    {"pid": pid, "host": db.host, "process_start": start, "experiment": "e", "started": 0})))
        assert db.live_runs() == []
        assert db.conn.execute("SELECT COUNT(*) FROM meta WHERE key LIKE 'run:%'").fetchone()[0] == 0
