"""Meta-training: tasks, the batched path vs the optimizer class, checkpoint/resume, the CLI (no datasets needed:
the generated ``blobs`` task stands in for the image datasets)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import pytest
import torch

from optfit.learned.cli import add_cli
from optfit.learned.meta import initial_weights
from optfit.learned.meta.evaluate import evaluate, format_table
from optfit.learned.meta.tasks import (BatchedMLP, TaskModule, TaskSpec, _down8, init_params, load_dataset,
                                       sample_task)
from optfit.learned.meta.train import CHECKPOINT, EXPORT, MetaConfig, Slot, meta_train, unroll
from optfit.learned.small_fc_lopt import SmallFCLOpt, init_state, load_weights, save_weights

TINY = dict(tasks=("blobs",), iterations=6, pairs=2, workers=2, truncation=3, min_length=5, max_length=9,
            hidden=8, quiet=True)


# ------------------------------------------------------------------------------------------------------ tasks
def test_sample_task_is_deterministic_and_in_range():
    a = sample_task(torch.Generator().manual_seed(3), ("blobs", "mnist8"), 50, 500)
    b = sample_task(torch.Generator().manual_seed(3), ("blobs", "mnist8"), 50, 500)
    assert a == b and 50 <= a.length <= 500 and len(a.scales) == 2 * (len(a.hidden) + 1)
    assert all(1 / 3 <= c <= 3 for c in a.scales) and 0 <= a.init_seed < 10**9
    assert TaskSpec.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_reparameterisation_does_not_change_the_function():
    """θ = c·φ: the loss at initialisation is the same whatever the scales; ∂L/∂φ = c·∂L/∂θ."""
    data = load_dataset("blobs")
    plain = TaskSpec("blobs", hidden=(16,), init_seed=5)
    scaled = dataclasses.replace(plain, scales=(0.5, 2.0, 3.0, 0.25))
    x, y = data.x_train[:64], data.y_train[:64]
    lp, gp = BatchedMLP(plain, data).loss_and_grads([p[None] for p in init_params(plain, 8, 4)], x, y)
    ls, gs = BatchedMLP(scaled, data).loss_and_grads([p[None] for p in init_params(scaled, 8, 4)], x, y)
    torch.testing.assert_close(lp, ls)
    for c, a, b in zip(scaled.scales, gp, gs):
        torch.testing.assert_close(b, c * a)


def test_batched_particles_match_separate_models():
    data = load_dataset("blobs")
    spec = TaskSpec("blobs", hidden=(6,), activation="tanh", init_seed=1)
    phis = [torch.stack([p + 0.1 * i for i in range(3)]) for p in init_params(spec, 8, 4)]
    x, y = data.x_train[:32], data.y_train[:32]
    losses, grads = BatchedMLP(spec, data).loss_and_grads(phis, x, y)
    for i in range(3):
        m = TaskModule(spec, data)
        with torch.no_grad():
            for p, q in zip(m.phis, phis):
                p.copy_(q[i])
        loss = m(x, y)
        loss.backward()
        torch.testing.assert_close(losses[i], loss.detach())
        for p, g in zip(m.phis, grads):
            torch.testing.assert_close(p.grad, g[i])


def test_downsampling_averages_areas():
    img = torch.zeros(1, 784)
    img.view(28, 28)[:4, :4] = 1.0  # the top-left 3.5×3.5 area of an 8×8 cell grid is fully covered
    out = _down8(img).view(8, 8)
    assert out[0, 0] == 1.0 and out[7, 7] == 0.0 and out.sum() > 1.0


def test_unknown_dataset_is_a_value_error():
    with pytest.raises(ValueError, match="dataset"):
        load_dataset("cifar100")


# ------------------------------------------------------------------------ meta path = the shipped optimizer
def test_unroll_trajectory_equals_optimizer_class(tmp_path):
    """A particle unrolled by meta-training follows the trajectory SmallFCLOpt gives on the same task."""
    w = initial_weights(hidden=8, seed=2, kind="random", out_scale=1.0)
    path = tmp_path / "w.safetensors"
    save_weights(path, w)
    w = load_weights(path)
    data = load_dataset("blobs")
    spec = TaskSpec("blobs", hidden=(8,), scales=(2.0, 0.5, 1.0, 3.0), input_scale=1.5, init_seed=4, data_seed=7,
                    length=8)
    phis = [p[None].repeat(2, *([1] * p.ndim)) for p in init_params(spec, 8, 4)]
    slot = Slot(spec, phis, [init_state(p) for p in phis], None, torch.Generator().manual_seed(7))
    slot.task = BatchedMLP(spec, data)
    unroll(slot, w.flat().expand(2, -1), 8, w, loss_clip=2.0)

    model = TaskModule(spec, data)
    opt = SmallFCLOpt(model.parameters(), weights=path)
    gen = torch.Generator().manual_seed(7)
    for _ in range(8):
        x, y = model.task.batch(gen)
        opt.zero_grad()
        model(x, y).backward()
        opt.step()
    for p, q in zip(model.phis, slot.phis):
        torch.testing.assert_close(q[0], p.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(q[1], p.detach(), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------- checkpoint / resume
def test_resume_after_interruption_equals_uninterrupted_run(tmp_path):
    cfg = MetaConfig(**TINY)
    whole = meta_train(cfg, tmp_path / "a")
    first = meta_train(cfg, tmp_path / "b", stop_after=2)
    assert first["iteration"] == 2 and not first["finished"]
    meta_train(cfg, tmp_path / "b", stop_after=1)
    resumed = meta_train(cfg, tmp_path / "b")
    assert resumed["finished"] and resumed["iteration"] == whole["iteration"] == 6
    assert torch.equal(resumed["theta"], whole["theta"])
    assert not torch.equal(whole["theta"], initial_weights(8, 0, "adam").flat())  # it did train
    ck_a = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)
    ck_b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)
    assert ck_a["history"] == ck_b["history"]
    torch.testing.assert_close(load_weights(tmp_path / "b" / EXPORT).flat(), whole["theta"], rtol=0, atol=0)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [h["it"] for h in log if "it" in h] == list(range(1, 7))


def test_resume_with_other_settings_is_refused(tmp_path):
    meta_train(MetaConfig(**TINY), tmp_path, stop_after=1)
    with pytest.raises(ValueError, match="sigma"):
        meta_train(MetaConfig(**{**TINY, "sigma": 0.05}), tmp_path)
    meta_train(MetaConfig(**{**TINY, "iterations": 2}), tmp_path)  # the length of the run may change


@pytest.mark.parametrize("field, value", [("pairs", 0), ("truncation", -1), ("sigma", 0.0), ("max_length", 2),
                                          ("meta_lr", float("nan"))])
def test_bad_config_is_a_value_error_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        MetaConfig(**{**TINY, field: value})


# ------------------------------------------------------------------------------------------------------ CLI
def _cli(argv):
    parser = argparse.ArgumentParser(prog="optfit")
    add_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    args.argv = argv
    return args.func(args)


def test_cli_meta_train_resumes_and_exports(tmp_path, capsys):
    out, export = tmp_path / "run", tmp_path / "final.safetensors"
    argv = ["learned", "meta-train", "--out", str(out), "--tasks", "blobs", "--iterations", "3", "--pairs", "1",
            "--workers", "1", "--truncation", "2", "--min-length", "4", "--max-length", "6", "--hidden", "4",
            "--export", str(export), "--quiet"]
    assert _cli(argv + ["--stop-after", "1"]) == 3 and not export.exists()  # stopped: rerun to continue
    assert _cli(argv) == 0 and export.exists()
    w = load_weights(export)
    assert w.metadata["meta_iterations"] == "3" and "meta-train" in w.metadata["command"]
    assert float(w.metadata["cpu_hours"]) >= 0


def test_cli_rejects_unknown_task(capsys):
    with pytest.raises(SystemExit):
        _cli(["learned", "meta-train", "--tasks", "imagenet"])
    assert "unknown task dataset" in capsys.readouterr().err


def test_evaluate_reports_both_optimizers(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(path, initial_weights(hidden=4))
    rows = evaluate(path, ("blobs",), seeds=1, steps=5)
    assert {r["optimizer"] for r in rows} == {"small-fc-lopt", "adamw(1e-3)"} and len(rows) == 4
    assert all(math.isfinite(r["final"]) and 0 <= r["test_acc"] <= 1 for r in rows)
    assert "lower final training loss in" in format_table(rows)


def test_cli_evaluate_missing_weights_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        _cli(["learned", "evaluate", "--weights", str(tmp_path / "none.safetensors"), "--tasks", "blobs"])
