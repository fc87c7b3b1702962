"""Greedy-optimal linear optimizers in closed form.

A static linear optimizer is a PSD operator ``Q`` acting on the negative gradient ``g``
(``dθ/dt = Q g``). Its expected instantaneous loss drop is ``tr(Q Σ)`` with ``Σ = E[g gᵀ]``.
The greedy principle (J. Lee & K. M. Lee, arXiv 2512.06370) picks ``Q`` maximising
``tr(Q Σ)`` over a budget set of radius ``r``; each function below solves one budget family
exactly and returns an :class:`Optimum`. Everything is computed in float64.

Where ``Σ`` is singular the optimum is not unique along its null space (the objective ignores
it); the functions then return the solution that is zero there (pseudo-inverse convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from optfit.optim._validation import positive

_TOL = 1e-9  # relative tolerance for the symmetry and PSD checks


@dataclass(frozen=True)
class Optimum:
    """An optimal operator ``Q``, its value ``tr(Q Σ)``, and (matrix case) the update ``Q G``."""

    Q: torch.Tensor
    value: float
    update: torch.Tensor | None = None


def _matrix(name: str, x: Any) -> torch.Tensor:
    try:
        t = torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"Invalid {name}: cannot convert to a float64 tensor ({exc})") from None
    if t.dim() != 2:
        raise ValueError(f"Invalid {name}: expected a 2-D matrix, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"Invalid {name}: empty matrix of shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"Invalid {name}: contains non-finite entries")
    return t


def _psd(name: str, x: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate a symmetric PSD matrix; return it symmetrised with its ``eigh`` (eigenvalues >= 0)."""
    s = _matrix(name, x)
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"Invalid {name}: must be square, got shape {tuple(s.shape)}")
    scale = float(s.abs().max())
    asym = float((s - s.T).abs().max())
    if asym > _TOL * scale:
        raise ValueError(f"Invalid {name}: not symmetric (max |S - Sᵀ| = {asym:.3g})")
    s = 0.5 * (s + s.T)
    evals, evecs = torch.linalg.eigh(s)
    if float(evals[0]) < -_TOL * scale:
        raise ValueError(f"Invalid {name}: not positive semi-definite (min eigenvalue {float(evals[0]):.3g})")
    return s, evals.clamp_min(0.0), evecs


def _range_mask(evals: torch.Tensor) -> torch.Tensor:
    """Eigenvalues treated as nonzero (same cutoff as a pseudo-inverse)."""
    cutoff = evals.numel() * torch.finfo(torch.float64).eps * float(evals.max())
    return evals > cutoff


def frobenius(sigma: Any, r: float) -> Optimum:
    """max tr(QΣ) s.t. ‖Q‖_F ≤ r  →  Q = rΣ/‖Σ‖_F, value r‖Σ‖_F.

    Cauchy–Schwarz in the Frobenius inner product. With a one-sample Σ = g gᵀ the update
    Q g ∝ g is plain SGD. Σ = 0 gives Q = 0.
    """
    s, _, _ = _psd("sigma", sigma)
    r = positive("r", r)
    norm = float(torch.linalg.matrix_norm(s))
    q = s * (r / norm) if norm > 0 else torch.zeros_like(s)
    return Optimum(q, r * norm)


def operator_norm(sigma: Any, r: float) -> Optimum:
    """max tr(QΣ) s.t. ‖Q‖₂ ≤ r  →  Q = rI, value r·trΣ: SGD at the largest allowed step."""
    s, _, _ = _psd("sigma", sigma)
    r = positive("r", r)
    return Optimum(r * torch.eye(s.shape[0], dtype=torch.float64), r * float(torch.trace(s)))


def trace(sigma: Any, r: float) -> Optimum:
    """max tr(QΣ) s.t. tr Q ≤ r  →  Q = r v₁v₁ᵀ, value r·λ_max(Σ).

    v₁ is a top eigenvector of Σ (the power-iteration direction); the optimum is unique only
    when λ_max is simple.
    """
    _, evals, evecs = _psd("sigma", sigma)
    r = positive("r", r)
    v = evecs[:, -1:]
    return Optimum(r * (v @ v.T), r * float(evals[-1]))


def update_energy(sigma: Any, r: float) -> Optimum:
    """max tr(QΣ) s.t. E‖Q g‖² = tr(QΣQ) ≤ r²  →  Q = (r/√trΣ) I, value r√trΣ.

    Normalised SGD with the optimal step η* = r/√E‖g‖² (see :func:`optimal_step_scale`).
    trΣ = 0 gives Q = 0.
    """
    s, _, _ = _psd("sigma", sigma)
    r = positive("r", r)
    tr = float(torch.trace(s))
    eta = r / math.sqrt(tr) if tr > 0 else 0.0
    return Optimum(eta * torch.eye(s.shape[0], dtype=torch.float64), r * math.sqrt(tr))


def update_covariance(sigma: Any, r: float) -> Optimum:
    """max tr(QΣ) s.t. QΣQ ⪯ r²I  →  Q = rΣ^{-1/2}, value r·trΣ^{1/2}.

    Full-matrix AdaGrad / gradient whitening: the update covariance becomes r²I on the range
    of Σ. For singular Σ the inverse root is taken on the range only (pseudo-inverse root,
    Q = 0 on the null space), and eigenvalues below the pseudo-inverse cutoff count as zero.
    """
    _, evals, evecs = _psd("sigma", sigma)
    r = positive("r", r)
    keep = _range_mask(evals)
    inv_root = torch.where(keep, evals.clamp_min(torch.finfo(torch.float64).tiny).rsqrt(), 0.0)
    q = r * (evecs * inv_root) @ evecs.T
    return Optimum(0.5 * (q + q.T), r * float(evals[keep].sqrt().sum()))


def diagonal(sigma: Any, r: float) -> Optimum:
    """max tr(QΣ) over diagonal Q ⪰ 0 with q_i²Σ_ii ≤ r²  →  q_i = r/√Σ_ii, value r·Σ_i √Σ_ii.

    The per-coordinate budget decouples; q_i is Adam's / RMSProp's / diagonal AdaGrad's
    1/√v denominator. Coordinates with Σ_ii = 0 get q_i = 0.
    """
    s, _, _ = _psd("sigma", sigma)
    r = positive("r", r)
    d = torch.diagonal(s).clamp_min(0.0)
    root = d.sqrt()
    q = torch.where(d > 0, r / root.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return Optimum(torch.diag(q), r * float(root.sum()))


def left_matrix(G: Any, r: float) -> Optimum:
    """Matrix gradient G (m×n), left operator Q_L ⪰ 0 with (Q_L G)(Q_L G)ᵀ ⪯ r²I.

    Maximises the drop ⟨G, Q_L G⟩ = tr(Q_L GGᵀ): this is :func:`update_covariance` with
    Σ = GGᵀ, so Q_L = r(GGᵀ)^{-1/2} and the update is Q_L G = r·UVᵀ, the polar factor of the
    reduced SVD G = USVᵀ (Muon's orthogonalised update); value r‖G‖_*. Singular directions
    with zero singular value are dropped (pseudo-inverse convention). Returns ``update``.
    """
    g = _matrix("G", G)
    r = positive("r", r)
    u, sv, vh = torch.linalg.svd(g, full_matrices=False)
    keep = _range_mask(sv) if float(sv.max()) > 0 else torch.zeros_like(sv, dtype=torch.bool)
    u, sv, vh = u[:, keep], sv[keep], vh[keep]
    q = r * (u / sv) @ u.T
    return Optimum(0.5 * (q + q.T), r * float(sv.sum()), update=r * u @ vh)


def optimal_step_scale(grad_sq_mean: Any, r: float) -> float:
    """Step size η* = r/√E‖g‖² saturating the update-energy budget E‖η g‖² ≤ r² (normalised SGD)."""
    m = positive("grad_sq_mean", grad_sq_mean)
    r = positive("r", r)
    return r / math.sqrt(m)
