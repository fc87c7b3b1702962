"""split_params and the matrix optimizers' param groups: who is orthogonalised, who gets the internal AdamW."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import optfit
from optfit.optim import AdaMuon, Muon
from optfit.params import split_params


class TinyLM(nn.Module):
    def __init__(self, vocab=11, dim=8, tie=False):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({"ln": nn.LayerNorm(dim), "qkv": nn.Linear(dim, 3 * dim),
                                                   "proj": nn.Linear(dim, dim, bias=False)}) for _ in range(2))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.gain = nn.Parameter(torch.ones(()))
        if tie:
            self.lm_head.weight = self.wte.weight


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3))
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 2)  # the last Linear: the output head when nothing is named like one


def _names(model, params):
    ids = {id(p) for p in params}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def test_transformer_split():
    model = TinyLM()
    matrix, other = split_params(model)
    assert _names(model, matrix) == ["blocks.0.qkv.weight", "blocks.0.proj.weight", "blocks.1.qkv.weight",
                                     "blocks.1.proj.weight"]
    assert set(_names(model, other)) == {"wte.weight", "lm_head.weight", "gain", "ln_f.weight", "ln_f.bias"} | {
        f"blocks.{i}.{k}" for i in (0, 1) for k in ("ln.weight", "ln.bias", "qkv.bias")}


def test_tied_embedding_and_head_stay_with_adamw():
    model = TinyLM(tie=True)
    matrix, other = split_params(model)
    assert any(p is model.wte.weight for p in other)
    assert all(p is not model.wte.weight for p in matrix) and len(matrix) == 4


def test_conv_kernels_are_matrices_and_the_last_linear_is_the_head():
    model = ConvNet()
    matrix, _ = split_params(model)
    assert _names(model, matrix) == ["features.0.weight", "features.3.weight", "fc1.weight"]


def test_head_names_match_any_path_component():
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 4))
    model.add_module("classifier", nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    model.add_module("tail", nn.Linear(2, 2))  # not the head: a head was found by name
    assert _names(model, split_params(model)[0]) == ["body.weight", "tail.weight"]


def test_patterns_override_and_exclusion_wins():
    model = TinyLM()
    matrix, _ = split_params(model, matrix_patterns=["lm_head.*", "blocks.0.*.weight"],
                             exclude_patterns="blocks.*.proj.weight")
    assert _names(model, matrix) == ["blocks.0.qkv.weight", "blocks.1.qkv.weight", "lm_head.weight"]


def test_bad_patterns_name_the_argument():
    model = TinyLM()
    with pytest.raises(ValueError, match="matrix_patterns: 'blocks.0.ln.\\*' matches no .* >= 2 dimensions"):
        split_params(model, matrix_patterns="blocks.0.ln.*")
    with pytest.raises(ValueError, match="exclude_patterns: 'nothing.*'"):
        split_params(model, exclude_patterns="nothing.*")
    with pytest.raises(TypeError, match="model"):
        split_params([torch.zeros(2, 2)])


def test_frozen_parameters_are_left_out():
    model = TinyLM()
    model.blocks[0]["qkv"].weight.requires_grad_(False)
    matrix, other = split_params(model)
    assert len(matrix) == 3 and all(p.requires_grad for p in matrix + other)


# ------------------------------------------------------------------------------------- create_optimizer
def _groups(opt):
    return [(g["kind"], g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]


def test_create_optimizer_routes_a_model_with_separate_lr_and_decay():
    model = TinyLM()
    opt = optfit.create_optimizer(model, "muon", lr=0.03, weight_decay=0.1, adamw_lr=1e-3, adamw_weight_decay=0.05)
    assert isinstance(opt, Muon)
    # matrices; AdamW part with decay (the lm_head); AdamW part without (embedding, norms, biases, gain)
    assert _groups(opt) == [("matrix", 0.03, 0.1, 4), ("adamw", 1e-3, 0.05, 1), ("adamw", 1e-3, 0.0, 10)]
    assert "momentum" not in opt.param_groups[1] and "adamw_lr" not in opt.param_groups[0]
    assert opt.param_groups[1]["betas"] == (0.9, 0.95) and opt.param_groups[1]["eps"] == 1e-10


def test_adamw_defaults_none_mean_same_as_the_matrix_part():
    opt = optfit.create_optimizer(TinyLM(), "adamuon", lr=2e-3, weight_decay=0.2, no_decay=None)
    assert _groups(opt) == [("matrix", 2e-3, 0.2, 4), ("adamw", 2e-3, 0.2, 11)]


def test_create_optimizer_passes_patterns_and_names():
    model = TinyLM()
    opt = optfit.create_optimizer(model, "root", matrix_patterns="lm_head.weight")
    assert any(p is model.lm_head.weight for p in opt.param_groups[0]["params"])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    model.blocks[1]["proj"].weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="'blocks.1.proj.weight'"):
        opt.step()
    with pytest.raises(TypeError, match="matrix_patterns"):
        optfit.create_optimizer(model, "adamw", matrix_patterns="x")
    with pytest.raises(TypeError, match="matrix_patterns"):
        optfit.create_optimizer(model.parameters(), "muon", matrix_patterns="x")


def test_explicit_groups_override_the_routing():
    model = TinyLM()
    opt = Muon([{"params": [model.wte.weight], "kind": "matrix", "lr": 0.01},
                {"params": [model.blocks[0]["qkv"].weight], "kind": "adamw", "lr": 1e-3}])
    assert _groups(opt) == [("matrix", 0.01, 0.0, 1), ("adamw", 1e-3, 0.0, 1)]
    model.wte.weight.grad = torch.ones_like(model.wte.weight)
    model.blocks[0]["qkv"].weight.grad = torch.ones_like(model.blocks[0]["qkv"].weight)
    opt.step()
    assert set(opt.state[model.wte.weight]) == {"step", "momentum_buffer"}
    assert set(opt.state[model.blocks[0]["qkv"].weight]) == {"step", "exp_avg", "exp_avg_sq"}


def test_a_group_without_kind_is_split_by_dimension_and_its_keys_apply_to_both_halves():
    W, b = torch.zeros(3, 4, requires_grad=True), torch.zeros(4, requires_grad=True)
    opt = Muon([{"params": [W, b], "lr": 0.0, "momentum": 0.5},
                {"params": [torch.zeros(2, requires_grad=True)], "adamw_lr": 0.1, "adamw_betas": (0.5, 0.6)}])
    assert _groups(opt) == [("matrix", 0.0, 0.0, 1), ("adamw", 0.0, 0.0, 1), ("adamw", 0.1, 0.0, 1)]
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[2]["betas"] == (0.5, 0.6)


def test_bad_groups_are_rejected_clearly():
    W, b = torch.zeros(3, 4, requires_grad=True), torch.zeros(4, requires_grad=True)
    with pytest.raises(ValueError, match="kind"):
        Muon([{"params": [W], "kind": "shampoo"}])
    with pytest.raises(ValueError, match="kind.*shape \\(4,\\)"):
        Muon([{"params": [b], "kind": "matrix"}])
    with pytest.raises(ValueError, match="adamw_lr"):
        Muon([{"params": [W], "kind": "matrix", "adamw_lr": 0.1}])
    with pytest.raises(ValueError, match="adamw_betas"):
        Muon([{"params": [b], "adamw_betas": (0.9, 2.0)}])
    with pytest.raises(ValueError, match="lr"):
        AdaMuon([{"params": [b], "kind": "adamw", "lr": -1.0}])


def test_state_dict_keeps_the_kinds():
    model = TinyLM()
    opt = optfit.create_optimizer(model, "muon")
    sd = opt.state_dict()
    assert [g["kind"] for g in sd["param_groups"]] == ["matrix", "adamw", "adamw"]
    opt2 = optfit.create_optimizer(model, "muon")
    opt2.load_state_dict(sd)
    assert [g["kind"] for g in opt2.param_groups] == ["matrix", "adamw", "adamw"]
