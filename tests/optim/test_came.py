"""CAME: hand-computed first steps, float64 trajectory parity with the authors' package came-pytorch (every step of
60, four settings, two param groups once), the O(m+n) state and the reuse of Adafactor's update."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import CAME, Adafactor

D = torch.float64
SHAPES = [(6, 4), (5,), (2, 3, 4)]
ONE_GROUP = (((0, 1, 2), {}),)


def _trajectory(make, groups=ONE_GROUP, steps=60, noise=0.3):
    """Run ``make(param_groups)`` on a noisy weighted quadratic whose gradient scale grows ×10⁴ over the run (so
    the update clipping acts); the parameters after every step."""
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(s, generator=gen, dtype=D) for s in SHAPES]
    target = [2 * torch.randn(s, generator=gen, dtype=D) for s in SHAPES]
    curv = [0.5 + 4 * torch.rand(s, generator=gen, dtype=D) for s in SHAPES]
    params = [x.clone().requires_grad_() for x in start]
    opt = make([{"params": [params[i] for i in idx], **hp} for idx, hp in groups])
    noise_gen = torch.Generator().manual_seed(123)
    scale = torch.logspace(-2, 2, steps, dtype=D)
    out = []
    for t in range(steps):
        opt.zero_grad()
        sum(0.5 * (c * (p - tg) ** 2).sum() for p, tg, c in zip(params, target, curv)).backward()
        for p in params:
            p.grad.add_(torch.randn(p.shape, generator=noise_gen, dtype=D), alpha=noise).mul_(scale[t])
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _assert_same(ours, theirs, rtol=1e-10, atol=1e-12):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m: f"step {step + 1}, tensor {i}: {m}")


def test_first_step_by_hand_matrix_and_vector():
    """Rank-one g² makes the factored V̂ = (1−β₂)g² exact: u = sign(g)/√(1−β₂), clipped to û = sign(g) (RMS 1);
    m = (1−β₁)û; the instability (û − m)² = β₁² + ε₂ is constant, so Ŝ = (1−β₃)(β₁² + ε₂) and
    Δθ = −η(1−β₁)/√((1−β₃)β₁²)·sign(g). A vector takes no confidence factor: Δθ = −η(1−β₁)·sign(g)."""
    a, b = torch.tensor([1.0, -2.0, 0.5], dtype=D), torch.tensor([3.0, 0.25, -1.0, 2.0], dtype=D)
    g = a[:, None] * b[None, :]
    W = torch.randn(3, 4, dtype=D, generator=torch.Generator().manual_seed(0)).requires_grad_()
    v = torch.randn(5, dtype=D, generator=torch.Generator().manual_seed(1)).requires_grad_()
    W0, v0 = W.detach().clone(), v.detach().clone()
    gv = torch.tensor([3.0, -0.5, 1e-3, -20.0, 2.0], dtype=D)
    W.grad, v.grad = g.clone(), gv.clone()
    lr, b1, b3 = 0.01, 0.9, 0.9999
    CAME([W, v], lr=lr).step()
    torch.testing.assert_close(W.detach(), W0 - lr * (1 - b1) / math.sqrt((1 - b3) * b1**2) * g.sign(),
                               rtol=1e-12, atol=0)
    torch.testing.assert_close(v.detach(), v0 - lr * (1 - b1) * gv.sign(), rtol=1e-12, atol=0)


PARITY = {
    "defaults": ({}, {"lr": 2e-4}),
    "betas-clip-decay": (dict(lr=1e-3, betas=(0.8, 0.99, 0.999), d=0.5, weight_decay=0.1),
                         dict(lr=1e-3, betas=(0.8, 0.99, 0.999), clip_threshold=0.5, weight_decay=0.1)),
    "eps-lr": (dict(lr=5e-3, eps=(1e-20, 1e-8)), dict(lr=5e-3, eps=(1e-20, 1e-8))),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_matches_came_pytorch_every_step(case):
    came_pytorch = pytest.importorskip("came_pytorch")
    ours_hp, theirs_hp = PARITY[case]
    ours = _trajectory(lambda g: CAME(g, **ours_hp))
    theirs = _trajectory(lambda g: came_pytorch.CAME(g, **theirs_hp))
    _assert_same(ours, theirs)
    assert not torch.allclose(ours[-1][0], ours[0][0], rtol=1e-2)  # it moved


def test_matches_came_pytorch_with_two_groups():
    came_pytorch = pytest.importorskip("came_pytorch")
    groups = [((0, 1), {"weight_decay": 0.05}), ((2,), {"lr": 3e-3, "betas": (0.5, 0.9, 0.99)})]
    ours = _trajectory(lambda g: CAME(g, lr=1e-3), groups)
    theirs = _trajectory(lambda g: came_pytorch.CAME(g, lr=1e-3), groups)
    _assert_same(ours, theirs)


def test_u_hat_is_adafactors_update():
    """The first half of CAME's step is Adafactor's (ρ = lr = 1, no parameter scaling, no momentum): with β₁ = 0
    the momentum is û itself, and a vector's step is η·û."""
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(7, generator=gen, dtype=D) * s for s in (1.0, 30.0, 0.1, 2.0)]
    x0 = torch.randn(7, generator=gen, dtype=D)
    x, y = x0.clone().requires_grad_(), x0.clone().requires_grad_()
    came = CAME([x], lr=0.1, betas=(0.0, 0.9, 0.99))
    fac = Adafactor([y], lr=0.1, relative_step=False, scale_parameter=False, beta2_decay=-0.8)
    for t, g in enumerate(grads, start=1):
        came.param_groups[0]["betas"] = (0.0, 1 - t**-0.8, 0.99)  # Adafactor's β̂₂ schedule, fed to CAME
        x.grad, y.grad = g.clone(), g.clone()
        came.step(), fac.step()
        torch.testing.assert_close(x.detach(), y.detach(), rtol=1e-14, atol=0)


def test_factored_state_is_o_m_plus_n():
    W = torch.zeros(2, 6, 5, requires_grad=True)
    v = torch.zeros(4, requires_grad=True)
    opt = CAME([W, v])
    W.grad, v.grad = torch.ones_like(W), torch.ones_like(v)
    opt.step()
    shapes = {k: tuple(t.shape) for k, t in opt.state[W].items() if k != "step"}
    assert shapes == {"exp_avg": (2, 6, 5), "exp_avg_sq_row": (2, 6), "exp_avg_sq_col": (2, 5),
                      "exp_avg_res_row": (2, 6), "exp_avg_res_col": (2, 5)}
    assert sorted(k for k in opt.state[v] if k != "step") == ["exp_avg", "exp_avg_sq"]


@pytest.mark.parametrize("kwargs, name", [
    ({"betas": (0.9, 0.999)}, "betas"), ({"betas": (0.9, 0.999, 1.0)}, "betas"), ({"eps": 1e-30}, "eps"),
    ({"eps": (1e-30, -1.0)}, "eps"), ({"d": 0.0}, "d"), ({"weight_decay": -0.1}, "weight_decay"),
])
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        CAME([torch.zeros(2, 2, requires_grad=True)], **kwargs)


def test_record():
    info = optfit.optimizer_info("came")
    assert (info.cls, info.family, info.paper, info.state_tensors) == (CAME, "adaptive", "arXiv:2307.02047", 1)
    assert info.has_betas and not info.supports_complex and "O(m+n)" in info.description
