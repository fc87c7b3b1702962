from __future__ import annotations

import json

import pytest

from optfit.cli import main


def test_list_prints_every_name(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "adamw" in out and "sgd" in out


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


def test_bench_errors_name_the_argument(tmp_path, capsys):
    assert main(["bench", "run", "--suite", "nope"]) == 2
    assert "--suite" in capsys.readouterr().err
    assert main(["bench", "report", "--db", str(tmp_path / "missing.sqlite")]) == 2
    assert "--db" in capsys.readouterr().err
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    assert main(["bench", "report", "--db", str(bad)]) == 2
    assert "bad.sqlite" in capsys.readouterr().err
