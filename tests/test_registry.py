"""The public API: list_optimizers, optimizer_info, create_optimizer, optfit.optim.<ClassName>."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import optfit
import optfit.optim

REQUIRED = ["sgd", "adam", "adamw", "amsgrad", "nadam", "nadamw", "radam", "adagrad", "rmsprop", "adafactor",
            "lion", "adabelief", "adabound", "amsbound", "ademamix", "exadam", "gravity", "grad-avg", "roaree",
            "sania", "cadamw", "clion", "muon", "adamuon", "root", "gap-sgd", "gap-adam", "gap-adamw"]


def test_every_issue_name_is_registered():
    missing = [n for n in REQUIRED if n not in optfit.list_optimizers()]
    assert not missing, missing


def test_list_optimizers_filters_with_fnmatch():
    assert optfit.list_optimizers("adam*")[:4] == ["adam", "adam-cm", "adamuon", "adamw"]
    assert {"adam", "adamw", "cadamw", "nadamw"} <= set(optfit.list_optimizers("*adam*"))
    assert optfit.list_optimizers("no-such-*") == []
    assert optfit.list_optimizers() == sorted(optfit.list_optimizers())


def test_info_is_frozen_and_complete():
    for name in optfit.list_optimizers():
        info = optfit.optimizer_info(name)
        assert info.name == name and info.family and info.paper and info.description
        assert "lr" in info.defaults, name
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.name = "x"  # type: ignore[misc]
        with pytest.raises(TypeError):
            info.preset["lr"] = 1.0  # type: ignore[index]
        # every class is exported by its package (optfit.optim; the selection engine and auto: optfit.gap;
        # learned optimizers: optfit.learned)
        home = {"optfit.gap": optfit.gap, "optfit.learned": optfit.learned}.get(
            info.cls.__module__.rsplit(".", 1)[0], optfit.optim)
        assert getattr(home, info.cls.__name__) is info.cls, name


def test_lookup_is_case_and_separator_insensitive():
    assert optfit.optimizer_info("AdamW") is optfit.optimizer_info("adamw")
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        optfit.optimizer_info("adamx")


def test_presets_are_applied_and_protected():
    opt = optfit.create_optimizer([nn.Parameter(torch.zeros(2))], "cadamw")
    assert opt.defaults["cautious"] is True
    with pytest.raises(TypeError, match="fixes cautious"):
        optfit.create_optimizer([nn.Parameter(torch.zeros(2))], "cadamw", cautious=False)
    assert optfit.optimizer_info("amsgrad").defaults["amsgrad"] is True


def test_unknown_hyperparameter_lists_accepted_ones():
    with pytest.raises(TypeError) as err:
        optfit.create_optimizer([nn.Parameter(torch.zeros(2))], "adamw", momentum=0.9)
    assert "'momentum'" in str(err.value) and "betas" in str(err.value) and "weight_decay" in str(err.value)


def test_module_gets_decay_and_no_decay_groups():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 2, bias=False))
    opt = optfit.create_optimizer(model, "adamw", weight_decay=0.1)
    decay, rest = opt.param_groups
    assert decay["weight_decay"] == 0.1 and rest["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}  # noqa: E731
    assert ids(decay) == {id(model[1].weight), id(model[3].weight)}
    assert ids(rest) == {id(model[0].weight), id(model[1].bias), id(model[2].weight), id(model[2].bias)}


def test_no_decay_can_be_told_otherwise():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    assert len(optfit.create_optimizer(model, "adamw", no_decay=None).param_groups) == 1
    opt = optfit.create_optimizer(model, "adamw", no_decay=["0.*"])
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(model[0].weight), id(model[0].bias)}


def test_frozen_parameters_are_left_out():
    model = nn.Linear(3, 3)
    model.bias.requires_grad_(False)
    opt = optfit.create_optimizer(model, "sgd")
    assert [p for g in opt.param_groups for p in g["params"]] == [model.weight]


def test_params_iterable_and_named_parameters_are_accepted():
    model = nn.Linear(3, 2)
    opt = optfit.create_optimizer(model.parameters(), "adam")
    assert len(opt.param_groups) == 1
    named = optfit.optim.AdamW(model.named_parameters())
    model.weight.grad = torch.full_like(model.weight, float("nan"))
    model.bias.grad = torch.zeros_like(model.bias)
    with pytest.raises(FloatingPointError, match="'weight'"):
        named.step()


def test_markdown_table_lists_every_name():
    table = optfit.registry.markdown_table()
    for name in optfit.list_optimizers():
        assert f"| `{name}` |" in table


def test_readme_table_is_generated_from_the_registry():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert optfit.registry.splice_readme(readme) == readme, "README table is stale: run `make readme`"
