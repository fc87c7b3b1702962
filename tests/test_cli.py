from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from optfit.cli import main


def test_list_prints_every_name(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "adamw" in out and "sgd" in out


def test_list_names_is_a_comma_separated_optimizers_argument(capsys):
    import optfit

    assert main(["list", "--names", "gap-*"]) == 0
    assert capsys.readouterr().out.strip().split(",") == optfit.list_optimizers("gap-*")


def test_list_pattern_without_match_is_an_error(capsys):
    assert main(["list", "zzz*"]) == 2
    assert "no optimizer matches" in capsys.readouterr().err


def test_demo_rejects_unknown_optimizer_naming_the_argument(capsys):
    assert main(["demo", "--optimizers", "adamw,bogus"]) == 2
    err = capsys.readouterr().err
    assert "--optimizers" in err and "bogus" in err and "sgd" in err


def test_demo_runs_the_smoke_showdown_and_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--optimizers", "adamw-tuned,gap-adamw", "--workers", "0", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "adamw-tuned" in out and "gap-adamw" in out
    html = (tmp_path / "report.html").read_text()
    assert "w10-digits" in html and "gap-adamw" in html
    # a second run resumes: nothing is rerun
    assert main(["demo", "--optimizers", "adamw-tuned,gap-adamw", "--workers", "0", "--out", str(tmp_path)]) == 0
    assert "trials to run" not in capsys.readouterr().err


def test_demo_starts_afresh_when_the_code_changed(tmp_path, monkeypatch, capsys):
    """Results of other code (its timings) are not resumed: the old database is set aside."""
    import optfit.cli as cli
    from optfit.bench import cli as bench_cli

    seen = []
    monkeypatch.setattr(bench_cli, "_cmd_run", lambda a: seen.append((tmp_path / "showdown.sqlite").exists()) or 0)
    (tmp_path / "showdown.sqlite").write_bytes(b"results of other code")
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert seen == [False] and (tmp_path / "showdown.sqlite.old").read_bytes() == b"results of other code"
    assert "code changed" in capsys.readouterr().err
    assert (tmp_path / "code.sha256").read_text().strip() == cli.code_fingerprint()
    (tmp_path / "showdown.sqlite").write_bytes(b"results of this code")
    assert main(["demo", "--out", str(tmp_path)]) == 0  # same code: resumed
    assert seen == [False, True] and "code changed" not in capsys.readouterr().err


def test_bench_errors_name_the_argument(tmp_path, capsys):
    assert main(["bench", "run", "--suite", "nope"]) == 2
    assert "--suite" in capsys.readouterr().err
    assert main(["bench", "report", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "--db" in capsys.readouterr().err
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    assert main(["bench", "report", "--db", str(bad)]) == 2
    assert "bad.sqlite" in capsys.readouterr().err


TINY = "tests.bench.runner_workloads:TinyRegression"


def test_bench_tune_then_targets_write_versioned_files(tmp_path, capsys):
    """`bench tune` records the median study's best AdamW trial; `bench targets` reruns it with seeds and
    writes the median of the runs' best metric as a new version of the targets file."""
    tuned, targets = tmp_path / "tuned.json", tmp_path / "targets.json"
    assert main(["bench", "tune", "--workload", TINY, "--trials", "2", "--studies", "3", "--workers", "0",
                 "--db", str(tmp_path / "tune.sqlite"), "--tuned", str(tuned)]) == 0
    entry = json.loads(tuned.read_text())["workloads"][TINY]
    assert set(entry["hparams"]) >= {"lr", "betas", "weight_decay"} and "bench tune" in entry["command"]
    targets.write_text(json.dumps({"version": 7, "workloads": {}}))
    assert main(["bench", "targets", "--workload", TINY, "--seeds", "3", "--workers", "0", "--db",
                 str(tmp_path / "targets.sqlite"), "--tuned", str(tuned), "--targets", str(targets)]) == 0
    doc = json.loads(targets.read_text())
    assert doc["version"] == 8
    t = doc["workloads"][TINY]
    assert t["metric"] == "loss" and t["higher_is_better"] is False and "median over 3 seeds" in t["source"]
    # the target is the median of the three runs' best (lowest) loss, read back from the database
    from optfit.bench.storage import ResultsDB

    with ResultsDB(tmp_path / "targets.sqlite") as db:
        bests = sorted(min(pt.metrics["loss"] for pt in r.curve) for r in db.results("targets"))
    assert t["target"] == bests[1]
    capsys.readouterr()
    assert main(["bench", "targets", "--workload", TINY, "--seeds", "3", "--workers", "0", "--db",
                 str(tmp_path / "t2.sqlite"), "--tuned", str(tmp_path / "missing.json"), "--targets", str(targets)]) == 2
    assert "bench tune" in capsys.readouterr().err  # no tuned settings: the message names the command to run


def test_bench_targets_keeps_a_target_that_is_part_of_the_task(tmp_path, capsys, monkeypatch):
    from tests.bench.runner_workloads import TinyRegression

    monkeypatch.setattr(TinyRegression, "target_is_defined", True)
    tuned, targets = tmp_path / "tuned.json", tmp_path / "targets.json"
    tuned.write_text(json.dumps({"workloads": {TINY: {"hparams": {"lr": 0.01}, "schedule": None}}}))
    targets.write_text(json.dumps({"version": 7, "workloads": {TINY: {"target": 0.05, "source": "definition"}}}))
    assert main(["bench", "targets", "--workload", TINY, "--seeds", "1", "--workers", "0", "--db",
                 str(tmp_path / "t.sqlite"), "--tuned", str(tuned), "--targets", str(targets)]) == 0
    doc = json.loads(targets.read_text())
    assert doc["workloads"][TINY] == {"target": 0.05, "source": "definition"} and doc["version"] == 8
    assert "part of the task's definition; kept" in capsys.readouterr().out


def test_bench_tune_leaves_other_workloads_entries_alone(tmp_path):
    """A second `bench tune` on the same database re-derives only the workloads it was asked for."""
    tuned, db = tmp_path / "tuned.json", str(tmp_path / "tune.sqlite")
    common = ["--trials", "2", "--studies", "1", "--workers", "0", "--db", db, "--tuned", str(tuned)]
    assert main(["bench", "tune", "--workload", TINY, *common]) == 0
    first = json.loads(tuned.read_text())["workloads"][TINY]
    other = "tests.bench.runner_workloads:SlowEval"
    assert main(["bench", "tune", "--workload", other, *common]) == 0
    full = json.loads(tuned.read_text())
    doc = full["workloads"]
    assert doc[TINY] == first and TINY not in doc[other]["command"]
    assert full["command"].startswith("per workload")  # not the second command alone


# -- the command line as a new user meets it -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from optfit.cli import main; sys.exit(main(sys.argv[1:]))"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def test_version(capsys):
    import optfit

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"optfit {optfit.__version__}"


def _parsers(parser, path=()):
    import argparse

    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _parsers(child, path + (name,))


def test_every_option_has_help_and_shows_its_default():
    import argparse

    from optfit.cli import build_parser

    checked = 0
    for path, parser in _parsers(build_parser()):
        if path[:1] == ("learned",):
            continue  # optfit.learned's own command line
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                continue
            name = "optfit " + " ".join(path) + " " + action.option_strings[-1]
            assert action.help and action.help.strip(), f"{name} has no help"
            if action.default not in (None, "", False):
                assert re.search(rf"\(default:? [^)]*{re.escape(str(action.default))}", text) or "(default" in \
                    action.help, f"{name}: default {action.default!r} not shown"
            checked += 1
    assert checked > 30


@pytest.mark.parametrize("argv, flag, suggestion", [
    (["bench", "run", "--suite", "smoke", "--optimizers", "adamww"], "--optimizers", "'adamw'"),
    (["bench", "run", "--suite", "smok"], "--suite", "'smoke'"),
    (["bench", "run", "--workloads", "w10-digit"], "--workloads", "'w10-digits'"),
    (["bench", "run", "--suite", "smoke", "--protocol", "fixd"], "--protocol", "'fixed'"),
    (["bench", "run", "--workload", "tests.bench.runner_workloads:TinyRegresion"], "--workload", "'TinyRegression'"),
    (["demo", "--optimizers", "lionn"], "--optimizers", "'lion'"),
])
def test_unknown_names_get_a_did_you_mean(argv, flag, suggestion, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and f"did you mean {suggestion}" in err, err


def test_list_suggests_a_close_name(capsys):
    assert main(["list", "adamww"]) == 2
    assert "did you mean 'adamw'" in capsys.readouterr().err


@pytest.mark.parametrize("hparams, protocol, message", [
    ("{lr: 0.1}", "fixed", "--hparams: not valid JSON"),
    ("[0.1]", "fixed", "--hparams: expected a JSON object"),
    ('{"lrr": 0.1}', "fixed", "--hparams: adamw does not accept {\"lrr\": 0.1}"),
    ('{"lr": 0.1}', "self", "--hparams: used with --protocol fixed only"),
])
def test_hparams_errors_name_the_flag(hparams, protocol, message, tmp_path, capsys):
    assert main(["bench", "run", "--workload", TINY, "--optimizers", "adamw", "--protocol", protocol, "--hparams",
                 hparams, "--db", str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()  # refused before anything ran


def test_db_in_a_missing_folder_is_created_and_said(tmp_path, capsys):
    db = tmp_path / "new" / "folder" / "r.sqlite"
    assert main(["bench", "run", "--workload", TINY, "--optimizers", "sgd", "--workers", "0", "--quiet", "--db",
                 str(db), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert f"created the folder {db.parent} for --db {db}" in err and f"new results database {db}" in err
    assert main(["bench", "run", "--workload", TINY, "--optimizers", "sgd", "--workers", "0", "--quiet", "--db",
                 str(db), "--out", str(tmp_path / "out")]) == 0
    assert "new results database" not in capsys.readouterr().err  # a resume says nothing of the kind


def test_out_that_cannot_be_written_is_refused_before_any_trial(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["bench", "run", "--workload", TINY, "--optimizers", "sgd", "--workers", "0", "--db",
                 str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "file" / "out")]) == 2
    assert "--out: cannot create the folder" in capsys.readouterr().err
    assert not (tmp_path / "r.sqlite").exists()


def test_a_second_bench_run_names_the_live_one(tmp_path, capsys):
    from optfit.bench.storage import ResultsDB

    db = tmp_path / "r.sqlite"
    with ResultsDB(db) as d:
        key, _ = d.begin_run("showdown", "optfit bench run (the first)")
    argv = ["bench", "run", "--workload", TINY, "--optimizers", "sgd", "--workers", "0", "--quiet", "--db", str(db),
            "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"in use by another run: pid {os.getpid()}" in err and "--join" in err
    assert main(argv + ["--join"]) == 0
    assert f"joining the run(s) already working on {db}: pid {os.getpid()}" in capsys.readouterr().err
    with ResultsDB(db) as d:
        d.end_run(key)


def test_closed_stdout_pipe_ends_quietly():
    """`optfit list | head -1`: the reader is gone before optfit writes; no BrokenPipeError traceback."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([sys.executable, "-c", CLI, "list"], stdout=write, stderr=subprocess.PIPE, text=True,
                              env=ENV, cwd=ROOT, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141 and proc.stderr == "", proc.stderr


def test_ctrl_c_stops_a_run_cleanly_and_the_trial_goes_back_to_the_queue(tmp_path):
    from optfit.bench.storage import ResultsDB

    db = tmp_path / "r.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CLI, "bench", "run", "--workload",
                             "tests.bench.runner_workloads:VerySlow", "--optimizers", "sgd", "--seeds", "2",
                             "--workers", "1", "--db", str(db), "--out", str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, cwd=ROOT,
                            start_new_session=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            time.sleep(0.2)
            if db.exists():
                with ResultsDB(db, check=False) as d:
                    if d.counts("showdown")["running"] == 1:
                        break
        else:
            pytest.fail("the run did not start a trial in time")
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "interrupted; finished trials are kept" in err
    with ResultsDB(db) as d:
        counts = d.counts("showdown")
        assert counts["running"] == 0 and counts["queued"] == 2 and d.live_runs() == []


def test_the_workloads_doc_example_runs_from_the_current_directory(tmp_path):
    """docs/workloads.md: its module, saved in the current directory, runs with the documented command from a
    process whose sys.path does not hold that directory (as the `optfit` script's does not); tables show the
    workload's own name; `bench list` and `bench report --format csv` work on the result."""
    import shlex

    text = (ROOT / "docs" / "workloads.md").read_text()
    module = next(b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("# mytasks.py"))
    (tmp_path / "mytasks.py").write_text(module)
    commands = [shlex.split(c)[1:] for c in re.findall(r"^\$ (optfit .*)$", text, re.M)]
    assert [c[:2] for c in commands] == [["bench", "run"], ["bench", "list"], ["bench", "report"]]
    script = ("import sys; sys.path[:] = [p for p in sys.path if p not in ('', '.')]; "
              "from optfit.cli import main; sys.exit(main(sys.argv[1:]))")
    env = dict(ENV, PYTHONPATH=str(ROOT / "src"))
    outs = []
    for argv in commands:
        proc = subprocess.run([sys.executable, "-c", script, *argv], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        outs.append(proc)
    assert "sine-regression adamw seed=0 done" in outs[0].stderr
    html = (tmp_path / "out" / "mytasks" / "report.html").read_text()
    assert "sine-regression" in html and "mytasks:SineRegression" not in html
    assert re.search(r"sine-regression +sgd +0 +done", outs[1].stdout)
    rows = outs[2].stdout.strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("experiment,workload,workload_name")
    assert all(",mytasks:SineRegression,sine-regression," in r for r in rows[1:])


def test_bench_exports_the_workload_interface():
    import optfit.bench
    from optfit.bench.workload import Workload

    assert optfit.bench.Workload is Workload and "Workload" in optfit.bench.__all__
    assert callable(optfit.bench.run_experiment)


def _synthetic_db(path):
    from optfit.bench.storage import ResultsDB
    from tests.bench.synthetic_results import make_results

    results = make_results(evil=False)
    with ResultsDB(path) as db:
        db.add_experiment("exp-a", "optfit bench run --experiment exp-a")
        for r in results:
            db.record_result(r, experiment="exp-a")
        db.add_trials("exp-b", [results[0].spec], command="optfit bench run --experiment exp-b")
    return results


def test_bench_report_csv_and_json(tmp_path, capsys):
    import csv
    import io

    db = tmp_path / "r.sqlite"
    results = _synthetic_db(db)
    assert main(["bench", "report", "--db", str(db), "--experiment", "exp-a", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(results)
    assert {r["status"] for r in rows} == {"done", "diverged", "failed"}
    first = rows[0]
    assert (first["experiment"], first["workload"], first["label"]) == ("exp-a", "quad", "adamw-tuned")
    assert json.loads(first["hparams"]) == results[0].spec.hparams and float(first["final_loss"]) > 0
    assert main(["bench", "report", "--db", str(db), "--format", "json"]) == 0  # every experiment
    text = capsys.readouterr().out
    assert "NaN" not in text and "Infinity" not in text  # strict JSON
    trials = json.loads(text)["trials"]
    assert len(trials) == len(results) + 1 and trials[-1]["status"] == "queued"
    assert [p["step"] for p in trials[0]["curve"]] == [p.step for p in results[0].curve]
    assert main(["bench", "report", "--db", str(db), "--experiment", "exp-c", "--format", "csv"]) == 2
    err = capsys.readouterr().err
    assert "--experiment: unknown experiment 'exp-c' (did you mean" in err and "'exp-a'" in err


def test_bench_list_shows_experiments_and_trials(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    results = _synthetic_db(db)
    assert main(["bench", "list", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert re.search(rf"^exp-a +{len(results)} +0 +0 +33 +3 +1 .*--experiment exp-a$", out, re.M), out
    assert re.search(r"^exp-b +1 +1 +0 +0 +0 +0 ", out, re.M)
    assert main(["bench", "list", "--db", str(db), "--experiment", "exp-a", "--status", "failed,diverged"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["id", "workload", "optimizer", "seed", "status"] and len(lines) == 2 + 4
    assert "RuntimeError: boom" in "".join(lines)
    assert main(["bench", "list", "--db", str(db), "--experiment", "exp-a", "--status", "don"]) == 2
    assert "did you mean 'done'" in capsys.readouterr().err


def test_a_missing_report_dependency_is_said_before_any_trial(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    assert main(["bench", "run", "--workload", TINY, "--optimizers", "sgd", "--workers", "0", "--db",
                 str(tmp_path / "r.sqlite"), "--out", str(tmp_path / "out")]) == 2
    assert "needs matplotlib" in capsys.readouterr().err and not (tmp_path / "r.sqlite").exists()


def test_demo_shows_auto_against_tuned_adamw_and_the_learning_rate_free_methods():
    from optfit.cli import DEMO_OPTIMIZERS
    assert {"adamw-tuned", "auto", "schedule-free-adamw", "prodigy", "adamw"} <= set(DEMO_OPTIMIZERS)
