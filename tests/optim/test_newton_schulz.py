"""Quintic Newton–Schulz: the spectral oracle, both orientations, batching, coefficient tables (catalogue C1, C3)."""

from __future__ import annotations

import logging

import pytest
import torch

from optfit.optim import newton_schulz as ns
from optfit.optim import orthogonalize


def _orthonormal(n, k, gen, dtype):
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64))
    return q.to(dtype)


def _oracle(U, s, V, table, eps=1e-7):
    """U diag(p_N ∘ … ∘ p_1(s/(‖s‖₂ + ε))) Vᵀ, computed on the singular values in float64."""
    sigma = s.double() / (s.double().norm() + eps)
    for a, b, c in table:
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    return (U.double() * sigma) @ V.double().T


def _build(shape, gen, dtype=torch.float64):
    """G = U diag(s) Vᵀ with random orthonormal U, V and spread-out singular values s."""
    rows, cols = shape
    k = min(rows, cols)
    U, V = _orthonormal(rows, k, gen, torch.float64), _orthonormal(cols, k, gen, torch.float64)
    s = torch.logspace(-2, 0.5, k, dtype=torch.float64) * 3.0
    return (U * s) @ V.T, U, s, V


@pytest.mark.parametrize("shape", [(6, 6), (5, 9), (9, 5), (1, 7), (7, 1)])
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_spectral_oracle(shape, dtype, tol):
    gen = torch.Generator().manual_seed(sum(shape))
    G, U, s, V = _build(shape, gen)
    out = orthogonalize(G.to(dtype))
    assert out.dtype == dtype and out.shape == G.shape
    expected = _oracle(U, s, V, [ns.MUON_COEFFICIENTS] * 5)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=tol)


def test_spectral_oracle_batched_with_leading_dims_and_both_orientations():
    gen = torch.Generator().manual_seed(0)
    for shape in [(4, 7), (7, 4)]:
        parts = [_build(shape, gen) for _ in range(6)]
        G = torch.stack([p[0] for p in parts]).reshape(2, 3, *shape).float()
        out = orthogonalize(G, steps=3)
        expected = torch.stack([_oracle(U, s, V, [ns.MUON_COEFFICIENTS] * 3) for _, U, s, V in parts])
        torch.testing.assert_close(out.double(), expected.reshape(2, 3, *shape), rtol=0, atol=2e-6)


def test_tall_and_wide_paths_are_transposes_of_each_other():
    G = torch.randn(3, 10, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(orthogonalize(G), orthogonalize(G.mT.contiguous()).mT, rtol=0, atol=1e-13)


@pytest.mark.parametrize("coefficients", [(3.0, -3.2, 1.2), [(3.4, -4.7, 2.0), (2.0, -1.5, 0.5), (1.5, -0.5, 0.0)]])
def test_custom_and_per_step_coefficients(coefficients):
    gen = torch.Generator().manual_seed(2)
    G, U, s, V = _build((5, 8), gen)
    table = [coefficients] * 3 if isinstance(coefficients, tuple) else coefficients
    torch.testing.assert_close(orthogonalize(G, 3, coefficients), _oracle(U, s, V, table), rtol=0, atol=1e-12)


def test_root_table_is_keyed_by_short_then_long_side(monkeypatch, caplog):
    assert ns.root_coefficients(8192, 2048) == ns.root_coefficients(2048, 8192) == (2.9794, -3.6674, 1.6207)
    monkeypatch.setitem(ns.ROOT_COEFFICIENTS, (5, 8), (3.1, -3.9, 1.7))
    gen = torch.Generator().manual_seed(3)
    G, U, s, V = _build((8, 5), gen)
    expected = _oracle(U, s, V, [(3.1, -3.9, 1.7)] * 5)
    torch.testing.assert_close(orthogonalize(G, 5, "root"), expected, rtol=0, atol=1e-12)
    # outside the table: Muon's coefficients, with one warning per shape
    monkeypatch.setattr(ns, "_warned", set())
    with caplog.at_level(logging.WARNING, logger=ns.__name__):
        H = torch.randn(3, 11, dtype=torch.float64)
        assert torch.equal(orthogonalize(H, 5, "root"), orthogonalize(H))
        orthogonalize(H.T, 5, "root")
    assert len([r for r in caplog.records if "(3, 11)" in r.getMessage()]) == 1


def test_low_precision_runs_in_float32_on_cpu_and_input_is_untouched():
    G = torch.randn(16, 24, generator=torch.Generator().manual_seed(4)).bfloat16()
    before = G.clone()
    out = orthogonalize(G)
    assert out.dtype == torch.bfloat16 and torch.equal(G, before)
    assert torch.equal(out, orthogonalize(G.float()).bfloat16())


def test_gaussian_singular_values_land_in_muons_band():
    """Catalogue C1 sanity 1: a 128×256 Gaussian gives σ ∈ ≈[0.68, 1.13] after 5 steps."""
    G = torch.randn(128, 256, generator=torch.Generator().manual_seed(5))
    sv = torch.linalg.svdvals(orthogonalize(G))
    assert 0.6 < sv.min() < 0.8 and 1.0 < sv.max() < 1.2


def test_zero_and_empty_inputs():
    assert torch.equal(orthogonalize(torch.zeros(3, 4)), torch.zeros(3, 4))
    assert orthogonalize(torch.zeros(0, 4)).shape == (0, 4)


@pytest.mark.parametrize("kwargs, name", [({"G": torch.zeros(4)}, "G"), ({"steps": -1}, "steps"),
                                          ({"coefficients": (1.0, 2.0)}, "coefficients"),
                                          ({"coefficients": "polar"}, "coefficients"),
                                          ({"coefficients": [(1.0, 2.0, 3.0)]}, "coefficients"),
                                          ({"G": torch.zeros(2, 2, dtype=torch.int64)}, "G")])
def test_bad_arguments_name_themselves(kwargs, name):
    args = {"G": torch.ones(2, 3), **kwargs}
    with pytest.raises(ValueError, match=name):
        orthogonalize(**args)
