"""Random parameters and gradient streams, and a driver that feeds them to an optimizer (shared by the gap tests)."""

from __future__ import annotations

import copy

import torch

SHAPES = [(6, 4), (5,), (3, 2, 2)]


def _params(dtype=torch.float64, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=dtype).requires_grad_() for s in shapes]


def _grads(steps, dtype=torch.float64, seed=1, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=dtype) for s in shapes] for _ in range(steps)]


def _run(make, grads, params=None):
    """``make(params)`` then one ``step()`` per entry of ``grads``; returns (detached params, optimizer)."""
    params = params if params is not None else _params(grads[0][0].dtype, shapes=[g.shape for g in grads[0]])
    opt = make(params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params], opt


def resume_and_compare(make, steps=40, split=17, dtype=torch.float32):
    """Run ``steps`` steps in one go, and again with a ``state_dict`` save/load into a fresh optimizer after
    ``split`` steps; assert bit-equal parameters and ``gap_stats()``. Returns (resumed params, resumed optimizer)."""
    grads = _grads(steps, dtype)
    full, opt_full = _run(make, grads, _params(dtype))
    params = _params(dtype)
    _, opt = _run(make, grads[:split], params)
    saved = copy.deepcopy(opt.state_dict())
    params2 = [p.detach().clone().requires_grad_() for p in params]
    opt2 = make(params2)
    opt2.load_state_dict(saved)
    _run(lambda ps: opt2, grads[split:], params2)
    for a, b in zip(full, params2):
        assert torch.equal(a, b.detach())
    assert opt2.gap_stats() == opt_full.gap_stats()
    return params2, opt2
