"""Catalogue A2–A4 sanity tests for Adam, AdamW and AMSGrad."""

import pytest
import torch

import optfit


def _steps(opt_cls, grads, x0=0.0, **hp):
    x = torch.full((3,), x0, dtype=torch.float64, requires_grad=True)
    opt = opt_cls([x], **hp)
    deltas = []
    for g in grads:
        before = x.detach().clone()
        x.grad = torch.as_tensor(g, dtype=torch.float64).expand(3).clone()
        opt.step()
        deltas.append((x.detach() - before)[0].item())
    return deltas, x


@pytest.mark.parametrize("g", [3.0, -0.02, 1e4])
def test_adam_first_step_is_minus_lr_sign_g(g):
    deltas, _ = _steps(optfit.optim.Adam, [g], lr=0.01)
    assert deltas[0] == pytest.approx(-0.01 * (1 if g > 0 else -1), rel=1e-6)


def test_adam_constant_gradient_keeps_step_lr():
    deltas, _ = _steps(optfit.optim.Adam, [2.0] * 50, lr=0.01)
    assert deltas == pytest.approx([-0.01] * 50, rel=1e-6)


def test_adamw_zero_gradient_decays_geometrically():
    _, x = _steps(optfit.optim.AdamW, [0.0] * 10, x0=1.0, lr=0.1, weight_decay=0.5)
    assert float(x.detach()[0]) == pytest.approx((1 - 0.05) ** 10, rel=1e-14)


def test_adam_weight_decay_is_l2_and_adamw_is_decoupled():
    # with g = 0, L2 decay feeds λθ through the Adam normalisation: the first step is −η·sign(θ)
    deltas, _ = _steps(optfit.optim.Adam, [0.0], x0=2.0, lr=0.1, weight_decay=0.5)
    assert deltas[0] == pytest.approx(-0.1, rel=1e-6)
    deltas, _ = _steps(optfit.optim.AdamW, [0.0], x0=2.0, lr=0.1, weight_decay=0.5)
    assert deltas[0] == pytest.approx(-2.0 * 0.1 * 0.5, rel=1e-12)


def test_amsgrad_keeps_the_largest_second_moment():
    grads = [10.0] * 8000 + [1.0] * 8000
    adam, _ = _steps(optfit.optim.Adam, grads, lr=1e-3)
    ams, _ = _steps(optfit.optim.Adam, grads, lr=1e-3, amsgrad=True)
    assert adam[-1] == pytest.approx(-1e-3, rel=0.05)  # v has decayed back to 1
    assert ams[-1] == pytest.approx(-1e-4, rel=0.05)  # v_max ≈ 100 → step η/10
