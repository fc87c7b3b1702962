"""Adafactor: hand-computed steps and the catalogue's sanity tests (A9)."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import Adafactor
from .problems import step_updates

D = torch.float64


def _step(opt, p, g):
    return step_updates(opt, p, [g])[0]


def _rms(x):
    return float(x.pow(2).mean().sqrt())


def _manual(theta, grads, *, lr=None, eps1=1e-30, eps2=1e-3, d=1.0, c=-0.8, scale=True, wd=0.0):
    """An independent float64 re-derivation of the paper's algorithm (no momentum)."""
    theta = theta.clone()
    R = C = V = None
    for t, g in enumerate(grads, start=1):
        rho = min(1e-2, 1 / math.sqrt(t)) if lr is None else lr
        alpha = max(eps2, _rms(theta)) * rho if scale else rho
        b2 = 1 - t**c
        G = g * g + eps1
        if g.ndim >= 2:
            R = (1 - b2) * G.mean(-1) if R is None else b2 * R + (1 - b2) * G.mean(-1)
            C = (1 - b2) * G.mean(-2) if C is None else b2 * C + (1 - b2) * G.mean(-2)
            Vhat = (R / R.mean(-1, keepdim=True)).unsqueeze(-1) * C.unsqueeze(-2)
        else:
            V = (1 - b2) * G if V is None else b2 * V + (1 - b2) * G
            Vhat = V
        U = g / Vhat.sqrt()
        U = U / max(1.0, _rms(U) / d)
        theta = theta - wd * alpha * theta - alpha * U
    return theta


def test_rank_one_first_update_is_alpha_sign_g():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(5, 7, dtype=D, generator=gen).requires_grad_()
    a, b = torch.randn(5, 1, dtype=D, generator=gen), torch.randn(1, 7, dtype=D, generator=gen)
    g = a * b  # g² is rank 1: the factored V̂ is exact
    alpha1 = max(1e-3, _rms(W.detach())) * 1e-2
    delta = _step(Adafactor([W]), W, g)
    torch.testing.assert_close(delta, -alpha1 * g.sign(), rtol=1e-9, atol=0)


def test_vector_first_update_and_zero_init_scale():
    x = torch.zeros(6, dtype=D, requires_grad=True)  # RMS(θ0) = 0 → α1 = ε2·ρ1
    g = torch.tensor([3.0, -0.5, 1e-3, -20.0, 2.0, 0.1], dtype=D)
    delta = _step(Adafactor([x]), x, g)
    torch.testing.assert_close(delta, -1e-3 * 1e-2 * g.sign(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("shape", [(4, 6), (2, 3, 5), (7,)])
def test_matches_hand_computation_over_steps(shape):
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(shape, dtype=D, generator=gen)
    grads = [torch.randn(shape, dtype=D, generator=gen) * s for s in (1.0, 30.0, 0.1, 2.0, 5.0)]
    p = theta.clone().requires_grad_()
    opt = Adafactor([p], weight_decay=0.1)
    for g in grads:
        _step(opt, p, g)
    torch.testing.assert_close(p.detach(), _manual(theta, grads, wd=0.1), rtol=1e-10, atol=1e-12)


def test_update_clipping_after_a_gradient_jump():
    x = torch.ones(4, dtype=D, requires_grad=True)
    opt = Adafactor([x], scale_parameter=False)
    _step(opt, x, torch.ones(4, dtype=D))
    delta = _step(opt, x, torch.full((4,), 100.0, dtype=D))
    b2 = 1 - 2**-0.8
    u = 100 / math.sqrt(b2 * 1 + (1 - b2) * 1e4)
    assert u > 1.0  # RMS(U) > d: clipped to RMS 1
    torch.testing.assert_close(delta, torch.full((4,), -1e-2, dtype=D), rtol=1e-12, atol=0)


def test_relative_step_schedule_ignores_lr_and_lr_used_without_it():
    g = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    for lr in (1e-2, 123.0):
        x = torch.zeros(3, dtype=D, requires_grad=True)
        opt = Adafactor([x], lr=lr, scale_parameter=False)
        _step(opt, x, g)
        opt.state[x]["step"].fill_(39999.0)  # next step t = 40000 → ρ = 1/√t = 5e-3
        torch.testing.assert_close(_step(opt, x, g), -5e-3 * g.sign(), rtol=1e-9, atol=0)
    x = torch.full((3,), 2.0, dtype=D, requires_grad=True)
    delta = _step(Adafactor([x], lr=0.3, relative_step=False), x, g)
    torch.testing.assert_close(delta, -2.0 * 0.3 * g.sign(), rtol=1e-9, atol=0)


def test_warmup_init_rho_is_linear():
    x = torch.zeros(3, dtype=D, requires_grad=True)
    opt = Adafactor([x], scale_parameter=False, warmup_init=True)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    for t in range(1, 4):
        torch.testing.assert_close(_step(opt, x, g), -1e-6 * t * g.sign(), rtol=1e-9, atol=0)


def test_weight_decay_is_lambda_alpha_theta_and_beta1_momentum():
    W = torch.full((3, 4), 2.0, dtype=D, requires_grad=True)
    opt = Adafactor([W], weight_decay=0.5)
    _step(opt, W, torch.zeros(3, 4, dtype=D))  # U = 0: only the decay moves θ
    torch.testing.assert_close(W.detach(), torch.full((3, 4), 2.0 * (1 - 0.5 * 2.0 * 1e-2), dtype=D))
    x = torch.full((3,), -1.0, dtype=D, requires_grad=True)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    delta = _step(Adafactor([x], beta1=0.9), x, g)
    torch.testing.assert_close(delta, -(1 - 0.9) * 1e-2 * g.sign(), rtol=1e-9, atol=0)


def test_factored_state_is_o_m_plus_n():
    W, B, v = (torch.randn(6, 7, requires_grad=True), torch.randn(3, 4, 5, requires_grad=True),
               torch.randn(5, requires_grad=True))
    opt = Adafactor([W, B, v])
    for p in (W, B, v):
        p.grad = torch.randn_like(p)
    opt.step()
    assert {k: tuple(t.shape) for k, t in opt.state[W].items() if k != "step"} == \
        {"exp_avg_sq_row": (6,), "exp_avg_sq_col": (7,)}
    assert {k: tuple(t.shape) for k, t in opt.state[B].items() if k != "step"} == \
        {"exp_avg_sq_row": (3, 4), "exp_avg_sq_col": (3, 5)}
    assert {k: tuple(t.shape) for k, t in opt.state[v].items() if k != "step"} == {"exp_avg_sq": (5,)}


@pytest.mark.parametrize("kwargs, name", [({"beta2_decay": 0.5}, "beta2_decay"), ({"d": 0.0}, "d"),
                                          ({"eps": (1e-30, -1.0)}, "eps"), ({"beta1": 1.0}, "beta1"),
                                          ({"relative_step": False, "warmup_init": True}, "warmup_init"),
                                          ({"impl": "foreach"}, "impl"), ({"decay_mode": "independent"}, "decay_mode")])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Adafactor([torch.zeros(2, requires_grad=True)], **kwargs)
