"""The shared problem of the distance-estimating optimizers' parity tests (Prodigy, D-Adaptation): a smooth convex
objective (weighted quadratic + log-cosh) over four tensors, with a seeded noise stream added to ∇f so that the
gradients never vanish; every step's parameters and d are recorded."""

from __future__ import annotations

import pytest
import torch

SHAPES = [(4, 3), (3,), (2, 2, 2), (5,)]
ZERO = ("none", "last", "all")


def problem(seed: int = 0, zero: str = "none"):
    """Initial points, targets and curvatures; ``zero`` starts no tensor, the last one (Prodigy's package then keeps
    x₀ as a 0-d zero) or all of them at zero."""
    assert zero in ZERO
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    for x in init[-1:] if zero == "last" else init if zero == "all" else []:
        x.zero_()
    target = [2 * torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    curv = [0.5 + 4 * torch.rand(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    return init, target, curv


def trajectory(make, groups_spec, steps: int = 60, noise: float = 0.3, zero: str = "none"):
    """Run ``make(param_groups)`` (``groups_spec``: [(tensor indices, group hyperparameters), ...]); return
    [(parameters, d)] after every step."""
    init, target, curv = problem(zero=zero)
    params = [x.clone().requires_grad_() for x in init]
    opt = make([{"params": [params[i] for i in idx], **hp} for idx, hp in groups_spec])
    gen = torch.Generator().manual_seed(123)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(0.5 * (c * (p - t) ** 2).sum() + torch.log(torch.cosh(p - t)).sum()
                   for p, t, c in zip(params, target, curv))
        loss.backward()
        for p in params:
            p.grad.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype), alpha=noise)
        opt.step()
        out.append(([p.detach().clone() for p in params], opt.param_groups[0]["d"]))
    return out


def assert_same_trajectory(ours, theirs, tol):
    for step, ((pa, da), (pb, db)) in enumerate(zip(ours, theirs)):
        for a, b in zip(pa, pb):
            torch.testing.assert_close(a, b, rtol=tol, atol=tol, msg=lambda m: f"step {step}: {m}")
        assert da == pytest.approx(db, rel=tol), f"step {step}: d {da} vs {db}"
