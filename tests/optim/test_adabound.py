"""AdaBound / AMSBound: hand-computed steps and the catalogue's sanity tests (A11)."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import AdaBound
from .problems import step_updates

D = torch.float64
IMPLS = ["reference", "foreach"]


def _step(opt, p, g):
    return step_updates(opt, p, [g])[0]


def _manual(theta, grads, lrs, *, b1=0.9, b2=0.999, final_lr=0.1, gamma=1e-3, eps=1e-8, amsbound=False):
    """Independent float64 re-derivation of the paper's update (no weight decay); lrs[t] is the scheduled lr."""
    m, v, v_max = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    theta = theta.clone()
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        v_max = torch.maximum(v_max, v)
        a = lr * math.sqrt(1 - b2**t) / (1 - b1**t) / ((v_max if amsbound else v).sqrt() + eps)
        target = final_lr * lr / lrs[0]
        lo, hi = target * (1 - 1 / (gamma * t + 1)), target * (1 + 1 / (gamma * t))
        theta -= a.clamp(lo, hi) * m
    return theta


@pytest.mark.parametrize("impl", IMPLS)
def test_first_step_equals_adams(impl):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, dtype=D, generator=gen)
    g = torch.randn(10, dtype=D, generator=gen)
    p, q = x.clone().requires_grad_(), x.clone().requires_grad_()
    delta = _step(AdaBound([p], lr=1e-3, impl=impl), p, g)  # t = 1: lo ≈ 1e-4, hi ≈ 100.1 do not bite
    torch.testing.assert_close(delta, -1e-3 * g.sign(), rtol=1e-5, atol=0)
    # ε sits before the √(1−β2ᵗ) correction here, after it in torch: at t = 1 that is ε_torch = ε/√(1−β2)
    adam = _step(torch.optim.Adam([q], lr=1e-3, eps=1e-8 / math.sqrt(1e-3)), q, g)
    torch.testing.assert_close(delta, adam, rtol=1e-12, atol=0)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("amsbound", [False, True])
def test_matches_hand_computation_with_active_bounds_and_schedule(impl, amsbound):
    gen = torch.Generator().manual_seed(1)
    theta = torch.randn(5, 4, dtype=D, generator=gen)
    grads = [torch.randn(5, 4, dtype=D, generator=gen) * s for s in (1.0, 10.0, 0.1, 3.0, 0.01, 1.0, 50.0, 0.5)]
    lrs = [0.01, 0.01, 0.005, 0.005, 0.02, 0.01, 0.01, 0.002]
    p = theta.clone().requires_grad_()
    opt = AdaBound([p], lr=lrs[0], gamma=0.5, final_lr=0.05, amsbound=amsbound, impl=impl)
    for g, lr in zip(grads, lrs):
        opt.param_groups[0]["lr"] = lr  # as a scheduler would
        _step(opt, p, g)
    expected = _manual(theta, grads, lrs, gamma=0.5, final_lr=0.05, amsbound=amsbound)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)
    # the bounds really bit: without them the result differs
    free = _manual(theta, grads, lrs, gamma=1e-12, final_lr=0.05, amsbound=amsbound)
    clipped = (free - expected).abs().max()
    assert clipped > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
def test_late_update_is_final_lr_times_m_and_follows_the_schedule(impl):
    x = torch.zeros(4, dtype=D, requires_grad=True)
    opt = AdaBound([x], lr=1e-3, impl=impl)
    g = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=D)
    _step(opt, x, g)
    opt.state[x]["step"].fill_(1e7 - 1)  # t = 1e7 ≫ 1/γ: both bounds are within 1e-4 of final_lr
    m = 0.9 * opt.state[x]["exp_avg"] + 0.1 * g
    torch.testing.assert_close(_step(opt, x, g), -0.1 * m, rtol=2e-4, atol=0)
    opt.param_groups[0]["lr"] = 5e-4  # a scheduler halving lr halves the bounds (η* = final_lr·η/η₀)
    m = 0.9 * m + 0.1 * g
    torch.testing.assert_close(_step(opt, x, g), -0.05 * m, rtol=2e-4, atol=0)


def test_gamma_zero_without_eps_is_adam():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, dtype=D, generator=gen)
    p, q = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, theirs = AdaBound([p], lr=0.01, gamma=0.0, eps=0.0), torch.optim.Adam([q], lr=0.01, eps=0.0)
    for _ in range(20):
        g = torch.randn(3, 4, dtype=D, generator=gen)
        _step(ours, p, g), _step(theirs, q, g)
    torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-12, atol=1e-14)


def test_amsbound_keeps_max_and_coupled_decay():
    x = torch.tensor([2.0, -1.0], dtype=D, requires_grad=True)
    opt = AdaBound([x], amsbound=True)
    _step(opt, x, torch.tensor([10.0, 10.0], dtype=D))
    _step(opt, x, torch.tensor([0.1, 0.1], dtype=D))
    st = opt.state[x]
    assert torch.all(st["max_exp_avg_sq"] > st["exp_avg_sq"])
    y = torch.tensor([2.0, -1.0], dtype=D, requires_grad=True)
    delta = _step(AdaBound([y], lr=1e-3, weight_decay=0.5), y, torch.zeros(2, dtype=D))  # g = λθ (L2)
    torch.testing.assert_close(delta, -1e-3 * y.detach().sign(), rtol=1e-6, atol=0)


def test_invalid_arguments():
    for kwargs, name in [({"final_lr": -1.0}, "final_lr"), ({"gamma": 1.0}, "gamma"), ({"gamma": -0.1}, "gamma")]:
        with pytest.raises(ValueError, match=name):
            AdaBound([torch.zeros(2, requires_grad=True)], **kwargs)
