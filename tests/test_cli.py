from __future__ import annotations

import json

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
