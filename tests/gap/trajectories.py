"""Random parameters and gradient streams, and a driver that feeds them to an optimizer (shared by the gap tests)."""

from __future__ import annotations

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
