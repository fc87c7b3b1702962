"""NAdam / NAdamW sanity checks from the catalogue (A5): closed-form steps, the μ-product state, decay modes."""

from __future__ import annotations

import pytest
import torch

import optfit
from optfit.optim import NAdam
from .problems import step_updates


IMPLS = pytest.mark.parametrize("impl", ["reference", "foreach"])


def _steps(opt, p, grads):
    """Feed ``grads`` one by one; return the per-step updates Δθ."""
    return step_updates(opt, p, grads)


@IMPLS
def test_first_step_has_the_nesterov_look_ahead(impl):
    # t = 1: m = (1−β₁)g, v̂ = g²  ⇒  Δθ = −η g [1 + (1−β₁) μ₂ / (1 − μ₁μ₂)] / (|g| + ε) ≈ −1.08 η sign(g)
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([3.0, -0.5, 1e-3, -20.0], dtype=torch.float64)
    (d,) = _steps(NAdam([p], lr=0.1, impl=impl), p, [g])
    mu1, mu2 = (0.9 * (1 - 0.5 * 0.96 ** (t * 4e-3)) for t in (1, 2))
    expected = -0.1 * g * (1 + 0.1 * mu2 / (1 - mu1 * mu2)) / (g.abs() + 1e-8)
    torch.testing.assert_close(d, expected, rtol=1e-7, atol=0)  # the μ-product is float32


@IMPLS
def test_huge_momentum_decay_reduces_to_constant_mu(impl):
    # ψ → ∞: μ_t = β₁, Π_t = β₁ᵗ; Δθ = −η[(1−β₁)g/(1−β₁ᵗ) + β₁m/(1−β₁ᵗ⁺¹)]/(√v̂+ε)
    b1, b2, lr, eps = 0.8, 0.95, 0.05, 1e-8
    gen = torch.Generator().manual_seed(0)
    grads = [torch.randn(6, generator=gen, dtype=torch.float64) for _ in range(8)]
    p = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    got = _steps(NAdam([p], lr=lr, betas=(b1, b2), eps=eps, momentum_decay=1e9, impl=impl), p, grads)
    m = torch.zeros(6, dtype=torch.float64)
    v = torch.zeros(6, dtype=torch.float64)
    for t, (g, d) in enumerate(zip(grads, got), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = lr * ((1 - b1) * g / (1 - b1**t) + b1 * m / (1 - b1 ** (t + 1))) / ((v / (1 - b2**t)).sqrt() + eps)
        torch.testing.assert_close(d, -step, rtol=1e-6, atol=0)


@IMPLS
def test_mu_product_is_a_float32_scalar_per_parameter(impl):
    p = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = NAdam([p, q], impl=impl)
    _steps(opt, p, [torch.ones(3, dtype=torch.float64)] * 3)  # only p has a gradient
    pi = opt.state[p]["mu_product"]
    assert pi.shape == () and pi.dtype == torch.float32
    expected = 1.0
    for t in (1, 2, 3):
        expected *= 0.9 * (1 - 0.5 * 0.96 ** (t * 4e-3))
    assert float(pi) == pytest.approx(expected, rel=1e-6)
    assert q not in opt.state or not opt.state[q]
    assert "mu_product" in opt.state_dict()["state"][0]


@IMPLS
@pytest.mark.parametrize("name", ["nadam", "nadamw"])
def test_weight_decay_is_l2_or_decoupled(name, impl):
    # g ≡ 0: decoupled decay gives θ₀(1−ηλ)ᵗ exactly (the adaptive step is 0/(0+ε) = 0); L2 moves differently
    lr, wd = 0.1, 0.2
    p = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = optfit.create_optimizer([p], name, lr=lr, weight_decay=wd, impl=impl)
    _steps(opt, p, [torch.zeros(3, dtype=torch.float64)] * 5)
    decoupled = torch.full((3,), (1 - lr * wd) ** 5, dtype=torch.float64)
    if name == "nadamw":
        assert opt.param_groups[0]["decay_mode"] == "decoupled"
        torch.testing.assert_close(p.detach(), decoupled, rtol=1e-14, atol=0)
    else:
        assert opt.param_groups[0]["decay_mode"] == "coupled"
        assert not torch.allclose(p.detach(), decoupled)


def test_decoupled_flag_maps_onto_decay_mode():
    a, b = (torch.zeros(2, requires_grad=True) for _ in range(2))
    assert NAdam([a], decoupled_weight_decay=True).param_groups[0]["decay_mode"] == "decoupled"
    explicit = NAdam([a], decoupled_weight_decay=True, decay_mode="independent")  # an explicit decay_mode wins
    assert explicit.param_groups[0]["decay_mode"] == "independent"
    opt = NAdam([{"params": [a]}, {"params": [b], "decoupled_weight_decay": True}])
    assert [g["decay_mode"] for g in opt.param_groups] == ["coupled", "decoupled"]


def test_invalid_momentum_decay_and_flag_raise():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="momentum_decay"):
        NAdam(p, momentum_decay=-1.0)
    with pytest.raises(ValueError, match="decoupled_weight_decay"):
        NAdam(p, decoupled_weight_decay="yes")
