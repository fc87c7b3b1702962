"""Roaree: the smooth-sign Lion (catalogue B3) – surrogates, limits in κ, the recentred sigmoid."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim.roaree import SURROGATES, _FOREACH, _REFERENCE

from .test_parity import SHAPES, _assert_close_runs, _run_impl
from .problems import step_updates



def _stream(n, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=gen, dtype=torch.float64) for _ in range(steps)]


def _trajectory(name, grads, **hp):
    p = torch.zeros(grads[0].shape, dtype=torch.float64, requires_grad=True)
    opt = optfit.create_optimizer([p], name, **hp)
    out = step_updates(opt, p, grads)
    return p.detach(), out, opt


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_every_surrogate_is_odd_increasing_and_bounded(surrogate):
    x = torch.linspace(-5, 5, 2001, dtype=torch.float64)
    for fn in (_REFERENCE[surrogate], lambda t: _FOREACH[surrogate]([t])[0]):
        y = fn(x)
        torch.testing.assert_close(fn(-x), -y, rtol=0, atol=1e-15)
        assert fn(torch.zeros(1, dtype=torch.float64)).item() == 0.0
        assert (torch.diff(y) > 0).all()
        assert y.abs().max() < (math.pi / 2 if surrogate == "arctan" else 1.0)


@pytest.mark.parametrize("surrogate", SURROGATES)
def test_update_follows_sign_of_interpolation(surrogate):
    # step 1: m = 0 so c = (1 − β₁)g – every coordinate must move against g (plain sigmoid would not)
    g = _stream(64, 1)[0]
    _, (d,), _ = _trajectory("roaree", [g], lr=0.01, curv=10.0, surrogate=surrogate)
    assert torch.equal(torch.sign(d), -torch.sign(g))


def test_sigmoid_is_recentred():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    torch.testing.assert_close(_REFERENCE["sigmoid"](x), torch.tanh(x / 2), rtol=0, atol=1e-15)


def test_large_curvature_tanh_recovers_lion():
    grads = _stream(100, 20)
    roaree, _, _ = _trajectory("roaree", grads, lr=0.01, curv=1e6, surrogate="tanh")
    lion, _, _ = _trajectory("lion", grads, lr=0.01)
    torch.testing.assert_close(roaree, lion, rtol=0, atol=1e-6)


@pytest.mark.parametrize("surrogate,slope", [("tanh", 1.0), ("arctan", 1.0), ("erf", 2 / math.sqrt(math.pi)),
                                             ("sigmoid", 0.5), ("norm", 1.0)])  # softsign: 1st-order error
def test_small_curvature_is_sgd_with_lr_eta_kappa(surrogate, slope):
    lr, curv = 0.1, 1e-3
    grads = _stream(100, 5)
    _, moves, _ = _trajectory("roaree", grads, lr=lr, curv=curv, surrogate=surrogate, betas=(0.0, 0.99))
    for g, d in zip(grads, moves):  # β₁ = 0 → c = g at every step
        torch.testing.assert_close(d, -lr * curv * slope * g, rtol=2e-5, atol=0)


def test_arctan_steps_up_to_half_pi_lr():
    _, (d,), _ = _trajectory("roaree", [torch.tensor([1.0, -1.0], dtype=torch.float64)], lr=0.01, curv=1e9,
                             surrogate="arctan")
    torch.testing.assert_close(d, torch.tensor([-0.01, 0.01], dtype=torch.float64) * math.pi / 2)


def test_surrogate_lives_in_the_param_group():
    a = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = optfit.create_optimizer([{"params": [a]}, {"params": [b], "surrogate": "softsign"}], "roaree",
                                  lr=1.0, curv=1.0)
    assert [grp["surrogate"] for grp in opt.param_groups] == ["tanh", "softsign"]
    a.grad = torch.ones(3, dtype=torch.float64)
    b.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(a.detach(), torch.full((3,), -math.tanh(0.1), dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.full((3,), -0.1 / 1.1, dtype=torch.float64))
    assert opt.state_dict()["param_groups"][1]["surrogate"] == "softsign"


@pytest.mark.parametrize("bad", [{"surrogate": "relu"}, {"curv": 0.0}, {"curv": -1.0}])
def test_invalid_surrogate_or_curvature(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        optfit.create_optimizer([torch.zeros(2, requires_grad=True)], "roaree", **bad)


@pytest.mark.parametrize("impl", ["foreach", pytest.param("compiled", marks=pytest.mark.compiled)])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_fast_paths_match_reference(impl, surrogate):
    hp = {"surrogate": surrogate, "curv": 10.0, "weight_decay": 0.1, "cautious": surrogate == "erf"}
    ref = _run_impl("roaree", "reference", SHAPES, torch.float32, 10, hp)
    fast = _run_impl("roaree", impl, SHAPES, torch.float32, 10, hp)
    _assert_close_runs(ref, fast, rtol=1e-6, atol=1e-6)
