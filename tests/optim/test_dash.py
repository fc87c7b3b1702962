"""DASH: its first step in closed form, equality with Shampoo under the same settings, unbiased factors,
the 10-step refresh, Newton–Denman–Beavers roots and batched stacks (catalogue C6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.linalg import fractional_matrix_power

import optfit
from optfit.optim import DASH, Shampoo, shampoo

from .problems import step_updates

F64 = torch.float64
AS_DASH = dict(betas=(0.9, 0.95), eps=1e-10, precondition_frequency=10, start_preconditioning_step=1,
               grafting="adam", graft_beta2=0.95, graft_eps=1e-8, nesterov=True, adamw_betas=(0.9, 0.95))


def _grads(shape, n, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(n)]


def _root(A, eps):
    A = np.asarray(A, dtype=np.float64)
    return torch.from_numpy(np.real(fractional_matrix_power(A + eps * np.eye(len(A)), -0.25)).copy())


def _run(cls, shape, grads, **kw):
    p = torch.zeros(shape, dtype=grads[0].dtype, requires_grad=True)
    opt = cls([p], **kw)
    return step_updates(opt, p, grads), opt, p


@pytest.mark.parametrize("shape", [(6, 4), (4, 6)])
def test_first_step_is_the_polar_factor_at_adams_norm(shape):
    """t = 1: Ĝ = G, P_g = G/(|G| + ε_g) ≈ sign(G) (norm √(mn)), L̄ĜR̄ ∝ U Vᵀ (norm √min(m, n))."""
    g = _grads(shape, 1, seed=1)[0]
    (d,), _, _ = _run(DASH, shape, [g], lr=0.01)
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    pg_norm = (g / (g.abs() + 1e-8)).norm()
    torch.testing.assert_close(d, -0.01 * pg_norm / math.sqrt(min(shape)) * (u @ vh), rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("shapes, freq", [([(8, 8), (5,), (4, 4)], 10), ([(6, 8), (5,), (3, 4)], 1)])
def test_equals_shampoo_with_adam_grafting_and_the_same_settings(momentum, shapes, freq):
    """Only the factors' bias correction differs, which the grafted direction sees through ε alone — as long
    as Ĝ lies in the factors' range when the roots were taken: with full-rank (square Gaussian) blocks, or
    with roots refreshed every step. (Roots of rank-deficient factors reused for later steps weigh the new
    directions by ε^{−1/4}, relative to (λ/(1−β₂ᵗ))^{−1/4} in Shampoo and λ^{−1/4} in DASH: there they differ.)"""
    out = {}
    for cls, kw in ((DASH, {}), (Shampoo, AS_DASH)):
        params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in shapes]
        opt = cls(params, lr=0.02, weight_decay=0.1, block_size=4, momentum=momentum,
                  **{**kw, "precondition_frequency": freq})
        gen = torch.Generator().manual_seed(2)
        for _ in range(12):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=F64)
            opt.step()
        out[cls] = (params, opt)
    (ours, odash), (theirs, osh) = out[DASH], out[Shampoo]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    W, V = ours[0], theirs[0]
    torch.testing.assert_close(odash.state[W]["L"], osh.state[V]["L"], rtol=1e-12, atol=1e-14)
    assert not torch.allclose(odash.state[W]["L_inv_root"], osh.state[V]["L_inv_root"], rtol=1e-3)


def test_factors_are_emas_whose_roots_are_not_bias_corrected():
    grads, eps = _grads((3, 5), 3, seed=3), 1e-10
    _, opt, p = _run(DASH, (3, 5), grads, lr=0.01, precondition_frequency=1, eps=eps)
    st = opt.state[p]
    L = sum(0.05 * 0.95 ** (2 - s) * g @ g.T for s, g in enumerate(grads))
    R = sum(0.05 * 0.95 ** (2 - s) * g.T @ g for s, g in enumerate(grads))
    torch.testing.assert_close(st["L"][0], L, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(st["L_inv_root"][0], _root(L, eps), rtol=1e-8, atol=1e-10)
    # R is 5×5 of rank 3: compare the root where it acts, on R's range (the null space only meets rounding)
    u = torch.linalg.svd(torch.cat(grads), full_matrices=False)[2].T
    torch.testing.assert_close(st["R_inv_root"][0] @ u, _root(R, eps) @ u, rtol=1e-6, atol=1e-8)
    assert st["exp_avg"].shape == (3, 5) and st["graft_sq"].shape == (3, 5)


def test_roots_are_refreshed_at_step_one_and_every_ten_steps():
    p = torch.zeros(4, 3, dtype=F64, requires_grad=True)
    opt = DASH([p], lr=0.01)
    roots = []
    for g in _grads((4, 3), 12, seed=4):
        step_updates(opt, p, [g])
        roots.append(opt.state[p]["R_inv_root"].clone())
    assert (roots[0] != 0).any()
    assert all(torch.equal(roots[0], r) for r in roots[1:10])
    assert not torch.allclose(roots[9], roots[10]) and torch.equal(roots[10], roots[11])


@pytest.mark.parametrize("method, iters", [("ndb", 10), ("newton", 10), ("ndb", 30)])
def test_newton_roots_track_eigh(method, iters):
    """With DASH's 10 Newton steps the roots resolve the factors' well-conditioned range (cond ≈ 25 here)."""
    grads = _grads((6, 4), 12, seed=5)
    ref, _, _ = _run(DASH, (6, 4), grads, lr=0.01, precondition_frequency=1)
    ours, _, _ = _run(DASH, (6, 4), grads, lr=0.01, precondition_frequency=1, root_method=method,
                      newton_iters=iters)
    tol = 1e-9 if iters == 30 else 1e-5
    torch.testing.assert_close(torch.stack(ours), torch.stack(ref), rtol=tol, atol=tol * 1e-2)


def test_zero_gradient_blocks_stay_finite_with_ndb():
    g = torch.zeros(8, 4)
    g[:4] = torch.randn(4, 4, generator=torch.Generator().manual_seed(6))
    (_, d), opt, p = _run(DASH, (8, 4), [g, g], lr=0.01, block_size=4, root_method="ndb")
    assert torch.isfinite(d).all() and (d[4:] == 0).all()
    assert all(torch.isfinite(v).all() for v in opt.state[p].values())


def test_nesterov_momentum_on_the_first_step():
    g = _grads((5, 3), 1, seed=7)[0]
    (plain,), _, _ = _run(DASH, (5, 3), [g], lr=0.01)
    (nest,), _, _ = _run(DASH, (5, 3), [g], lr=0.01, momentum=0.9)
    (heavy,), _, _ = _run(DASH, (5, 3), [g], lr=0.01, momentum=0.9, nesterov=False)
    torch.testing.assert_close(nest, 1.9 * plain, rtol=1e-12, atol=0)  # M = P, P + μM
    torch.testing.assert_close(heavy, plain, rtol=1e-12, atol=0)  # M = P


def test_batched_stacks_match_the_reference(monkeypatch):
    calls = []
    real = shampoo.inverse_root
    monkeypatch.setattr(shampoo, "inverse_root", lambda A, *a: calls.append(tuple(A.shape)) or real(A, *a))
    shapes = [(8, 8)] * 3 + [(16, 8)]
    out = {}
    for impl in ("reference", "foreach"):
        calls.clear()
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        opt = DASH(params, lr=0.01, block_size=8, impl=impl, root_method="ndb", newton_iters=20)
        gen = torch.Generator().manual_seed(8)
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        out[impl] = (params, list(calls))
    assert out["reference"][1] == [(1, 8, 8)] * 10 and out["foreach"][1] == [(5, 8, 8)] * 2
    for a, b in zip(out["reference"][0], out["foreach"][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_registry_record_and_defaults():
    info = optfit.optimizer_info("dash")
    assert info.cls is DASH and info.family == "matrix" and not info.supports_complex
    d = info.defaults
    assert (d["betas"], d["graft_beta2"], d["graft_eps"], d["eps"]) == ((0.9, 0.95), 0.95, 1e-8, 1e-10)
    assert (d["block_size"], d["precondition_frequency"], d["start_preconditioning_step"]) == (1024, 10, 1)
    assert (d["momentum"], d["nesterov"], d["root_method"], d["newton_iters"]) == (0.0, True, "eigh", 10)
    assert d["adamw_betas"] == (0.9, 0.95) and "grafting" not in d
    opt = DASH([torch.zeros(2, 2, requires_grad=True)])
    assert opt.param_groups[0]["grafting"] == "adam"
    with pytest.raises(ValueError, match="root_method"):
        DASH([torch.zeros(2, 2, requires_grad=True)], root_method="chebyshev")
