"""Adan: hand-computed first and second steps, float64 trajectory parity with pytorch_optimizer.Adan (the authors'
released algorithm: bias-corrected EMAs, proximal or AdamW decay), reference vs foreach, restart, decay modes."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import Adan

D = torch.float64
SHAPES = [(5, 4), (4,), (2, 3, 3)]
ONE_GROUP = (((0, 1, 2), {}),)
TOL = dict(rtol=1e-10, atol=1e-12)


def _trajectory(make, groups=ONE_GROUP, steps=60, noise=0.3, init=None):
    """Run ``make(param_groups)`` on a noisy weighted quadratic; the parameters after every step."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=D) for s in SHAPES]
    target = [2 * torch.randn(s, generator=gen, dtype=D) for s in SHAPES]
    curv = [0.5 + 4 * torch.rand(s, generator=gen, dtype=D) for s in SHAPES]
    params = [x.clone().requires_grad_() for x in (start if init is None else init)]
    opt = make([{"params": [params[i] for i in idx], **hp} for idx, hp in groups])
    noise_gen = torch.Generator().manual_seed(123)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        sum(0.5 * (c * (p - t) ** 2).sum() for p, t, c in zip(params, target, curv)).backward()
        for p in params:
            p.grad.add_(torch.randn(p.shape, generator=noise_gen, dtype=D), alpha=noise)
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _assert_same(ours, theirs, **tol):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x, y, **(tol or TOL), msg=lambda m: f"step {step + 1}, tensor {i}: {m}")


def _feed(opt, p, grads):
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach().clone()


def test_first_step_is_the_papers_first_step():
    """t = 1: Δ = 0, m̂ = g, n̂ = g² (Algorithm 1 starting from m₀ = g₀, n₀ = g₀²):
    θ ← (θ − η g/(|g| + ε))/(1 + ηλ)."""
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    g = torch.tensor([0.3, -4.0, 1e-3], dtype=D)
    x = x0.clone().requires_grad_()
    got = _feed(Adan([x], lr=0.1, eps=1e-3, weight_decay=0.2), x, [g])
    torch.testing.assert_close(got, (x0 - 0.1 * g / (g.abs() + 1e-3)) / (1 + 0.1 * 0.2), rtol=1e-15, atol=0)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_second_step_by_hand(impl):
    b1, b2, b3, lr, eps = 0.98, 0.92, 0.99, 0.01, 1e-8
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=D)
    g1 = torch.tensor([[0.3, -4.0], [2.0, 0.1]], dtype=D)
    g2 = torch.tensor([[-0.2, -1.0], [2.5, 0.4]], dtype=D)
    x = x0.clone().requires_grad_()
    got = _feed(Adan([x], lr=lr, impl=impl), x, [g1, g2])
    x1 = x0 - lr * g1 / (g1.abs() + eps)
    diff = g2 - g1
    m = (b1 * (1 - b1) * g1 + (1 - b1) * g2) / (1 - b1**2)
    d = (1 - b2) * diff / (1 - b2**2)
    n = (b3 * (1 - b3) * g1**2 + (1 - b3) * (g2 + b2 * diff) ** 2) / (1 - b3**2)
    torch.testing.assert_close(got, x1 - lr * (m + b2 * d) / (n.sqrt() + eps), rtol=1e-13, atol=0)


# (ours, pytorch_optimizer's): the proximal decay is the package's weight_decouple=False, AdamW's its True
PARITY = {
    "defaults": ({}, {}),
    "betas-lr-proximal-decay": (dict(lr=0.01, betas=(0.9, 0.8, 0.95), weight_decay=0.05),
                                dict(lr=0.01, betas=(0.9, 0.8, 0.95), weight_decay=0.05, weight_decouple=False)),
    "adamw-decay-eps": (dict(lr=0.02, weight_decay=0.1, no_prox=True, eps=1e-6),
                        dict(lr=0.02, weight_decay=0.1, weight_decouple=True, eps=1e-6)),
}


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("case", list(PARITY))
def test_matches_pytorch_optimizer_every_step(case, impl):
    po = pytest.importorskip("pytorch_optimizer")
    ours_hp, theirs_hp = PARITY[case]
    ours = _trajectory(lambda g: Adan(g, impl=impl, **ours_hp))
    theirs = _trajectory(lambda g: po.Adan(g, **theirs_hp))
    _assert_same(ours, theirs)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_matches_pytorch_optimizer_with_two_groups(impl):
    po = pytest.importorskip("pytorch_optimizer")
    groups = [((0, 2), {"weight_decay": 0.1}), ((1,), {"lr": 0.05, "betas": (0.9, 0.9, 0.9)})]
    ours = _trajectory(lambda g: Adan(g, lr=0.01, impl=impl), groups)
    theirs = _trajectory(lambda g: po.Adan(g, lr=0.01), groups)
    _assert_same(ours, theirs)


def test_restart_starts_the_moments_and_bias_corrections_again():
    """After ``restart()`` the run continues exactly like a fresh Adan started at the current θ."""
    gen = torch.Generator().manual_seed(4)
    grads = [torch.randn(3, 4, generator=gen, dtype=D) for _ in range(12)]
    x = torch.randn(3, 4, generator=gen, dtype=D).requires_grad_()
    opt = Adan([x], lr=0.05, weight_decay=0.1)
    mid = _feed(opt, x, grads[:5])
    opt.restart()
    assert float(opt.state[x]["step"]) == 0 and not opt.state[x]["exp_avg"].any()
    after = _feed(opt, x, grads[5:])
    y = mid.clone().requires_grad_()
    fresh = _feed(Adan([y], lr=0.05, weight_decay=0.1), y, grads[5:])
    assert torch.equal(after, fresh)


def test_decay_modes():
    """Proximal θ ← (θ − s)/(1 + ηλ) (default), AdamW's θ(1 − ηλ) − s (no_prox), L2 on g (coupled), and
    "independent" (λη/η₀ in place of ηλ: λ while η = η₀)."""
    x0, g = torch.tensor([2.0, -1.0], dtype=D), torch.tensor([0.5, 0.25], dtype=D)
    lr, wd, s = 0.1, 0.3, 0.1 * torch.sign(torch.tensor([0.5, 0.25], dtype=D))

    def one(**hp):
        x = x0.clone().requires_grad_()
        return _feed(Adan([x], lr=lr, eps=0.0, weight_decay=wd, **hp), x, [g])

    torch.testing.assert_close(one(), (x0 - s) / (1 + lr * wd), rtol=1e-15, atol=0)
    torch.testing.assert_close(one(no_prox=True), x0 * (1 - lr * wd) - s, rtol=1e-15, atol=0)
    torch.testing.assert_close(one(decay_mode="coupled"), x0 - lr * torch.sign(g + wd * x0), rtol=1e-15, atol=0)
    torch.testing.assert_close(one(decay_mode="independent"), (x0 - s) / (1 + wd), rtol=1e-15, atol=0)


def test_foreach_matches_reference_with_caution_and_decay():
    def run(impl):
        return _trajectory(lambda g: Adan(g, lr=0.02, weight_decay=0.05, cautious=True, impl=impl), steps=30)

    _assert_same(run("reference"), run("foreach"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, name", [
    ({"betas": (0.9, 0.9)}, "betas"), ({"betas": (0.9, 1.0, 0.9)}, "betas"), ({"no_prox": 1}, "no_prox"),
    ({"eps": -1.0}, "eps"),
])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Adan([torch.zeros(2, requires_grad=True)], **kwargs)


def test_record():
    info = optfit.optimizer_info("adan")
    assert (info.cls, info.family, info.paper, info.state_tensors) == (Adan, "adaptive", "arXiv:2208.06677", 4)
    assert info.has_betas and info.defaults["betas"] == (0.98, 0.92, 0.99)
    assert [round(1 - b, 12) for b in info.defaults["betas"]] == [0.02, 0.08, 0.01]  # the paper's convention
    assert math.isclose(info.defaults["eps"], 1e-8)
