"""Closed forms of optfit.theory: feasibility, value, no better random point, SciPy agreement."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from optfit import theory

R = 0.7


def psd_sqrt(m):
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


# Budget of Q as a positively 1-homogeneous function b(Q) <= r (sigma given).
BUDGETS = {
    "frobenius": lambda q, s: np.linalg.norm(q, "fro"),
    "operator_norm": lambda q, s: np.linalg.eigvalsh(q)[-1],
    "trace": lambda q, s: np.trace(q),
    "update_energy": lambda q, s: np.sqrt(max(np.trace(q @ s @ q), 0.0)),
    "update_covariance": lambda q, s: np.sqrt(max(np.linalg.eigvalsh(q @ s @ q)[-1], 0.0)),
    "diagonal": lambda q, s: np.max(np.abs(np.diag(q)) * np.sqrt(np.diag(s))),
}
FAMILIES = list(BUDGETS)


def random_sigma(rng, n, rank=None):
    a = rng.standard_normal((n, rank or n)) * rng.uniform(0.3, 3.0, size=rank or n)
    return a @ a.T


def cases(seeds=range(6), ranks=False):
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 7))
        rank = int(rng.integers(1, n + 1)) if ranks else None
        out.append((seed, random_sigma(rng, n, rank)))
    return out


def solve(family, s):
    return getattr(theory, family)(torch.from_numpy(s), R)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed,s", cases(range(8), ranks=True))
def test_feasible_and_value(family, seed, s):
    opt = solve(family, s)
    q = opt.Q.numpy()
    assert opt.Q.dtype == torch.float64 and q.shape == s.shape
    assert isinstance(opt.value, float)
    np.testing.assert_allclose(q, q.T, atol=1e-12)
    assert np.linalg.eigvalsh(q)[0] >= -1e-9 * max(1.0, np.abs(q).max())
    # 1e-9 plus the rounding of evaluating QΣQ (large when Σ is nearly singular)
    rounding = 100 * np.finfo(float).eps * np.linalg.norm(q, 2) ** 2 * np.linalg.norm(s, 2) / R**2
    assert BUDGETS[family](q, s) <= R * (1 + 1e-9 + rounding)
    if family == "diagonal":
        np.testing.assert_array_equal(q, np.diag(np.diag(q)))
    assert opt.value == pytest.approx(np.trace(q @ s), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed,s", cases(range(4), ranks=True))
def test_no_random_feasible_point_is_better(family, seed, s):
    rng = np.random.default_rng(100 + seed)
    n = s.shape[0]
    best = solve(family, s)
    qstar = best.Q.numpy()
    for i in range(300):
        if family == "diagonal":
            q = np.diag(rng.uniform(0, 1, n) ** 3)
        else:
            a = rng.standard_normal((n, int(rng.integers(1, n + 1))))
            q = a @ a.T
            if i % 2:  # local probe around the optimum
                q = qstar + 10.0 ** rng.uniform(-6, 0) * q / np.linalg.norm(q)
        b = BUDGETS[family](q, s)
        if b <= 1e-12:
            continue
        q = q * (R / b)
        assert np.trace(q @ s) <= best.value * (1 + 1e-9) + 1e-12


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: arrays(np.float64, (n, int(n)), elements=st.floats(-3, 3))),
       st.sampled_from(FAMILIES), st.integers(0, 2**31))
def test_property_random_points_never_better(a, family, seed):
    s = a @ a.T
    best = solve(family, s)
    assert best.value == pytest.approx(np.trace(best.Q.numpy() @ s), rel=1e-9, abs=1e-9)
    rng = np.random.default_rng(seed)
    for _ in range(50):
        b = rng.standard_normal(a.shape)
        q = np.diag(np.abs(np.diag(b))) if family == "diagonal" else b @ b.T
        size = BUDGETS[family](q, s)
        if size > 1e-9:
            assert np.trace(q @ s) * R / size <= best.value * (1 + 1e-9) + 1e-9


# --- numerical solves with SciPy (full-rank sigma, several starts, best taken) -------------------

def _tril(n):
    return np.tril_indices(n)


def _chol_q(x, n):
    lower = np.zeros((n, n))
    lower[_tril(n)] = x
    return lower @ lower.T


def _best(problems):
    res = [scipy.optimize.minimize(**p, method="SLSQP", options={"ftol": 1e-14, "maxiter": 1000})
           for p in problems]
    # status 8 ("positive directional derivative") is SLSQP stopping at the optimum under ftol=1e-14
    cons = problems[0].get("constraints", [])
    res = [x for x in res if x.status in (0, 8)
           and all(np.all(np.asarray(c["fun"](x.x)) >= -1e-9) for c in cons)]
    assert res, "no SciPy start converged"
    return min(res, key=lambda x: x.fun)


def scipy_solve(family, s, starts=4, seed=0):
    """Return (Q, value) from a numerical solve of the budget problem."""
    n = s.shape[0]
    rng = np.random.default_rng(seed)
    if family == "diagonal":
        d = np.diag(s)
        cons = {"type": "ineq", "fun": lambda x: R**2 - x**2 * d}
        res = _best([dict(fun=lambda x: -x @ d, x0=rng.uniform(0, 0.1, n), bounds=[(0, None)] * n,
                          constraints=[cons]) for _ in range(starts)])
        return np.diag(res.x), -res.fun
    if family == "operator_norm":
        # Q = V diag(d) Vᵀ, V = expm(K) with K skew: every PSD Q with ‖Q‖₂ ≤ r, d in [0, r].
        iu = np.triu_indices(n, 1)

        def q_of(x):
            k = np.zeros((n, n))
            k[iu] = x[n:]
            v = scipy.linalg.expm(k - k.T)
            return (v * x[:n]) @ v.T

        res = _best([dict(fun=lambda x: -np.trace(q_of(x) @ s),
                          x0=np.concatenate([rng.uniform(0, R / 2, n), rng.standard_normal(len(iu[0]))]),
                          bounds=[(0, R)] * n + [(None, None)] * len(iu[0])) for _ in range(starts)])
        return q_of(res.x), -res.fun
    if family == "update_covariance":
        # QΣQ ⪯ r²I  ⟺  ‖B‖₂ ≤ r with B = Σ^{1/2}Q, and tr(QΣ) = tr(BΣ^{1/2}). Solve the relaxation
        # over all B = r·U diag(c) Vᵀ (U, V = expm(skew), c in [0, 1]); its optimum bounds the
        # original from above, so equal values (with the closed form feasible) certify optimality.
        root = np.real(scipy.linalg.sqrtm(s))
        iu = np.triu_indices(n, 1)
        k = len(iu[0])

        def rot(x):
            a = np.zeros((n, n))
            a[iu] = x
            return scipy.linalg.expm(a - a.T)

        def b_of(x):
            return R * (rot(x[n:n + k]) * x[:n]) @ rot(x[n + k:]).T

        res = _best([dict(fun=lambda x: -np.trace(b_of(x) @ root),
                          x0=np.concatenate([rng.uniform(0, 0.5, n), rng.standard_normal(2 * k)]),
                          bounds=[(0, 1)] * n + [(None, None)] * (2 * k)) for _ in range(starts)])
        return np.linalg.solve(root, b_of(res.x)), -res.fun
    constraint = {
        "frobenius": lambda q: R**2 - np.sum(q * q),
        "trace": lambda q: R - np.trace(q),
        "update_energy": lambda q: R**2 - np.trace(q @ s @ q),
    }[family]
    m = n * (n + 1) // 2
    problems = []
    for _ in range(starts):
        x0 = rng.standard_normal(m) * 0.1
        problems.append(dict(fun=lambda x: -np.trace(_chol_q(x, n) @ s), x0=x0,
                             constraints=[{"type": "ineq", "fun": lambda x: constraint(_chol_q(x, n))}]))
    res = _best(problems)
    return _chol_q(res.x, n), -res.fun


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", range(5))
def test_matches_scipy(family, seed):
    rng = np.random.default_rng(1000 + seed)
    n = int(rng.integers(2, 7))
    w = 0.5 + np.cumsum(rng.uniform(0.3, 1.0, n))  # well-separated, well-conditioned spectrum
    v = np.linalg.qr(rng.standard_normal((n, n)))[0]
    s = (v * w) @ v.T
    opt = solve(family, s)
    q_num, val_num = scipy_solve(family, s, seed=seed)
    assert val_num == pytest.approx(opt.value, rel=1e-6)
    # Σ ≻ 0 with a simple spectrum: every family's optimum is unique, so compare Q as well
    np.testing.assert_allclose(q_num, opt.Q.numpy(), rtol=0, atol=1e-6 * np.abs(opt.Q.numpy()).max())


# --- left (matrix-gradient) operator ---------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3), (3, 3), (4, 6), (5, 2)])
def test_left_matrix(shape):
    rng = np.random.default_rng(sum(shape))
    g = rng.standard_normal(shape)
    opt = theory.left_matrix(torch.from_numpy(g), R)
    q, upd = opt.Q.numpy(), opt.update.numpy()
    np.testing.assert_allclose(upd, q @ g, atol=1e-10)
    assert np.linalg.eigvalsh(upd @ upd.T)[-1] <= R**2 * (1 + 1e-9)
    assert opt.value == pytest.approx(np.trace(g.T @ upd), rel=1e-9)
    assert opt.value == pytest.approx(R * np.linalg.norm(g, "nuc"), rel=1e-9)
    m, n = shape
    # update = r·(polar factor of G) = r·UVᵀ (reduced SVD), for either shape
    np.testing.assert_allclose(upd, R * scipy.linalg.polar(g)[0], atol=1e-9)
    if m <= n:  # full row rank: Q_L = r(GGᵀ)^{-1/2}
        np.testing.assert_allclose(q, R * np.linalg.inv(psd_sqrt(g @ g.T)), atol=1e-8)
    # left_matrix is update_covariance with Σ = GGᵀ
    cov = theory.update_covariance(torch.from_numpy(g @ g.T), R)
    assert cov.value == pytest.approx(opt.value, rel=1e-7)
    if m <= n:
        q_num, val_num = scipy_solve("update_covariance", g @ g.T)
        assert val_num == pytest.approx(opt.value, rel=1e-6)


def test_optimal_step_scale():
    rng = np.random.default_rng(7)
    s = random_sigma(rng, 4)
    eta = theory.optimal_step_scale(float(np.trace(s)), R)
    assert eta == pytest.approx(R / np.sqrt(np.trace(s)))
    np.testing.assert_allclose(theory.update_energy(torch.from_numpy(s), R).Q.numpy(), eta * np.eye(4))
    assert theory.optimal_step_scale(torch.tensor(4.0), 2.0) == pytest.approx(1.0)


def test_singular_sigma_conventions():
    s = np.diag([4.0, 0.0])
    cov = theory.update_covariance(s, 1.0)
    np.testing.assert_allclose(cov.Q.numpy(), np.diag([0.5, 0.0]))
    assert cov.value == pytest.approx(2.0)
    np.testing.assert_allclose(theory.diagonal(s, 1.0).Q.numpy(), np.diag([0.5, 0.0]))
    zero = np.zeros((3, 3))
    for fam in ("frobenius", "update_energy", "update_covariance", "diagonal"):
        opt = getattr(theory, fam)(zero, 1.0)
        assert opt.value == 0.0 and np.all(np.isfinite(opt.Q.numpy()))
    z = theory.left_matrix(np.zeros((2, 3)), 1.0)
    assert z.value == 0.0 and np.all(z.update.numpy() == 0)


def test_optimum_is_frozen():
    opt = theory.trace(np.eye(2), 1.0)
    with pytest.raises(AttributeError):
        opt.value = 2.0


# --- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("bad,match", [
    (np.ones((2, 3)), "sigma.*square"),
    (np.ones(3), "sigma.*2-D"),
    (np.array([[1.0, 0.5], [0.0, 1.0]]), "sigma.*symmetric"),
    (np.diag([1.0, -1.0]), "sigma.*positive semi-definite"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "sigma.*non-finite"),
])
def test_bad_sigma(family, bad, match):
    with pytest.raises(ValueError, match=match):
        getattr(theory, family)(bad, 1.0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("r", [-1.0, 0.0, float("nan"), "1"])
def test_bad_r(family, r):
    with pytest.raises(ValueError, match="r"):
        getattr(theory, family)(np.eye(2), r)


def test_bad_left_matrix_and_step_scale():
    with pytest.raises(ValueError, match="G.*2-D"):
        theory.left_matrix(np.ones(3), 1.0)
    with pytest.raises(ValueError, match="Invalid r"):
        theory.left_matrix(np.ones((2, 2)), -1.0)
    with pytest.raises(ValueError, match="grad_sq_mean"):
        theory.optimal_step_scale(0.0, 1.0)
    with pytest.raises(ValueError, match="Invalid r"):
        theory.optimal_step_scale(1.0, 0.0)
