"""AdEMAMix (catalogue A12): β₃ half-life schedule, α = 0 ≡ AdamW, hand-computed first steps."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim.ademamix import beta3_schedule

from .test_parity import SHAPES, _assert_close_runs, _run_impl



def _stream(shape, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-3, 1, steps, dtype=torch.float64)
    return [torch.randn(shape, generator=gen, dtype=torch.float64) * scale[t] for t in range(steps)]


def _run(make, grads, p0=None):
    p = (torch.zeros_like(grads[0]) if p0 is None else p0).clone().requires_grad_()
    opt = make([p])
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


def test_beta3_schedule_is_linear_in_half_life():
    values = [beta3_schedule(s, 0.9, 0.9999, 1000) for s in (0, 250, 500, 1000, 5000)]
    assert values == pytest.approx([0.9, 0.999601, 0.9998, 0.9999, 0.9999], abs=5e-7)
    assert beta3_schedule(7, 0.9, 0.9999, None) == 0.9999
    h = 0.75 * -1.0 + 0.25 * (math.log(0.5) / math.log(0.9999) - 1)  # β₁ = 0: f(0) = −1 (half-life 0)
    assert beta3_schedule(1, 0.0, 0.9999, 4) == pytest.approx(0.5 ** (1 / (h + 1)), rel=1e-12)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_alpha_zero_is_adamw(impl):
    grads, p0 = _stream((7, 5), 60), _stream((7, 5), 1, seed=1)[0]
    hp = dict(lr=0.01, eps=1e-6, weight_decay=0.1)
    ours, _ = _run(lambda ps: optfit.create_optimizer(ps, "ademamix", alpha=0.0, betas=(0.8, 0.95, 0.999),
                                                      impl=impl, **hp), grads, p0)
    hp["betas"] = (0.8, 0.95)
    adamw, _ = _run(lambda ps: optfit.create_optimizer(ps, "adamw", impl=impl, **hp), grads, p0)
    assert torch.equal(ours, adamw)  # same expression, operation for operation
    theirs, _ = _run(lambda ps: torch.optim.AdamW(ps, **hp), grads, p0)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)


def test_first_step_with_alpha_eight():
    g = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64)
    p, _ = _run(lambda ps: optfit.create_optimizer(ps, "ademamix", lr=0.01, alpha=8.0), [g])
    torch.testing.assert_close(p, -0.01 * 1.0008 * torch.sign(g), rtol=1e-7, atol=0)


def test_warmups_scale_the_first_step():
    # t = 1: α₁ = α/T_α, β₃(1) from the half-life schedule; m₁/(1−β₁) = g, √v̂ = |g|
    g = torch.tensor([1.5, -0.5], dtype=torch.float64)
    p, opt = _run(lambda ps: optfit.create_optimizer(ps, "ademamix", lr=0.1, alpha=8.0, alpha_warmup=4,
                                                     beta3_warmup=10, eps=0.0), [g])
    b3 = beta3_schedule(1, 0.9, 0.9999, 10)
    torch.testing.assert_close(opt.state[opt.param_groups[0]["params"][0]]["exp_avg_slow"], (1 - b3) * g)
    torch.testing.assert_close(p, -0.1 * (1 + 2.0 * (1 - b3)) * torch.sign(g), rtol=1e-12, atol=0)


def test_beta1_zero_keeps_no_fast_buffer():
    g = torch.tensor([2.0, -1.0], dtype=torch.float64)
    p, opt = _run(lambda ps: optfit.create_optimizer(ps, "ademamix", lr=0.1, betas=(0.0, 0.999, 0.99), alpha=5.0,
                                                     eps=0.0), [g])
    st = opt.state[opt.param_groups[0]["params"][0]]
    assert set(st) == {"step", "exp_avg_slow", "exp_avg_sq"}
    torch.testing.assert_close(p, -0.1 * (1 + 5.0 * 0.01) * torch.sign(g), rtol=1e-12, atol=0)


def test_decay_folded_into_update_is_decoupled():
    g = torch.tensor([1.0, -1.0], dtype=torch.float64)
    p0 = torch.tensor([3.0, 2.0], dtype=torch.float64)
    p, _ = _run(lambda ps: optfit.create_optimizer(ps, "ademamix", lr=0.1, alpha=0.0, weight_decay=0.5, eps=0.0),
                [g], p0)
    torch.testing.assert_close(p, p0 - 0.1 * (torch.sign(g) + 0.5 * p0), rtol=1e-14, atol=0)


@pytest.mark.parametrize("impl", ["foreach", pytest.param("compiled", marks=pytest.mark.compiled)])
@pytest.mark.parametrize("hp", [{"alpha": 5.0, "alpha_warmup": 6, "beta3_warmup": 8, "weight_decay": 0.1},
                                {"betas": (0.0, 0.99, 0.999), "cautious": True}])
def test_fast_paths_match_reference(impl, hp):
    ref = _run_impl("ademamix", "reference", SHAPES, torch.float32, 10, hp)
    fast = _run_impl("ademamix", impl, SHAPES, torch.float32, 10, hp)
    _assert_close_runs(ref, fast, rtol=1e-6, atol=1e-6)
