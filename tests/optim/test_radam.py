"""RAdam sanity checks from the catalogue (A6): ρ_t, the un-normalised momentum-SGD warm-up, rectification."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import RAdam


IMPLS = pytest.mark.parametrize("impl", ["reference", "foreach"])


def test_rho_matches_the_catalogue():
    expected = [1.000, 1.999, 2.999, 3.997, 4.996, 5.994, 6.992]
    assert [round(RAdam.rho(t, 0.999), 3) for t in range(1, 8)] == expected


@IMPLS
def test_first_five_steps_are_momentum_sgd_then_rectified(impl):
    b1, b2, lr, eps = 0.9, 0.999, 0.01, 1e-8
    gen = torch.Generator().manual_seed(0)
    grads = [100 * torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(7)]
    p = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    opt = RAdam([p], lr=lr, betas=(b1, b2), eps=eps, impl=impl)
    m = torch.zeros(5, dtype=torch.float64)
    v = torch.zeros(5, dtype=torch.float64)
    rho_inf = 2 / (1 - b2) - 1
    for t, g in enumerate(grads, start=1):
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        if t <= 5:  # ρ_t ≤ 5: θ ← θ − η m̂, with |g| ~ 100 and no normalisation
            step = lr * m_hat
        else:
            rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            step = lr * r * m_hat * math.sqrt(1 - b2**t) / (v.sqrt() + eps)
        torch.testing.assert_close(p.detach() - before, -step, rtol=1e-9, atol=0)


@IMPLS
def test_decoupled_weight_decay_flag(impl):
    lr, wd = 0.1, 0.3
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = RAdam([p], lr=lr, weight_decay=wd, decoupled_weight_decay=True, impl=impl)
    assert opt.param_groups[0]["decay_mode"] == "decoupled"
    for _ in range(8):  # g ≡ 0 through both regimes: only the decay moves θ
        p.grad = torch.zeros(3, dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(p.detach(), torch.full((3,), (1 - lr * wd) ** 8, dtype=torch.float64),
                               rtol=1e-14, atol=0)
    assert optfit.create_optimizer([p], "radam").param_groups[0]["decay_mode"] == "coupled"


def test_invalid_flag_raises():
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        RAdam([torch.zeros(2, requires_grad=True)], decoupled_weight_decay=1)
