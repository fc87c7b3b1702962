"""Inverse matrix roots for the Kronecker-factored optimizers (Shampoo, DASH; catalogue C4, C6).

Every function is batched over leading dimensions: ``A`` has shape (…, n, n), symmetric positive
semi-definite (a sum or EMA of G Gᵀ), and the result is ``(A + εI)^{−1/p}`` in ``A``'s dtype.

* ``"eigh"``: A + εI = Q diag(λ) Qᵀ in float64, λ floored at ε (rounding can push the smallest eigenvalues
  of a PSD A + εI below ε, even below 0), then Q diag(λ^{−1/p}) Qᵀ. The references (Distributed Shampoo,
  DASH) add ε a second time in their eigenvalue fix (λ ← λ − min(λ_min, 0) + ε); here it enters once.
* ``"newton"``: the coupled Newton iteration (Guo & Higham, SIAM J. Matrix Anal. Appl. 28, 2006), as in
  Distributed Shampoo: X₀ = z^{1/p} I, M₀ = z(A + εI) with z = (1 + p)/(2‖A + εI‖_F), then

      T = ((p + 1) I − M)/p ;  X ← X T ;  M ← T^p M

  keeps X^p (A + εI) = M and drives M → I (each eigenvalue of M₀ lies in (0, (p+1)/2] and rises
  monotonically to 1, quadratically near it), so X → (A + εI)^{−1/p}. Stops when max|M − I| ≤ ``tol`` or
  after ``max_iters``. Matrix products only: float32 (float64 for float64 input).
* ``"ndb"``: Newton–Denman–Beavers without inverses, as in DASH (p = 2 or 4): scale Â = (A + εI)/s with
  s = 2·λ̂_max (``power_iters`` steps of power iteration on A + εI + 10⁻⁶I, so an all-zero block gives no 0/0),
  E = 1.5I − 0.5Â, Y = ÂE, Z = E, then ``max_iters − 1`` times E = 1.5I − 0.5ZY, Y ← YE, Z ← EZ; Y → Â^{1/2},
  Z → Â^{−1/2}. p = 2: Z/√s. p = 4: the same iteration on Y (= Â^{1/2}, spectrum in (0, 0.71]) gives
  Â^{−1/4}, divided by s^{1/4}. A fixed number of steps (no host synchronisation); eigenvalues below
  ~λ_max·2.25^{−2·max_iters} are not reached, which acts like a larger ε.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["inverse_root", "inverse_root_eigh", "inverse_root_newton", "inverse_root_ndb", "power_iteration",
           "ROOT_METHODS"]

ROOT_METHODS = ("eigh", "newton", "ndb")
_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _check(A: Tensor, p: int, eps: float) -> None:
    if not isinstance(A, Tensor) or A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise ValueError(f"A must be a (…, n, n) tensor, got {tuple(A.shape) if isinstance(A, Tensor) else A!r}")
    if not A.is_floating_point():
        raise ValueError(f"A must be a real floating-point tensor, got dtype {A.dtype}")
    if isinstance(p, bool) or not isinstance(p, int) or p < 1:
        raise ValueError(f"Invalid p: {p!r} (must be an integer >= 1)")
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps >= 0:
        raise ValueError(f"Invalid eps: {eps!r} (must be >= 0)")


def _eye_like(A: Tensor) -> Tensor:
    return torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)


def _work_dtype(A: Tensor) -> torch.dtype:
    return torch.float32 if A.dtype in _LOW_PRECISION else A.dtype


def inverse_root_eigh(A: Tensor, p: int, eps: float) -> Tensor:
    """``(A + εI)^{−1/p}`` from a float64 eigendecomposition, eigenvalues floored at ``eps`` (> 0)."""
    _check(A, p, eps)
    if eps <= 0:
        raise ValueError(f"Invalid eps: {eps!r} (the eigh root needs eps > 0: the factors are rank-deficient)")
    A64 = A.to(torch.float64)
    lam, Q = torch.linalg.eigh(A64 + eps * _eye_like(A64))
    scaled = Q * lam.clamp_min(eps).pow(-1.0 / p).unsqueeze(-2)
    return (scaled @ Q.mT).to(A.dtype)


def inverse_root_newton(A: Tensor, p: int, eps: float, max_iters: int = 100, tol: float | None = None) -> Tensor:
    """``(A + εI)^{−1/p}`` by the coupled Newton iteration. Stops after ``max_iters``, when max|M − I| ≤ ``tol``
    (default 1e-6 in float32, 1e-12 in float64), or when rounding stalls it (max|M − I| < 1e-3 and no longer
    halving: quadratic convergence halves it at every step until the rounding floor)."""
    _check(A, p, eps)
    work = _work_dtype(A)
    if tol is None:
        tol = 1e-12 if work == torch.float64 else 1e-6
    I = _eye_like(A).to(work)
    M = A.to(work) + eps * I
    norm = torch.linalg.matrix_norm(M).clamp_min(torch.finfo(work).tiny)[..., None, None]
    z = (1 + p) / (2 * norm)
    X = z.pow(1.0 / p) * I
    M = z * M
    previous = float("inf")
    for _ in range(max_iters):
        T = ((p + 1) * I - M) / p
        X = X @ T
        M = torch.linalg.matrix_power(T, p) @ M
        err = float((M - I).abs().amax()) if M.numel() else 0.0
        if err <= tol or (err < 1e-3 and err > 0.5 * previous):
            break
        previous = err
    return X.to(A.dtype)


def power_iteration(A: Tensor, iters: int = 10) -> Tensor:
    """Rayleigh-quotient estimate of λ_max of each symmetric PSD matrix, shape (…, 1, 1) (≤ λ_max).
    The start vector is fixed (seeded), so results are reproducible."""
    n = A.shape[-1]
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(n, 1, generator=gen, dtype=torch.float64).to(dtype=A.dtype, device=A.device)
    v = v.expand(*A.shape[:-2], n, 1)
    for _ in range(iters):
        v = A @ v
        v = v / torch.linalg.vector_norm(v, dim=-2, keepdim=True).clamp_min(torch.finfo(A.dtype).tiny)
    return (v.mT @ A @ v)


def _ndb(Ahat: Tensor, steps: int) -> tuple[Tensor, Tensor]:
    """(Â^{1/2}, Â^{−1/2}) for Â with spectrum in (0, 1]: the inverse-free coupled Newton (Denman–Beavers)."""
    I = _eye_like(Ahat)
    E = 1.5 * I - 0.5 * Ahat
    Y, Z = Ahat @ E, E
    for _ in range(steps - 1):
        E = 1.5 * I - 0.5 * (Z @ Y)
        Y, Z = Y @ E, E @ Z
    return Y, Z


def inverse_root_ndb(A: Tensor, p: int, eps: float, max_iters: int = 10, power_iters: int = 10) -> Tensor:
    """``(A + εI)^{−1/p}`` for p in {2, 4} by Newton–Denman–Beavers with power-iteration scaling (DASH)."""
    _check(A, p, eps)
    if p not in (2, 4):
        raise ValueError(f"Invalid p: {p!r} (the ndb root supports p = 2 and p = 4)")
    work = _work_dtype(A)
    I = _eye_like(A).to(work)
    M = A.to(work) + eps * I
    s = 2 * power_iteration(M + 1e-6 * I, power_iters)
    Y, Z = _ndb(M / s, max_iters)
    if p == 2:
        return (Z / s.sqrt()).to(A.dtype)
    _, Z4 = _ndb(Y, max_iters)
    return (Z4 / s.pow(0.25)).to(A.dtype)


def inverse_root(A: Tensor, p: int, eps: float, method: str = "eigh", max_iters: int = 100) -> Tensor:
    """``(A + εI)^{−1/p}`` by ``method`` (``"eigh"``, ``"newton"`` or ``"ndb"``; see the module docstring)."""
    if method == "eigh":
        return inverse_root_eigh(A, p, eps)
    if method == "newton":
        return inverse_root_newton(A, p, eps, max_iters)
    if method == "ndb":
        return inverse_root_ndb(A, p, eps, max_iters)
    raise ValueError(f"Invalid method: {method!r} (choose one of {', '.join(map(repr, ROOT_METHODS))})")
