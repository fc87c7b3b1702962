"""The embedded results database: one SQLite file in WAL mode holding experiments, trials and curves.

Guarantees (each is tested):

- **Atomic results.** ``record_result`` writes a trial's curve and summary in one transaction, so after a
  crash (even ``kill -9``) a trial is either complete or still queued/running — never half written.
- **No duplicated work.** ``claim_next`` picks and marks a queued trial inside ``BEGIN IMMEDIATE`` (one
  writer at a time), so two runner processes on one file never get the same trial.
- **Resume.** A trial left ``running`` by a dead worker (its pid is gone on this host, or its heartbeat is
  older than ``stale_after`` seconds) is put back in the queue and rerun; after ``max_attempts`` deaths it
  is marked ``failed`` instead, so a trial that kills its process cannot loop forever.
- **Clear errors.** A file that is not SQLite, a truncated/corrupt file, or an SQLite file of another
  application raises ``ResultsDBError`` naming the path — never a bare ``sqlite3`` traceback. A database
  that cannot be written (read-only file, folder or file system) is reported as read-only when opened for
  writing; ``readonly=True`` opens it for reading (reports and listings work on a read-only copy).
- **One run at a time.** ``begin_run`` records a live run (host, pid, process start time, experiment, command)
  in the ``meta`` table; a second run on the same database is refused (``RunInProgress`` names the other
  run's pid) unless it joins explicitly. Records of dead runs (``kill -9``) are dropped when seen.

A worker id is ``"host:pid:token"`` (see ``make_worker_id``); other strings are accepted but then only the
heartbeat tells whether their owner is alive. Only SQLite's own locking is used, so all processes must be
on one machine (WAL does not work over network file systems).
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import socket
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .records import CurvePoint, TrialResult, TrialSpec

APPLICATION_ID = 0x4F504654  # "OPFT" in the SQLite header: marks the file as an optfit results database
SCHEMA_VERSION = 1
STATUSES = ("queued", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged", "failed")

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE experiments (
    name TEXT PRIMARY KEY, created REAL NOT NULL, command TEXT NOT NULL DEFAULT '');
CREATE TABLE trials (
    id INTEGER PRIMARY KEY,
    experiment TEXT NOT NULL REFERENCES experiments(name),
    key TEXT NOT NULL,
    spec TEXT NOT NULL,
    workload TEXT NOT NULL, optimizer TEXT NOT NULL, label TEXT NOT NULL, protocol TEXT NOT NULL,
    seed INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'queued' CHECK (status IN ('queued','running','done','diverged','failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_by TEXT, claimed_at REAL, heartbeat REAL, started REAL, finished REAL,
    versions TEXT, machine TEXT,
    steps_to_target INTEGER, seconds_to_target REAL, final_metrics TEXT,
    train_seconds REAL, optimizer_seconds REAL, steps INTEGER, error TEXT, extras TEXT,
    UNIQUE (experiment, key));
CREATE INDEX trials_status ON trials (experiment, status);
CREATE TABLE curves (
    trial_id INTEGER NOT NULL REFERENCES trials(id) ON DELETE CASCADE,
    step INTEGER NOT NULL, wall_s REAL NOT NULL, cpu_s REAL NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (trial_id, step));
"""


class ResultsDBError(RuntimeError):
    """The results database cannot be used (not SQLite, corrupt, foreign, newer schema, locked, read-only)."""


class RunInProgress(ResultsDBError):
    """Another live run uses the results database (``runs``: their records, see ``ResultsDB.live_runs``)."""

    def __init__(self, message: str, runs: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.runs = runs


RUN_PREFIX = "run:"


def make_worker_id() -> str:
    """``"host:pid:token"`` for the current process (the token tells apart two lives of one pid)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live (non-zombie) process on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    try:  # a killed but not yet reaped child still answers kill(0); /proc tells it is a zombie
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _process_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), telling two lives of a pid apart."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _run_alive(run: dict[str, Any], host: str) -> bool:
    """Whether the run recorded as ``run`` still lives (a run on another host is assumed to)."""
    if run.get("host") != host:
        return True
    pid = run.get("pid")
    if not isinstance(pid, int) or not _pid_alive(pid):
        return False
    start = run.get("process_start")
    return start is None or _process_start(pid) in (None, start)


def describe_run(run: dict[str, Any]) -> str:
    """``pid 123 on host (experiment 'x', started 12:00:01, `optfit bench run ...`)``."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.get("started") or 0))
    command = f", `{run['command']}`" if run.get("command") else ""
    return (f"pid {run.get('pid')} on {run.get('host')} (experiment {run.get('experiment')!r}, started {when}"
            f"{command})")


def _owner_dead(claimed_by: str | None, host: str) -> bool:
    parts = (claimed_by or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
        return False
    return not _pid_alive(int(parts[1]))


def _version(module: str) -> str:
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    try:
        from importlib.metadata import version
        return version(module)
    except Exception:  # noqa: BLE001 - a missing distribution is reported, not fatal
        return "unknown"


def environment() -> tuple[dict[str, str], dict[str, Any]]:
    """(versions, machine) of the current process, as stored beside each finished trial."""
    versions = {"python": platform.python_version(), "torch": _version("torch"), "optfit": _version("optfit")}
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    machine = {"hostname": socket.gethostname(), "cpu_count": os.cpu_count(), "cpus_usable": cpus,
               "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    return versions, machine


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def spec_from_json(text: str) -> TrialSpec:
    return TrialSpec(**json.loads(text))


class ResultsDB:
    """An optfit results database at ``path`` (created, with its folder, if absent and ``create``).

    ``timeout`` is SQLite's busy timeout in seconds (how long a writer waits for another one);
    ``check=True`` runs ``PRAGMA quick_check`` on open, which detects truncated or damaged files.
    ``readonly=True`` opens an existing database for reading only (it may lie on a read-only file system);
    without it a database that cannot be written raises ``ResultsDBError`` saying it is read-only.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 60.0, check: bool = True,
                 readonly: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.host = socket.gethostname()
        self.readonly = readonly
        self._conn: sqlite3.Connection | None = None
        self._sniff(create and not readonly)
        try:
            self._conn = self._connect(timeout)
            self._conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._open(check)
        except sqlite3.Error as exc:
            self.close()
            raise self._error(exc) from None
        except ResultsDBError:
            self.close()
            raise

    # -- opening -------------------------------------------------------------------------------------------
    def _sniff(self, create: bool) -> None:
        # Never open() the file from Python: closing any descriptor of a file drops every POSIX lock this
        # process holds on it, including those of our other open connections (SQLite would then delete a WAL
        # that is still in use). The file's type is learnt through SQLite itself; writability through access().
        if self.path.is_dir():
            raise ResultsDBError(f"results database {self.path} is a directory; give a file path")
        folder = self.path.parent
        if not self.path.exists():
            if not create:
                raise ResultsDBError(f"results database {self.path} does not exist")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ResultsDBError(f"cannot create the folder of results database {self.path}: {exc}") from None
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ResultsDBError(f"cannot create results database {self.path}: its folder {folder} is read-only")
            return
        if self.readonly:
            return
        if not os.access(self.path, os.W_OK):
            raise ResultsDBError(f"results database {self.path} is read-only (no write permission, or a read-only "
                                 "file system); a run must write to it: make it writable or copy it elsewhere "
                                 "(reading it works as it is: `optfit bench report` / `optfit bench list`)")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ResultsDBError(f"results database {self.path} is in the read-only folder {folder}: SQLite needs "
                                 f"to create {self.path.name}-wal and {self.path.name}-shm beside it; make the folder "
                                 "writable or copy the database elsewhere (reading it works as it is)")

    def _connect(self, timeout: float) -> sqlite3.Connection:
        if not self.readonly:
            return sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        if not os.access(self.path.parent, os.W_OK | os.X_OK) and not Path(f"{self.path}-wal").exists():
            uri += "&immutable=1"  # a read-only folder: no -shm can be made; nothing can change the file either
        return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)

    def _error(self, exc: BaseException) -> ResultsDBError:
        text = str(exc)
        if "not a database" in text:
            return ResultsDBError(f"{self.path} is not an optfit results database: it is not an SQLite file (or it "
                                  "is damaged beyond its header); give another --db path or move the file aside")
        if "readonly" in text or "read-only" in text or "read only" in text:
            return ResultsDBError(f"results database {self.path} is read-only ({text}); a run must write to it: make "
                                  "it (and its folder) writable or copy it elsewhere")
        if "locked" in text or "busy" in text:
            return ResultsDBError(f"results database {self.path} stayed locked by another process ({text})")
        return ResultsDBError(f"results database {self.path} is corrupt or unreadable ({type(exc).__name__}: "
                              f"{text}); move it aside and rerun to start a new one")

    def _open(self, check: bool) -> None:
        conn = self._conn
        assert conn is not None
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == 0:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            if tables:
                raise ResultsDBError(f"{self.path} is an SQLite database of another application (tables: "
                                     f"{', '.join(sorted(tables)[:8])}), not an optfit results database")
            if self.readonly:
                raise ResultsDBError(f"{self.path} is empty, not an optfit results database")
            conn.execute("PRAGMA journal_mode = WAL")
            self._create()
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise ResultsDBError(f"{self.path} is an SQLite database of another application "
                                 f"(application_id {app_id:#x}), not an optfit results database")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ResultsDBError(f"{self.path} was written by a newer optfit (schema {version} > "
                                 f"{SCHEMA_VERSION}); upgrade optfit to read it")
        if version < SCHEMA_VERSION:
            raise ResultsDBError(f"{self.path} has an unknown old schema {version}; move it aside")
        if check:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            if rows != ["ok"]:
                raise ResultsDBError(f"results database {self.path} is corrupt ({'; '.join(rows)}); move it "
                                     "aside and rerun to start a new one")
        if self.readonly:
            conn.execute("PRAGMA query_only = ON")
            return
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process crashes
        conn.execute("PRAGMA foreign_keys = ON")

    def _create(self) -> None:
        conn = self._conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("PRAGMA application_id").fetchone()[0] == 0:  # nobody else created it meanwhile
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany("INSERT INTO meta VALUES (?, ?)", [
                    ("schema_version", str(SCHEMA_VERSION)), ("created", repr(time.time())),
                    ("created_by", _version("optfit"))])
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    # -- plumbing --------------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultsDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise ResultsDBError(f"results database {self.path} is closed")
        return self._conn

    @contextmanager
    def _tx(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction; ``sqlite3`` errors become ``ResultsDBError`` naming the file."""
        conn = self.conn
        try:
            conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    def _read(self, sql: str, args: Iterable[Any] = ()) -> list[dict[str, Any]]:
        try:
            cur = self.conn.execute(sql, tuple(args))
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
        except sqlite3.Error as exc:
            raise self._error(exc) from None

    # -- writing ---------------------------------------------------------------------------------------------
    def add_experiment(self, name: str, command: str | None = None) -> None:
        """Create experiment ``name`` if it does not exist (``command`` defaults to ``sys.argv``)."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"experiment must be a non-empty string, got {name!r}")
        command = " ".join(sys.argv) if command is None else command
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?)", (name, time.time(), command))

    def add_trials(self, experiment: str, specs: Iterable[TrialSpec], *, command: str | None = None,
                   retry_failed: bool = False) -> int:
        """Queue ``specs`` under ``experiment`` (idempotent: a spec whose key is there already is skipped).
        ``retry_failed`` requeues this experiment's failed trials. Returns the number of new trials."""
        specs = list(specs)
        for i, spec in enumerate(specs):
            if not isinstance(spec, TrialSpec):
                raise TypeError(f"specs[{i}] must be a TrialSpec, got {type(spec).__name__}")
        self.add_experiment(experiment, command)
        rows = [(experiment, s.key(), _dumps(asdict(s)), s.workload, s.optimizer, s.label or s.optimizer,
                 s.protocol, int(s.seed)) for s in specs]
        with self._tx() as conn:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO trials (experiment, key, spec, workload, optimizer, label, "
                             "protocol, seed) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            added = conn.total_changes - before
            if retry_failed:
                conn.execute("UPDATE trials SET status = 'queued', attempts = 0, claimed_by = NULL, error = NULL "
                             "WHERE experiment = ? AND status = 'failed'", (experiment,))
        return added

    def _reclaim(self, conn: sqlite3.Connection, experiment: str, stale_after: float | None,
                 max_attempts: int, now: float) -> None:
        rows = conn.execute("SELECT id, claimed_by, heartbeat, attempts FROM trials "
                            "WHERE experiment = ? AND status = 'running'", (experiment,)).fetchall()
        for trial_id, owner, beat, attempts in rows:
            stale = stale_after is not None and (beat is None or beat < now - stale_after)
            if not (stale or _owner_dead(owner, self.host)):
                continue
            if attempts >= max_attempts:
                conn.execute("UPDATE trials SET status = 'failed', finished = ?, error = ? WHERE id = ?",
                             (now, f"the worker running this trial died or stalled {attempts} times (last: "
                                   f"{owner}); not retried", trial_id))
            else:
                conn.execute("UPDATE trials SET status = 'queued', claimed_by = NULL WHERE id = ?", (trial_id,))

    def reclaim(self, experiment: str, *, stale_after: float | None = 300.0, max_attempts: int = 3) -> None:
        """Requeue (or fail, after ``max_attempts``) the running trials of dead or stalled workers now."""
        with self._tx() as conn:
            self._reclaim(conn, experiment, stale_after, max_attempts, time.time())

    def claim_next(self, experiment: str, worker_id: str, *, stale_after: float | None = 300.0,
                   max_attempts: int = 3) -> TrialSpec | None:
        """Atomically take the oldest queued trial of ``experiment`` for ``worker_id`` (``None`` if none).
        Trials of dead or stalled workers are requeued first (see the module docstring)."""
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        now = time.time()
        with self._tx() as conn:
            self._reclaim(conn, experiment, stale_after, max_attempts, now)
            row = conn.execute("SELECT id, spec FROM trials WHERE experiment = ? AND status = 'queued' "
                               "ORDER BY id LIMIT 1", (experiment,)).fetchone()
            if row is None:
                return None
            conn.execute("UPDATE trials SET status = 'running', claimed_by = ?, claimed_at = ?, heartbeat = ?, "
                         "started = ?, attempts = attempts + 1 WHERE id = ?", (worker_id, now, now, now, row[0]))
        return spec_from_json(row[1])

    def heartbeat(self, experiment: str, key: str, worker_id: str) -> bool:
        """Refresh the heartbeat of a trial this worker runs; ``False`` if it no longer owns it."""
        with self._tx() as conn:
            cur = conn.execute("UPDATE trials SET heartbeat = ? WHERE experiment = ? AND key = ? AND "
                               "claimed_by = ? AND status = 'running'", (time.time(), experiment, key, worker_id))
            return cur.rowcount == 1

    def release(self, experiment: str, key: str, worker_id: str) -> None:
        """Give a claimed trial back to the queue (interrupted on purpose; the attempt does not count)."""
        with self._tx() as conn:
            conn.execute("UPDATE trials SET status = 'queued', claimed_by = NULL, attempts = MAX(attempts - 1, 0) "
                         "WHERE experiment = ? AND key = ? AND claimed_by = ? AND status = 'running'",
                         (experiment, key, worker_id))

    def record_result(self, result: TrialResult, *, experiment: str | None = None, worker_id: str | None = None,
                      overwrite: bool = False) -> bool:
        """Store ``result`` (curve + summary) in one transaction.

        The trial is found by ``result.spec.key()`` within ``experiment`` (which may be omitted when the key is
        in one experiment only); a trial not in the database is added to ``experiment``. A trial that is already
        finished is left alone (returns ``False``) unless ``overwrite`` — e.g. when a reclaimed trial was
        finished by its other runner first."""
        if result.status not in FINISHED:
            raise ValueError(f"result.status must be one of {', '.join(FINISHED)}, got {result.status!r}")
        spec, key = result.spec, result.spec.key()
        versions, machine = environment()
        now = time.time()
        with self._tx() as conn:
            if experiment is None:
                found = conn.execute("SELECT id, status FROM trials WHERE key = ?", (key,)).fetchall()
                if len(found) != 1:
                    raise ValueError(f"record_result: trial {key} is in {len(found)} experiments; pass experiment=")
            else:
                found = conn.execute("SELECT id, status FROM trials WHERE experiment = ? AND key = ?",
                                     (experiment, key)).fetchall()
            if not found:
                conn.execute("INSERT OR IGNORE INTO experiments VALUES (?, ?, ?)", (experiment, now, ""))
                cur = conn.execute("INSERT INTO trials (experiment, key, spec, workload, optimizer, label, protocol, "
                                   "seed, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                   (experiment, key, _dumps(asdict(spec)), spec.workload, spec.optimizer,
                                    spec.label or spec.optimizer, spec.protocol, int(spec.seed), now))
                trial_id, status = cur.lastrowid, "queued"
            else:
                trial_id, status = found[0]
            if status in FINISHED and not overwrite:
                return False
            conn.execute("DELETE FROM curves WHERE trial_id = ?", (trial_id,))
            conn.executemany("INSERT INTO curves VALUES (?, ?, ?, ?, ?)",
                             [(trial_id, int(p.step), float(p.wall_s), float(p.cpu_s), _dumps(p.metrics))
                              for p in result.curve])
            conn.execute(
                "UPDATE trials SET status = ?, finished = ?, versions = ?, machine = ?, steps_to_target = ?, "
                "seconds_to_target = ?, final_metrics = ?, train_seconds = ?, optimizer_seconds = ?, steps = ?, "
                "error = ?, extras = ?, claimed_by = COALESCE(?, claimed_by) WHERE id = ?",
                (result.status, now, _dumps(versions), _dumps(machine), result.steps_to_target,
                 result.seconds_to_target, _dumps(result.final_metrics), float(result.train_seconds),
                 float(result.optimizer_seconds), int(result.steps), result.error, _dumps(result.extras),
                 worker_id, trial_id))
        return True

    # -- live runs -------------------------------------------------------------------------------------------
    def _runs(self, conn: sqlite3.Connection) -> tuple[list[dict[str, Any]], list[str]]:
        """(live runs, keys of dead ones) among the run records."""
        live, dead = [], []
        for key, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE ?", (RUN_PREFIX + "%",)):
            try:
                run = json.loads(value)
            except ValueError:
                run = {}
            if isinstance(run, dict) and _run_alive(run, self.host):
                live.append({**run, "key": key})
            else:
                dead.append(key)
        return sorted(live, key=lambda r: r.get("started") or 0), dead

    def live_runs(self) -> list[dict[str, Any]]:
        """The runs working on this database now: dicts with ``pid``, ``host``, ``experiment``, ``command``,
        ``started``, ``key`` (records of dead runs are dropped, unless the database is read-only)."""
        if self.readonly:
            try:
                return self._runs(self.conn)[0]
            except sqlite3.Error as exc:
                raise self._error(exc) from None
        with self._tx() as conn:
            live, dead = self._runs(conn)
            conn.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in dead])
        return live

    def begin_run(self, experiment: str, command: str = "", *, join: bool = False) -> tuple[str, list[dict[str, Any]]]:
        """Record this process as a live run of ``experiment``; returns (its key for ``end_run``, the other live
        runs). With another live run on the database, ``RunInProgress`` (naming its pid) unless ``join``."""
        pid = os.getpid()
        record = {"pid": pid, "host": self.host, "process_start": _process_start(pid), "experiment": experiment,
                  "command": command, "started": time.time()}
        key = f"{RUN_PREFIX}{self.host}:{pid}:{secrets.token_hex(4)}"
        with self._tx() as conn:
            live, dead = self._runs(conn)
            conn.executemany("DELETE FROM meta WHERE key = ?", [(k,) for k in dead])
            if live and not join:
                others = "; ".join(describe_run(r) for r in live)
                raise RunInProgress(
                    f"results database {self.path} is in use by another run: {others}. Two runs on one database share "
                    f"its CPUs (timings are then inflated) and, on one experiment, its queue. Wait for it to finish, "
                    f"stop it (kill {live[0]['pid']}), or pass --join (run_experiment(join=True)) to run alongside "
                    "it on purpose", live)
            conn.execute("INSERT INTO meta VALUES (?, ?)", (key, _dumps(record)))
        return key, live

    def end_run(self, key: str) -> None:
        """Remove the record made by ``begin_run``."""
        with self._tx() as conn:
            conn.execute("DELETE FROM meta WHERE key = ?", (key,))

    # -- reading ---------------------------------------------------------------------------------------------
    def experiments(self) -> list[dict[str, Any]]:
        return self._read("SELECT name, created, command FROM experiments ORDER BY created, name")

    def counts(self, experiment: str | None = None) -> dict[str, int]:
        """Number of trials per status (all five statuses present)."""
        where, args = ("WHERE experiment = ?", (experiment,)) if experiment is not None else ("", ())
        rows = self._read(f"SELECT status, COUNT(*) AS n FROM trials {where} GROUP BY status", args)
        out = dict.fromkeys(STATUSES, 0)
        out.update({r["status"]: r["n"] for r in rows})
        return out

    def attempts(self, experiment: str) -> int:
        """Total claims made so far in ``experiment`` (grows whenever any worker starts a trial)."""
        return int(self._read("SELECT COALESCE(SUM(attempts), 0) AS n FROM trials WHERE experiment = ?",
                              (experiment,))[0]["n"])

    def trials(self, experiment: str | None = None, statuses: Iterable[str] | None = None, *,
               finished_after: float | None = None) -> list[dict[str, Any]]:
        """Trial rows (no curves) with JSON columns decoded: for inspection, progress and reports."""
        clauses, args = [], []
        if finished_after is not None:
            clauses.append("finished >= ?")
            args.append(finished_after)
        if experiment is not None:
            clauses.append("experiment = ?")
            args.append(experiment)
        if statuses is not None:
            statuses = list(statuses)
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self._read(f"SELECT * FROM trials {where} ORDER BY id", args)
        for row in rows:
            row["spec"] = spec_from_json(row["spec"])
            for col in ("versions", "machine", "final_metrics", "extras"):
                row[col] = json.loads(row[col]) if row[col] else {}
        return rows

    def results(self, experiment: str | None = None) -> list[TrialResult]:
        """Finished trials (done, diverged, failed) with their curves, in insertion order."""
        rows = self.trials(experiment, FINISHED)
        curves: dict[int, list[CurvePoint]] = {r["id"]: [] for r in rows}
        if rows:
            where, args = ("WHERE t.experiment = ?", (experiment,)) if experiment is not None else ("", ())
            for c in self._read("SELECT c.trial_id, c.step, c.wall_s, c.cpu_s, c.metrics FROM curves c JOIN trials t "
                                f"ON t.id = c.trial_id {where} ORDER BY c.trial_id, c.step", args):
                if c["trial_id"] in curves:
                    curves[c["trial_id"]].append(CurvePoint(c["step"], c["wall_s"], c["cpu_s"],
                                                            json.loads(c["metrics"])))
        return [TrialResult(spec=r["spec"], status=r["status"], curve=curves[r["id"]],
                            steps_to_target=r["steps_to_target"], seconds_to_target=r["seconds_to_target"],
                            final_metrics=r["final_metrics"], train_seconds=r["train_seconds"] or 0.0,
                            optimizer_seconds=r["optimizer_seconds"] or 0.0, steps=r["steps"] or 0,
                            error=r["error"] or "", extras=r["extras"]) for r in rows]
