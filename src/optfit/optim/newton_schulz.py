"""Quintic Newton–Schulz orthogonalisation, batched over leading dimensions (Muon, AdaMuon, ROOT).

One step maps ``X ↦ aX + (bA + cA²)X`` with ``A = XXᵀ``. For ``X = U diag(σ) Vᵀ`` this is
``U diag(p(σ)) Vᵀ`` with ``p(σ) = aσ + bσ³ + cσ⁵``: the singular vectors are untouched and every singular
value goes through the scalar polynomial. Starting from ``X₀ = G/(‖G‖_F + ε)`` (so every σ ≤ 1), N steps give

    orthogonalize(G) = U diag(p_N ∘ … ∘ p_1(s/(‖s‖₂ + ε))) Vᵀ  ≈  U Vᵀ     (G = U diag(s) Vᵀ, ‖G‖_F = ‖s‖₂)

the orthogonal polar factor up to the polynomial's approximation (Muon's coefficients leave σ in about
[0.7, 1.2] on purpose: a steeper slope at 0 needs fewer steps). The Gram matrix is formed on the short side
(``XᵀX`` and ``X(bA + cA²)`` for tall matrices, the same maths without a transpose).

Coefficient tables: ``MUON_COEFFICIENTS`` (K. Jordan, kellerjordan.github.io/posts/muon) and
``ROOT_COEFFICIENTS``, ROOT's shape-keyed table (He et al., arXiv 2511.20626) keyed by (short side, long
side); shapes outside it fall back to Muon's with a one-time warning (the fitting procedure is not published).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Union

import torch
from torch import Tensor

__all__ = ["orthogonalize", "MUON_COEFFICIENTS", "ROOT_COEFFICIENTS", "root_coefficients"]

Triple = tuple[float, float, float]
Coefficients = Union[None, str, Triple, Sequence[Triple]]

MUON_COEFFICIENTS: Triple = (3.4445, -4.7750, 2.0315)
ROOT_COEFFICIENTS: dict[tuple[int, int], Triple] = {
    (2048, 2048): (3.4916, -4.8224, 2.1095),
    (2048, 3072): (3.4509, -4.5790, 1.9325),
    (2048, 8192): (2.9794, -3.6674, 1.6207),
    (2048, 16384): (3.1943, -3.8221, 1.5322),
}
_LOW_PRECISION = (torch.bfloat16, torch.float16)
_log = logging.getLogger(__name__)
_warned: set[tuple[int, int]] = set()


def root_coefficients(rows: int, cols: int) -> Triple:
    """ROOT's (a, b, c) for an ``rows × cols`` matrix; Muon's (logged once per shape) outside the table."""
    key = (min(rows, cols), max(rows, cols))
    if key in ROOT_COEFFICIENTS:
        return ROOT_COEFFICIENTS[key]
    if key not in _warned:
        _warned.add(key)
        _log.warning("ROOT has no fitted Newton-Schulz coefficients for shape %s; using Muon's %s", key,
                     MUON_COEFFICIENTS)
    return MUON_COEFFICIENTS


def _is_triple(x: Any) -> bool:
    return (isinstance(x, Sequence) and not isinstance(x, str) and len(x) == 3
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x))


def check_coefficients(name: str, value: Any, steps: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is None, "muon", "root", (a, b, c) or one triple
    per step."""
    if value is None or value in ("muon", "root") or _is_triple(value):
        ok = value is None or isinstance(value, str) or all(abs(float(v)) < float("inf") for v in value)
    else:
        ok = (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == steps
              and all(_is_triple(t) for t in value))
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r} (expected 'muon', 'root', a triple (a, b, c) of finite "
                         f"numbers, or {steps} such triples, one per step)")


def step_coefficients(coefficients: Coefficients, rows: int, cols: int, steps: int) -> list[Triple]:
    """The (a, b, c) of each of the ``steps`` iterations for an ``rows × cols`` matrix."""
    check_coefficients("coefficients", coefficients, steps)
    if coefficients is None or coefficients == "muon":
        return [MUON_COEFFICIENTS] * steps
    if coefficients == "root":
        return [root_coefficients(rows, cols)] * steps
    if _is_triple(coefficients):
        return [tuple(map(float, coefficients))] * steps  # type: ignore[list-item]
    return [tuple(map(float, t)) for t in coefficients]  # type: ignore[union-attr]


def orthogonalize(G: Tensor, steps: int = 5, coefficients: Coefficients = None, *, eps: float = 1e-7,
                  dtype: torch.dtype | None = None) -> Tensor:
    """Approximate orthogonal polar factor of each matrix in ``G`` (shape ``(…, rows, cols)``).

    ``coefficients``: None or "muon" (Muon's triple), "root" (ROOT's shape-keyed table), a triple (a, b, c),
    or a list of ``steps`` triples. The maths runs in ``dtype``: by default float32 for bf16/fp16 input on CPU
    (low-precision matmuls are slow there) and the input's dtype otherwise; the result has ``G``'s dtype.
    ``G`` itself is never modified.
    """
    if not isinstance(G, Tensor):
        raise TypeError(f"G must be a Tensor, got {type(G).__name__}")
    if G.ndim < 2:
        raise ValueError(f"G must have at least 2 dimensions (…, rows, cols), got shape {tuple(G.shape)}")
    if not G.is_floating_point():
        raise ValueError(f"G must be a real floating-point tensor, got dtype {G.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"Invalid steps: {steps!r} (must be an integer >= 0)")
    rows, cols = G.shape[-2], G.shape[-1]
    table = step_coefficients(coefficients, rows, cols, steps)
    if G.numel() == 0:
        return G.clone()
    work = dtype or (torch.float32 if G.dtype in _LOW_PRECISION and G.device.type == "cpu" else G.dtype)
    X = G.reshape(-1, rows, cols).to(work)
    X = X / (torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True) + eps)
    tall = rows > cols
    for a, b, c in table:
        if tall:  # X(bA + cA²) with A = XᵀX: the short-side Gram matrix, no transpose copies
            A = torch.bmm(X.mT, X)
            X = torch.baddbmm(X, X, torch.baddbmm(A, A, A, beta=b, alpha=c), beta=a)
        else:
            A = torch.bmm(X, X.mT)
            X = torch.baddbmm(X, torch.baddbmm(A, A, A, beta=b, alpha=c), X, beta=a)
    return X.reshape(G.shape).to(G.dtype)
