"""AdaBelief: hand-computed steps and the catalogue's sanity tests (A10)."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import AdaBelief
from .problems import step_updates

D = torch.float64


def _step(opt, p, g):
    return step_updates(opt, p, [g])[0]


def _manual(theta, grads, *, lr=1e-3, b1=0.9, b2=0.999, eps=1e-16, rectify=True, sgd=True, amsgrad=False):
    """Independent float64 re-derivation of adabelief-pytorch 0.2 (no weight decay)."""
    m, s, s_max = torch.zeros_like(theta), torch.zeros_like(theta), torch.zeros_like(theta)
    theta = theta.clone()
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        m = b1 * m + (1 - b1) * g
        s = b2 * s + (1 - b2) * (g - m) ** 2 + eps
        s_max = torch.maximum(s_max, s)
        sh = s_max if amsgrad else s
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        if not rectify:
            theta -= lr / bc1 * m / (sh.sqrt() / math.sqrt(bc2) + eps)
            continue
        rho = rho_inf - 2 * t * b2**t / bc2
        if rho >= 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            theta -= lr * r * math.sqrt(bc2) / bc1 * m / (sh.sqrt() + eps)
        elif sgd:
            theta -= lr / bc1 * m
    return theta


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_first_unrectified_update_is_lr_sign_over_beta1(impl):
    x = torch.zeros(5, dtype=D, requires_grad=True)
    g = torch.tensor([2.0, -0.3, 0.01, -50.0, 1.0], dtype=D)
    opt = AdaBelief([x], lr=0.1, rectify=False, impl=impl)
    delta = _step(opt, x, g)
    torch.testing.assert_close(delta, -0.1 * g.sign() / 0.9, rtol=1e-7, atol=0)
    # the residual uses the UPDATED m: s1 = (1−β2)β1²g² + ε (it would be (1−β2)g² with the old m = 0)
    torch.testing.assert_close(opt.state[x]["exp_avg_var"], 1e-3 * 0.81 * g**2 + 1e-16, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kwargs", [dict(rectify=False, eps=1e-3), dict(rectify=True), dict(rectify=True, eps=1e-4),
                                    dict(rectify=True, sgd=False), dict(rectify=False, amsgrad=True, eps=1e-6),
                                    dict(rectify=True, amsgrad=True, b2=0.9)])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_matches_hand_computation_over_steps(kwargs, impl):
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 3, dtype=D, generator=gen)
    grads = [torch.randn(4, 3, dtype=D, generator=gen) * s for s in (1.0, 5.0, 0.2, 1.0, 3.0, 0.5, 1.0, 2.0, 0.1)]
    kw = dict(kwargs)
    opts = dict(lr=0.01, eps=kw.pop("eps", 1e-16), rectify=kw.pop("rectify"), amsgrad=kw.pop("amsgrad", False),
                betas=(0.9, kw.get("b2", 0.999)), degenerated_to_sgd=kw.get("sgd", True))
    p = theta.clone().requires_grad_()
    opt = AdaBelief([p], **opts, impl=impl)
    for g in grads:
        _step(opt, p, g)
    expected = _manual(theta, grads, lr=0.01, eps=opts["eps"], rectify=opts["rectify"], amsgrad=opts["amsgrad"], **kw)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-10, atol=1e-12)


def test_rectified_warmup_is_sgd_then_adaptive():
    # β2 = 0.999: ρ_5 ≈ 4.996 < 5 ≤ ρ_6 ≈ 5.994, so steps 1..5 are η m̂ and step 6 is adaptive
    x = torch.zeros(3, dtype=D, requires_grad=True)
    opt = AdaBelief([x], lr=0.1, impl="reference")
    g = torch.tensor([1.0, -2.0, 4.0], dtype=D)
    for t in range(1, 6):
        torch.testing.assert_close(_step(opt, x, g), -0.1 * g, rtol=1e-12, atol=0)  # constant g: m̂ = g
    assert not torch.allclose(_step(opt, x, g), -0.1 * g)
    y = torch.zeros(3, dtype=D, requires_grad=True)
    still = AdaBelief([y], lr=0.1, degenerated_to_sgd=False, impl="reference")
    for _ in range(5):
        assert torch.equal(_step(still, y, g), torch.zeros(3, dtype=D))
    assert still.state[y]["exp_avg"].abs().sum() > 0  # the moments still advance


def test_constant_gradient_steps_grow_then_cap_by_eps():
    x = torch.zeros(1, dtype=D, requires_grad=True)
    opt = AdaBelief([x], lr=1e-3, eps=1e-8, rectify=False, impl="reference")
    g = torch.ones(1, dtype=D)
    first = _step(opt, x, g).abs().item()
    steps = [_step(opt, x, g).abs().item() for _ in range(200)]
    # s → 0 as m → g: the belief is high and the step grows (Adam's would stay ≈ η); ε bounds it eventually
    assert all(b > a for a, b in zip(steps, steps[1:])) and steps[-1] > 5 * first


def test_weight_decay_modes():
    g0 = torch.zeros(3, dtype=D)
    for kw, factor in [(dict(), 1 - 0.1 * 0.5), (dict(fixed_decay=True), 1 - 0.5)]:
        x = torch.full((3,), 2.0, dtype=D, requires_grad=True)
        _step(AdaBelief([x], lr=0.1, weight_decay=0.5, impl="reference", **kw), x, g0)
        torch.testing.assert_close(x.detach(), torch.full((3,), 2.0 * factor, dtype=D))
    x = torch.tensor([2.0, -1.0, 3.0], dtype=D, requires_grad=True)
    delta = _step(AdaBelief([x], lr=0.1, weight_decay=0.5, decay_mode="coupled", rectify=False,
                                 impl="reference"), x, g0)
    torch.testing.assert_close(delta, -0.1 * x.detach().sign() / 0.9, rtol=1e-6, atol=0)  # g = λθ


def test_fixed_decay_needs_decoupled_mode():
    with pytest.raises(ValueError, match="fixed_decay"):
        AdaBelief([torch.zeros(2, requires_grad=True)], fixed_decay=True, decay_mode="coupled")
