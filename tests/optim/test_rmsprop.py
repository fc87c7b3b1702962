"""RMSprop sanity checks from the catalogue (A8): the 1/√(1−αᵗ) early overshoot, centered, momentum."""

from __future__ import annotations

import pytest
import torch

from optfit.optim import RMSprop

from .problems import updates_under_constant_gradient

G = torch.tensor([2.0, -0.3, 7.0, -1e-2], dtype=torch.float64)
IMPLS = pytest.mark.parametrize("impl", ["reference", "foreach"])


def _updates(opt, p, steps):
    return updates_under_constant_gradient(opt, p, G, steps)


@IMPLS
def test_first_step_is_about_ten_lr(impl):
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    (d,) = _updates(RMSprop([p], lr=0.01, impl=impl), p, 1)
    torch.testing.assert_close(d, -0.01 * G / (0.1 * G.abs() + 1e-8), rtol=1e-14, atol=0)
    torch.testing.assert_close(d, -0.1 * torch.sign(G), rtol=1e-5, atol=0)


@IMPLS
def test_constant_gradient_has_no_bias_correction(impl):
    # v_t = (1−αᵗ)g²  ⇒  Δθ_t = −η sign(g)/√(1−αᵗ): starts ≈ 10η, settles at η
    lr, alpha = 0.01, 0.9
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    for t, d in enumerate(_updates(RMSprop([p], lr=lr, alpha=alpha, impl=impl), p, 30), start=1):
        torch.testing.assert_close(d, -lr * G / ((1 - alpha**t) ** 0.5 * G.abs() + 1e-8), rtol=1e-12, atol=0)


@IMPLS
def test_centered_uses_the_variance(impl):
    # constant g: v − ḡ² = (1−αᵗ)αᵗ g²
    lr, alpha, eps = 0.01, 0.9, 1e-8
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = RMSprop([p], lr=lr, alpha=alpha, centered=True, eps=eps, impl=impl)
    for t, d in enumerate(_updates(opt, p, 10), start=1):
        var = (1 - alpha**t) * alpha**t * G * G
        torch.testing.assert_close(d, -lr * G / (var.sqrt() + eps), rtol=1e-10, atol=0)


@IMPLS
def test_momentum_accumulates_normalised_gradients(impl):
    lr, alpha, mu = 0.01, 0.99, 0.5
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(4, dtype=torch.float64)
    for t, d in enumerate(_updates(RMSprop([p], lr=lr, alpha=alpha, momentum=mu, impl=impl), p, 6), start=1):
        b = mu * b + G / ((1 - alpha**t) ** 0.5 * G.abs() + 1e-8)
        torch.testing.assert_close(d, -lr * b, rtol=1e-12, atol=0)


@IMPLS
def test_state_follows_the_options(impl):
    p = torch.zeros(3, requires_grad=True)
    opt = RMSprop([p], momentum=0.9, centered=True, impl=impl)
    p.grad = torch.ones(3)
    opt.step()
    assert set(opt.state[p]) == {"step", "square_avg", "momentum_buffer", "grad_avg"}


@pytest.mark.parametrize("key,value", [("alpha", 1.5), ("momentum", -0.1), ("centered", 1)])
def test_invalid_values_raise(key, value):
    with pytest.raises(ValueError, match=key):
        RMSprop([torch.zeros(2, requires_grad=True)], **{key: value})


@IMPLS
def test_momentum_switched_on_mid_run_starts_from_a_zero_buffer(impl):
    """A group's momentum may change between steps (schedulers do it): going from 0 to μ creates the buffer at 0,
    so the first momentum step is the plain step d and the next one μd + d (was KeyError 'momentum_buffer')."""
    lr, alpha, mu = 0.01, 0.9, 0.5
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = RMSprop([p], lr=lr, alpha=alpha, impl=impl)
    _updates(opt, p, 2)
    opt.param_groups[0]["momentum"] = mu
    d3, d4 = _updates(opt, p, 2)
    plain = [G / ((1 - alpha**t) ** 0.5 * G.abs() + 1e-8) for t in (3, 4)]
    torch.testing.assert_close(d3, -lr * plain[0], rtol=1e-12, atol=0)
    torch.testing.assert_close(d4, -lr * (mu * plain[0] + plain[1]), rtol=1e-12, atol=0)
