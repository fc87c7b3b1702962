"""EXAdam (catalogue A13, latest official form): constant-gradient step sizes and decoupled decay."""

from __future__ import annotations

import pytest
import torch

import optfit

from .test_parity import SHAPES, _assert_close_runs, _run_impl
from .problems import step_updates



def _moves(steps, grad, **hp):
    p = torch.zeros(grad.shape, dtype=torch.float64, requires_grad=True)
    opt = optfit.create_optimizer([p], "exadam", **hp)
    return [d / hp["lr"] for d in step_updates(opt, p, [grad] * steps)]


def test_constant_gradient_first_steps():
    # g = ±1: d₁ = 1 + β₂ᵗ, d₂ = 1 + β₁ᵗ (ε negligible), step/η = d₁(m + g)/(1−β₁ᵗ) / √(d₂ v/(1−β₂ᵗ))
    g = torch.tensor([1.0, -1.0], dtype=torch.float64)
    moves = _moves(5, g, lr=1e-3)
    expected = [15.9524, 9.3014, 7.1229, 6.0611, 5.4448]  # the catalogue rounds the last one to 5.45
    for d, e in zip(moves, expected):
        torch.testing.assert_close(d, -e * g, rtol=0, atol=1e-4)


def test_constant_gradient_step_tends_to_twice_lr():
    g = torch.tensor([0.5, -3.0], dtype=torch.float64)
    moves = _moves(3000, g, lr=1e-3, betas=(0.9, 0.99))
    torch.testing.assert_close(moves[-1], -2.0 * torch.sign(g), rtol=0, atol=1e-6)


def test_decay_is_decoupled_and_applied_to_theta():
    p = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    a = optfit.create_optimizer([p], "exadam", lr=0.1, weight_decay=0.5)
    b = optfit.create_optimizer([q], "exadam", lr=0.1)
    g = torch.tensor([0.3, 0.7], dtype=torch.float64)
    p.grad, q.grad = g.clone(), g.clone()
    a.step(), b.step()
    torch.testing.assert_close(p.detach(), q.detach() - 0.1 * 0.5 * torch.tensor([2.0, -1.0],
                                                                                dtype=torch.float64))


def test_eps_must_be_positive():
    with pytest.raises(ValueError, match="eps"):
        optfit.create_optimizer([torch.zeros(2, requires_grad=True)], "exadam", eps=0.0)


def test_zero_gradient_coordinate_stays_put():
    d = _moves(3, torch.tensor([0.0, 1.0], dtype=torch.float64), lr=0.1)
    assert all(x[0].item() == 0.0 and torch.isfinite(x).all() for x in d)


@pytest.mark.parametrize("impl", ["foreach", pytest.param("compiled", marks=pytest.mark.compiled)])
@pytest.mark.parametrize("hp", [{"weight_decay": 0.1}, {"betas": (0.5, 0.9), "cautious": True}])
def test_fast_paths_match_reference(impl, hp):
    ref = _run_impl("exadam", "reference", SHAPES, torch.float32, 10, hp)
    fast = _run_impl("exadam", impl, SHAPES, torch.float32, 10, hp)
    _assert_close_runs(ref, fast, rtol=1e-6, atol=1e-6)
