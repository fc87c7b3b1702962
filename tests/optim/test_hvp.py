"""Hutchinson and Lanczos (optfit.optim._hvp) against matrices whose diagonal and spectrum are known."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import _hvp


def _quadratic_grads(A: torch.Tensor, x: torch.Tensor, split: int):
    """Gradients (with graph) of f = ½ xᵀAx, x split into two parameters."""
    p1 = x[:split].clone().requires_grad_()
    p2 = x[split:].clone().requires_grad_()
    y = torch.cat([p1, p2])
    loss = 0.5 * y @ A @ y
    g1, g2 = torch.autograd.grad(loss, [p1, p2], create_graph=True)
    return [p1, p2], [g1, g2]


def _spd(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(n, n, generator=gen, dtype=torch.float64)
    return B @ B.T / n + torch.eye(n, dtype=torch.float64)


def test_rademacher_is_plus_minus_one_with_equal_odds():
    gen = torch.Generator().manual_seed(0)
    z = _hvp.rademacher_like(torch.empty(20000, dtype=torch.float64), gen)
    assert set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 4 / math.sqrt(20000)  # 4σ
    again = _hvp.rademacher_like(torch.empty(20000), torch.Generator().manual_seed(0))
    assert torch.equal(again.double(), z)


def test_hvp_matches_the_matrix_across_parameters():
    A = _spd(7)
    params, grads = _quadratic_grads(A, torch.randn(7, dtype=torch.float64), 3)
    v = torch.randn(7, dtype=torch.float64)
    hv = _hvp.hvp(params, grads, [v[:3], v[3:]])
    torch.testing.assert_close(torch.cat(hv), A @ v, rtol=1e-12, atol=1e-12)


def test_hvp_of_a_graphless_gradient_is_zero():
    p = torch.randn(4, requires_grad=True)
    g = torch.ones(4)  # e.g. a bias the loss is linear in: constant gradient, zero Hessian
    assert torch.equal(_hvp.hvp([p], [g], [torch.ones(4)])[0], torch.zeros(4))


def test_hutchinson_is_exact_for_a_diagonal_hessian():
    d = torch.tensor([0.5, 2.0, -3.0, 7.0, 1e-3], dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        params, grads = _quadratic_grads(torch.diag(d), torch.randn(5, dtype=torch.float64), 2)
        est = torch.cat(_hvp.hutchinson_diagonal(params, grads, gen))
        assert torch.equal(est, d)


def test_hutchinson_is_unbiased_for_a_dense_hessian():
    """mean of z⊙Hz over n draws → diag(H); the per-entry standard error is √(Σ_{j≠i} H_ij² / n)."""
    A = _spd(6, seed=3)
    params, grads = _quadratic_grads(A, torch.randn(6, dtype=torch.float64), 4)
    gen, n = torch.Generator().manual_seed(2), 1000
    total = torch.zeros(6, dtype=torch.float64)
    for _ in range(n):
        total += torch.cat(_hvp.hutchinson_diagonal(params, grads, gen, retain_graph=True))
    mean = total / n
    off = A - torch.diag(torch.diag(A))
    stderr = torch.sqrt((off**2).sum(1) / n)
    assert torch.all((mean - torch.diag(A)).abs() < 4 * stderr), (mean, torch.diag(A), stderr)
    # the estimator of a constant z (kozistr's randint(0, 1) bug) is the row sum, far outside that band
    assert torch.any((A.sum(1) - torch.diag(A)).abs() > 20 * stderr)


def _known_operator(n=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    lam = torch.empty(n, dtype=torch.float64).uniform_(-1, 1, generator=gen)
    lam[:5] = torch.tensor([100.0, 90.0, 80.0, 70.0, 60.0])
    lam[5:7] = torch.tensor([-50.0, -40.0])
    A = Q @ torch.diag(lam) @ Q.T
    return A, lam, Q


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_recovers_the_extreme_eigenpairs(dtype):
    A, lam, Q = _known_operator()
    gen = torch.Generator().manual_seed(0)
    calls = []

    def matvec(v):
        calls.append(1)
        return (A @ v.double()).to(dtype)

    vals, vecs = _hvp.extreme_eigenpairs(matvec, 200, 5, 2, generator=gen, dtype=dtype)
    assert len(calls) == 4 * 7  # order 4(k+ℓ), one HVP each
    want = torch.tensor([100.0, 90.0, 80.0, 70.0, 60.0, -50.0, -40.0], dtype=torch.float64)
    tol = 1e-8 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(vals, want, rtol=tol, atol=tol)
    for i, j in enumerate([0, 1, 2, 3, 4, 5, 6]):
        cos = float(vecs[i].double() @ Q[:, j])
        assert abs(abs(cos) - 1) < (1e-8 if dtype == torch.float64 else 1e-4), (i, cos)
    gram = vecs.double() @ vecs.double().T
    torch.testing.assert_close(gram, torch.eye(7, dtype=torch.float64), rtol=0, atol=10 * tol)


def test_lanczos_stops_on_an_invariant_subspace():
    """H = 3·I: the Krylov space of any start vector is one-dimensional; no division by zero."""
    vals, vecs = _hvp.extreme_eigenpairs(lambda v: 3 * v, 50, 5, generator=torch.Generator().manual_seed(0))
    assert vals.tolist() == pytest.approx([3.0]) and vecs.shape == (1, 50)
    assert torch.isfinite(vecs).all()


def test_lanczos_order_is_capped_by_the_dimension():
    d = torch.arange(1.0, 4.0, dtype=torch.float64)
    vals, _ = _hvp.extreme_eigenpairs(lambda v: d * v, 3, 5, generator=torch.Generator().manual_seed(0),
                                      dtype=torch.float64)
    torch.testing.assert_close(vals, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
