"""Inverse matrix roots (optfit.optim._kronecker): closed forms, coupled Newton and NDB against eigh."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim._kronecker import (inverse_root, inverse_root_eigh, inverse_root_ndb, inverse_root_newton,
                                     power_iteration)

F64 = torch.float64


def _orthogonal(b, n, seed):
    q, _ = torch.linalg.qr(torch.randn(b, n, n, generator=torch.Generator().manual_seed(seed), dtype=F64))
    return q


def _spd(b, n, cond, seed=0, dtype=F64):
    """Q diag(λ) Qᵀ with λ log-spaced from 1 down to 1/cond, and the closed-form pieces."""
    Q = _orthogonal(b, n, seed)
    lam = torch.logspace(0, -math.log10(cond), n, dtype=F64)
    return ((Q * lam) @ Q.mT).to(dtype), Q, lam


def _closed_form(Q, lam, p, eps):
    return (Q * (lam + eps).pow(-1.0 / p)) @ Q.mT


def _sanity(X, A, p):
    """‖X^p A − I‖_F / √n (catalogue C6), worst over the batch."""
    n = A.shape[-1]
    R = torch.linalg.matrix_power(X.to(F64), p) @ A.to(F64) - torch.eye(n, dtype=F64)
    return float(torch.linalg.matrix_norm(R).max() / math.sqrt(n))


@pytest.mark.parametrize("p", [1, 2, 3, 4])
def test_eigh_on_a_diagonal_matrix(p):
    d = torch.tensor([4.0, 1.0, 0.25, 0.0, 9.0], dtype=F64)
    X = inverse_root_eigh(torch.diag(d), p, 1e-3)
    torch.testing.assert_close(X, torch.diag((d + 1e-3).pow(-1.0 / p)), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("p", [2, 4])
def test_eigh_matches_a_known_eigendecomposition(p):
    A, Q, lam = _spd(3, 12, 1e6, seed=1)
    torch.testing.assert_close(inverse_root_eigh(A, p, 1e-9), _closed_form(Q, lam, p, 1e-9), rtol=1e-9, atol=1e-9)


def test_eigh_runs_in_float64_for_float32_input():
    """A float32 eigh of a cond-1e6 matrix loses the small eigenvalues; the float64 path keeps them."""
    A32 = _spd(2, 32, 1e6, seed=2)[0].float()
    lam, Q = torch.linalg.eigh(A32.double())  # the exact root of the float32 input
    expected = (Q * (lam + 1e-9).pow(-0.25).unsqueeze(-2)) @ Q.mT
    X = inverse_root_eigh(A32, 4, 1e-9)
    assert X.dtype == torch.float32
    err64 = (X.double() - expected).norm() / expected.norm()
    lam32, Q32 = torch.linalg.eigh(A32)
    naive = (Q32 * (lam32 + 1e-9).clamp_min(1e-9).pow(-0.25).unsqueeze(-2)) @ Q32.mT
    err32 = (naive.double() - expected).norm() / expected.norm()
    assert err64 < 1e-6 and err32 > 1e-3, (float(err64), float(err32))


def test_eigh_floors_rounding_below_eps_on_rank_deficient_factors():
    G = torch.randn(2, 30, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * 1e3
    A = G @ G.mT  # rank 3 of 30: 27 eigenvalues are rounding noise around 0, some negative
    assert torch.linalg.eigvalsh(A).min() < 0
    X = inverse_root_eigh(A, 4, 1e-12)
    assert torch.isfinite(X).all()
    assert torch.linalg.eigvalsh(X).max() <= 1e-12 ** -0.25 * (1 + 1e-9)


def test_eigh_is_batched_like_a_loop():
    A, _, _ = _spd(5, 9, 1e3, seed=4)
    batched = inverse_root_eigh(A, 4, 1e-6)
    for k in range(5):
        torch.testing.assert_close(batched[k], inverse_root_eigh(A[k], 4, 1e-6), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("p", [2, 4])
def test_coupled_newton_equals_eigh_in_float64(p):
    A, Q, lam = _spd(3, 24, 1e4, seed=5)
    X = inverse_root_newton(A, p, 1e-10)
    torch.testing.assert_close(X, _closed_form(Q, lam, p, 1e-10), rtol=1e-9, atol=1e-9)
    assert _sanity(X, A + 1e-10 * torch.eye(24, dtype=F64), p) < 1e-8


def test_coupled_newton_in_float32():
    """Catalogue C6 sanity criterion ‖X⁴A − I‖_F/√n < 1e-3 in fp32: met at cond 1e3; at cond 1e4 we measure
    1.0–1.4e-3 (the X⁴A check amplifies X's float32 rounding by the condition number) while X itself is within
    ~3e-5 of the eigh root."""
    A, Q, lam = _spd(4, 48, 1e3, seed=6, dtype=torch.float32)
    X = inverse_root_newton(A, 4, 1e-10)
    assert X.dtype == torch.float32 and _sanity(X, A, 4) < 1e-3
    A4, Q4, lam4 = _spd(4, 48, 1e4, seed=6, dtype=torch.float32)
    X4, exact = inverse_root_newton(A4, 4, 1e-10).double(), _closed_form(Q4, lam4, 4, 1e-10)
    assert float(torch.linalg.matrix_norm(X4 - exact).max() / torch.linalg.matrix_norm(exact).min()) < 1e-4


@pytest.mark.parametrize("p", [2, 4])
def test_ndb_equals_eigh(p):
    A, Q, lam = _spd(3, 16, 1e3, seed=7)
    X = inverse_root_ndb(A, p, 1e-10, max_iters=20)
    torch.testing.assert_close(X, _closed_form(Q, lam, p, 1e-10), rtol=1e-9, atol=1e-9)
    A32 = A.float()
    assert _sanity(inverse_root_ndb(A32, p, 1e-10, max_iters=20), A32, p) < 1e-3


def test_ndb_with_dash_default_ten_steps_resolves_condition_number_100():
    A, Q, lam = _spd(2, 16, 1e2, seed=8)
    X = inverse_root_ndb(A, 4, 1e-10)
    torch.testing.assert_close(X, _closed_form(Q, lam, 4, 1e-10), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("method", ["newton", "ndb"])
def test_all_zero_block_gives_finite_roots(method):
    """The catalogue's pitfall: power iteration on a zero block is 0/0 without damping."""
    X = inverse_root(torch.zeros(2, 5, 5), 4, 1e-10, method)
    assert torch.isfinite(X).all() and (torch.diagonal(X, dim1=-2, dim2=-1) > 0).all()


def test_power_iteration_estimates_the_top_eigenvalue():
    Q = _orthogonal(3, 20, 9)
    lam = torch.cat([torch.tensor([2.0], dtype=F64), torch.linspace(1.0, 0.01, 19, dtype=F64)])
    est = power_iteration((Q * lam) @ Q.mT, 30).squeeze()
    assert est.shape == (3,)
    assert ((est - 2.0).abs() < 1e-6).all() and (est <= 2.0 + 1e-12).all()


def test_bad_arguments_name_themselves():
    A = torch.eye(3)
    for kwargs, name in [({"p": 0}, "p"), ({"eps": -1.0}, "eps"), ({"method": "svd"}, "method")]:
        with pytest.raises(ValueError, match=name):
            inverse_root(**{"A": A, "p": 4, "eps": 1e-6, **kwargs})
    with pytest.raises(ValueError, match="A must"):
        inverse_root(torch.ones(3, 4), 4, 1e-6)
    with pytest.raises(ValueError, match="p"):
        inverse_root_ndb(A, 3, 1e-6)
    with pytest.raises(ValueError, match="eps"):
        inverse_root_eigh(A, 4, 0.0)
