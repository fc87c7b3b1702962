"""Grad-Avg (catalogue A16): the Heun step, two closure calls, non-finite handling of the trial gradient."""

from __future__ import annotations

import pytest
import torch

import optfit
from optfit.optim import GradAvg


def _quadratic(a, x0, **kw):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    a = torch.as_tensor(a, dtype=torch.float64)
    opt = GradAvg([x], **kw)
    calls = []

    def closure():
        opt.zero_grad()
        loss = 0.5 * (a * x * x).sum()
        loss.backward()
        calls.append(float(loss.detach()))
        return loss

    return x, opt, closure, calls


@pytest.mark.parametrize("eta_a", [0.1, 0.5, 1.0, 1.9])
def test_one_step_on_half_a_x_squared_is_heun(eta_a):
    a, lr = 3.0, eta_a / 3.0
    x, opt, closure, calls = _quadratic(a, [2.0, -1.0], lr=lr)
    loss = opt.step(closure)
    assert len(calls) == 2
    assert float(loss.detach()) == calls[0]  # the first closure's loss
    factor = 1 - eta_a + eta_a**2 / 2
    torch.testing.assert_close(x.detach(), torch.tensor([2.0, -1.0], dtype=torch.float64) * factor,
                               rtol=1e-14, atol=0)


def test_heun_on_a_nonquadratic_function():
    lr = 0.05
    x = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64, requires_grad=True)
    opt = GradAvg([x], lr=lr)

    def f(t):
        return (torch.sin(t) + 0.25 * t**4).sum()

    def grad(t):
        return torch.cos(t) + t**3

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    theta = start = x.detach().clone()
    for _ in range(5):
        opt.step(closure)
        g0 = grad(theta)
        theta = theta - lr / 2 * (g0 + grad(theta - lr * g0))
    torch.testing.assert_close(x.detach(), theta, rtol=1e-13, atol=1e-14)
    assert (theta - start).abs().min() > 1e-2  # sanity: every coordinate moved


def test_coupled_weight_decay_is_heun_on_the_regularised_objective():
    a, lr, wd = 2.0, 0.3, 0.5
    x, opt, closure, _ = _quadratic(a, [1.5], lr=lr, weight_decay=wd)
    opt.step(closure)
    h = lr * (a + wd)
    assert x.item() == pytest.approx(1.5 * (1 - h + h * h / 2), rel=1e-14)


def test_decoupled_weight_decay_multiplies_theta_once():
    a, lr, wd = 2.0, 0.3, 0.5
    x, opt, closure, _ = _quadratic(a, [1.5], lr=lr, weight_decay=wd, decay_mode="decoupled")
    opt.step(closure)
    h = lr * a
    assert x.item() == pytest.approx(1.5 * (1 - lr * wd - h + h * h / 2), rel=1e-14)


def test_step_without_closure_raises_clearly():
    x = torch.zeros(2, requires_grad=True)
    x.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="closure"):
        GradAvg([x]).step()


def _bad_second_call(policy, bad=float("nan")):
    x, opt, _, _ = _quadratic(1.0, [1.0, 2.0], lr=0.1, nonfinite=policy)
    n = [0]

    def closure():
        opt.zero_grad()
        loss = 0.5 * (x * x).sum()
        loss.backward()
        n[0] += 1
        if n[0] % 2 == 0 and n[0] > 2:
            x.grad[1] = bad
        return loss

    opt.step(closure)  # a clean step first, so there is state to protect
    return x, opt, closure


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_nonfinite_trial_gradient_raise_restores_theta_and_state(bad):
    x, opt, closure = _bad_second_call("raise", bad)
    before, state = x.detach().clone(), {k: v.clone() for k, v in opt.state[x].items()}
    with pytest.raises(FloatingPointError, match="parameter 0"):
        opt.step(closure)
    assert torch.equal(x.detach(), before)
    assert all(torch.equal(opt.state[x][k], v) for k, v in state.items())


def test_nonfinite_trial_gradient_skip_restores_theta_and_counts():
    x, opt, closure = _bad_second_call("skip")
    before, step = x.detach().clone(), opt.state[x]["step"].clone()
    opt.step(closure)
    assert torch.equal(x.detach(), before)
    assert opt.skipped_steps == 1 and torch.equal(opt.state[x]["step"], step)


def test_missing_trial_gradient_is_an_error_and_theta_is_restored():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = GradAvg([x])
    n = [0]

    def closure():
        opt.zero_grad()
        n[0] += 1
        if n[0] == 1:
            (x * x).sum().backward()
        return torch.tensor(0.0)

    with pytest.raises(RuntimeError, match="trial point"):
        opt.step(closure)
    assert torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


def test_registry_names_and_caution():
    assert optfit.optimizer_info("grad_avg").cls is GradAvg
    assert optfit.optimizer_info("gradavg").cls is GradAvg
    assert optfit.optimizer_info("grad-avg").needs_closure
    with pytest.raises(ValueError, match="cautious"):
        GradAvg([torch.zeros(1, requires_grad=True)], cautious=True)
