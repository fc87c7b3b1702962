"""ROOT: the quantile, the clipped base (~10 % at the threshold), hand-computed steps, robustness (catalogue C3)."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import ROOT, Muon, orthogonalize, root
from optfit.optim.root import abs_quantile, clip_outliers

from .problems import run_impls, step_updates

F64 = torch.float64


def _randn(shape, seed=0, dtype=F64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("shape", [(1, 1), (1, 2), (3, 5, 7), (2, 32, 32), (4, 4)])
@pytest.mark.parametrize("q", [0.0, 0.05, 0.5, 0.9, 0.97, 1.0])
def test_abs_quantile_equals_torch_quantile(shape, q):
    ties = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(1)).double()
    for x in (_randn(shape, seed=len(shape)), ties):
        expected = torch.quantile(x.abs().flatten(-2), q, dim=-1, keepdim=True).unsqueeze(-1)
        torch.testing.assert_close(abs_quantile(x, q), expected, rtol=1e-14, atol=0)


def test_abs_quantile_works_above_torch_quantiles_16m_limit():
    """torch.quantile refuses more than 2**24 elements; a 4100×4100 matrix has 16.81 M."""
    n = 4100 * 4100
    x = torch.linspace(-1.0, 1.0, n).view(4100, 4100).mT  # |x| is spread evenly over [0, 1]
    assert n > 2**24
    assert abs_quantile(x, 0.9).item() == pytest.approx(0.9, abs=1e-6)


def test_abs_quantile_is_fast_on_orderings_that_defeat_quickselect():
    """kthvalue takes seconds on this rotated ramp of 640k values (quadratic quickselect); selection by topk not."""
    import time

    x = torch.linspace(0.0, 1.0, 640_000).roll(640_000 // 3).view(800, 800)
    t0 = time.perf_counter()
    value = abs_quantile(x, 0.9).item()
    assert time.perf_counter() - t0 < 0.5
    assert value == pytest.approx(0.9, abs=1e-6)


def test_clipped_base_has_ten_percent_at_the_threshold():
    U = _randn((3, 64, 48), seed=2)
    base, eps = clip_outliers(U, 0.9)
    n = 64 * 48
    at = (base.abs() == eps).flatten(1).sum(1)
    # entries strictly above the interpolated 0.9-quantile: n − ⌊0.9(n−1)⌋ − 1 of them (≈ 10 %)
    assert at.tolist() == [n - math.floor(0.9 * (n - 1)) - 1] * 3
    assert ((at / n - 0.1).abs() < 0.002).all()
    inside = U.abs() < eps
    assert torch.equal(base[inside], U[inside])
    # the outliers U − B are the soft-threshold T_ε(U) = sign(U)·max(|U| − ε, 0)
    torch.testing.assert_close(U - base, U.sign() * (U.abs() - eps).clamp_min(0), rtol=0, atol=1e-15)


def test_first_two_steps_by_hand(monkeypatch):
    lr, mu, q = 0.01, 0.9, 0.8
    monkeypatch.setitem(optfit.optim.newton_schulz.ROOT_COEFFICIENTS, (6, 10), (3.0, -3.5, 1.4))
    g1, g2 = _randn((10, 6), seed=3), _randn((10, 6), seed=4)
    p = torch.zeros(10, 6, dtype=F64, requires_grad=True)
    opt = ROOT([p], lr=lr, momentum=mu, outlier_quantile=q, weight_decay=0.0)
    d1, d2 = step_updates(opt, p, [g1, g2])
    scale = 0.2 * math.sqrt(10)

    def expected(U):
        flat = U.abs().flatten()
        eps = torch.quantile(flat, q) + 1e-9
        return -lr * scale * orthogonalize(U.clamp(-eps, eps), 5, [(3.0, -3.5, 1.4)] * 5)

    torch.testing.assert_close(d1, expected((1 + mu) * g1), rtol=0, atol=1e-14)  # M = g₁, U = g₁ + μg₁
    M = mu * g1 + g2  # heavy-ball: no (1 − μ) factor
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], M, rtol=0, atol=1e-15)
    torch.testing.assert_close(d2, expected(g2 + mu * M), rtol=0, atol=1e-14)


def test_quantile_one_disables_clipping():
    g = _randn((5, 7), seed=5)
    g[0, 0] = 100.0
    p = torch.zeros(5, 7, dtype=F64, requires_grad=True)
    d = step_updates(ROOT([p], lr=1.0, momentum=0.0, outlier_quantile=1.0, weight_decay=0.0), p, [g])[0]
    torch.testing.assert_close(d, -0.2 * math.sqrt(7) * orthogonalize(g), rtol=0, atol=1e-13)


def test_outliers_barely_move_roots_step_but_dominate_muons():
    g = _randn((32, 48), seed=6)
    spiked = g.clone()
    spiked[[1, 7, 20], [3, 30, 11]] = torch.tensor([400.0, -300.0, 500.0], dtype=F64)

    def first_step(cls, grad, **kw):
        p = torch.zeros(32, 48, dtype=F64, requires_grad=True)
        return step_updates(cls([p], lr=1.0, momentum=0.0, weight_decay=0.0, **kw), p, [grad])[0].flatten()

    cos = torch.nn.functional.cosine_similarity
    assert cos(first_step(ROOT, g), first_step(ROOT, spiked), dim=0) > 0.99
    assert cos(first_step(Muon, g), first_step(Muon, spiked), dim=0) < 0.9


def test_uses_the_shape_keyed_table(monkeypatch):
    seen = []
    real = root.orthogonalize
    monkeypatch.setattr(root, "orthogonalize", lambda U, steps, coeffs: seen.append(coeffs) or real(U, steps, coeffs))
    p = torch.zeros(4, 4, requires_grad=True)
    step_updates(ROOT([p]), p, [torch.ones(4, 4)])
    assert seen == ["root"]


def test_batched_equals_unbatched():
    shapes = [(6, 4)] * 3 + [(4, 6)] * 2 + [(6, 2, 2)]
    out = run_impls(lambda params, impl: ROOT(params, lr=0.02, impl=impl), shapes, seed=7)
    (ref, oref), (fast, ofast) = out["reference"], out["foreach"]
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        for key in ("momentum_buffer",):
            torch.testing.assert_close(oref.state[a][key], ofast.state[b][key], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("value", [0.0, 1.5, float("nan")])
def test_bad_outlier_quantile_names_itself(value):
    with pytest.raises(ValueError, match="outlier_quantile"):
        ROOT([torch.zeros(2, 2, requires_grad=True)], outlier_quantile=value)


def test_registry_record():
    info = optfit.optimizer_info("root")
    d = info.defaults
    assert info.cls is ROOT and info.family == "matrix" and info.state_tensors == 1
    assert (d["lr"], d["momentum"], d["outlier_quantile"], d["ns_coefficients"], d["adjust_lr_fn"]) == (
        1e-3, 0.95, 0.9, "root", "match_rms_adamw")
