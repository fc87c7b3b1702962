"""Catalogue A1 sanity tests for SGD."""

import pytest
import torch

import optfit


def _quad(a, x0, steps, **hp):
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    opt = optfit.optim.SGD([x], **hp)
    out = []
    for _ in range(steps):
        x.grad = a * x.detach().clone()
        opt.step()
        out.append(float(x))
    return out


def test_plain_sgd_contracts_geometrically():
    xs = _quad(1.0, 1.0, 20, lr=0.1)
    assert xs == pytest.approx([0.9 ** (t + 1) for t in range(20)], rel=1e-14)


def test_heavy_ball_first_step_is_plain_then_uses_buffer():
    xs = _quad(1.0, 1.0, 2, lr=0.1, momentum=0.9)
    # b1 = g0 = 1 → x1 = 0.9; b2 = 0.9·1 + 0.9 = 1.8 → x2 = 0.9 − 0.18
    assert xs == pytest.approx([0.9, 0.72], rel=1e-14)


def test_heavy_ball_is_stable_inside_and_diverges_outside_its_region():
    # stable for 0 < ηa < 2(1 + μ) = 3.8
    assert abs(_quad(1.0, 1.0, 400, lr=3.7, momentum=0.9)[-1]) < 1e-3
    assert abs(_quad(1.0, 1.0, 400, lr=3.9, momentum=0.9)[-1]) > 1e3


def test_nesterov_step_by_hand():
    xs = _quad(1.0, 1.0, 2, lr=0.1, momentum=0.9, nesterov=True)
    # t1: b=1, d = 1 + 0.9 → x1 = 1 − 0.19 = 0.81 ; t2: g = 0.81, b = 0.9 + 0.81 = 1.71, d = 0.81 + 1.539
    assert xs == pytest.approx([0.81, 0.81 - 0.1 * (0.81 + 0.9 * 1.71)], rel=1e-14)


def test_dampening_scales_the_gradient_after_the_first_step():
    xs = _quad(0.0, 1.0, 3, lr=0.1, momentum=0.5, dampening=0.5)  # a = 0: g ≡ 0 → nothing moves
    assert xs == [1.0, 1.0, 1.0]


def test_nesterov_needs_momentum():
    with pytest.raises(ValueError, match="nesterov"):
        optfit.optim.SGD([torch.zeros(1, requires_grad=True)], nesterov=True)
