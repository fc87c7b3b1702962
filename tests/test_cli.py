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


def test_demo_trains_and_writes_report(tmp_path, capsys):
    pytest.importorskip("sklearn")
    assert main(["demo", "--optimizers", "adamw,sgd", "--steps", "60", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert {r["optimizer"] for r in results} == {"adamw", "sgd"}
    assert all(r["val_accuracy"] > 0.5 for r in results)  # 10 classes: chance is 0.1
    assert "optimizer" in capsys.readouterr().out
