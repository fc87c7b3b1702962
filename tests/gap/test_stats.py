"""GradientStats on the synthetic streams whose statistics are known exactly."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.gap import GradientStats, ar1_optimal_beta

from .streams import AR1Stream, feed

SHAPES = [(64, 64), (2048,)]


def _probe(rho, noise, steps=1000, seed=0, **kw):
    params = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    opt = torch.optim.SGD(params, lr=0.0)
    stats = GradientStats(opt, **kw)
    feed(opt, params, AR1Stream(SHAPES, rho, noise, seed=seed), steps)
    return stats


@pytest.mark.parametrize("noise", [0.0, 1.0, 10.0])
def test_autocorrelation_noise_scale_and_beta_match_the_stream(noise):
    stats = _probe(0.9, noise, decay=0.995, max_elements=2048)
    r = stats.autocorrelation()["global"]
    want = torch.tensor([0.9 ** k for k in range(9)], dtype=torch.float64)
    want[0] += noise
    assert torch.allclose(r, want, rtol=0.12, atol=0.03 * (1 + noise)), (r, want)
    fit = GradientStats.fit(r)
    assert fit["rho"] == pytest.approx(0.9, abs=0.03)
    scale = stats.noise_scale()["global"]
    assert scale == pytest.approx(noise, abs=0.15 + 0.15 * noise)
    grid = (0.1, 0.3, 0.5, 0.7, 0.85, 0.9, 0.95, 0.99)
    assert stats.predicted_beta(grid)["global"] == ar1_optimal_beta(0.9, noise, grid=grid)


def test_per_tensor_estimates_and_subsampling():
    params = [torch.zeros(4096, requires_grad=True), torch.zeros(4096, requires_grad=True)]
    a, b = AR1Stream([(4096,)], 0.5, 0.0, seed=1), AR1Stream([(4096,)], 0.95, 0.0, seed=2)
    stats = GradientStats(params, max_elements=1024, decay=0.995)
    for _ in range(1000):
        params[0].grad, params[1].grad = a.next()[0], b.next()[0]
        stats.update()
    rhos = [GradientStats.fit(r)["rho"] for r in stats.autocorrelation()["per_tensor"]]
    assert rhos[0] == pytest.approx(0.5, abs=0.05) and rhos[1] == pytest.approx(0.95, abs=0.03)
    assert stats.noise_scale()["per_tensor"][0] < 0.2
    assert stats._index[0].numel() == 1024  # a subset, not the whole tensor


def test_white_noise_has_no_persistent_signal():
    stats = _probe(0.0, 1.0, steps=600)
    fit = GradientStats.fit(stats.autocorrelation()["global"])
    assert fit["signal"] < 0.05 * fit["noise"]
    assert stats.predicted_beta()["global"] < 0.1


def test_fit_recovers_an_exact_model_and_handles_degenerate_input():
    r = [3.0 + 2.0] + [2.0 * 0.8 ** k for k in range(1, 9)]
    fit = GradientStats.fit(r)
    assert fit == pytest.approx({"rho": 0.8, "signal": 2.0, "noise": 3.0})
    assert math.isnan(GradientStats.fit([math.nan] * 3)["rho"])
    assert GradientStats.fit([1.0, -0.1, 0.0])["signal"] == 0.0


def test_bad_arguments_and_detach():
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="lags"):
        GradientStats([p], lags=0)
    with pytest.raises(ValueError, match="decay"):
        GradientStats([p], decay=1.0)
    with pytest.raises(TypeError, match="optimizer or"):
        GradientStats([])
    opt = torch.optim.SGD([p], lr=0.0)
    stats = GradientStats(opt)
    p.grad = torch.ones(3)
    opt.step()
    stats.remove()
    opt.step()
    assert stats.steps == 1


def test_summary_says_why_its_estimates_are_nan():
    p = torch.zeros(6, requires_grad=True)
    stats = GradientStats([p], lags=4)
    assert "no gradients recorded yet" in stats.summary()["reason"]
    stats.update()  # no .grad yet
    assert "none of the 1 parameters had a gradient" in stats.summary()["reason"]
    gen = torch.Generator().manual_seed(0)
    for k in range(1, 5):
        p.grad = torch.randn(6, generator=gen)
        stats.update()
        summary = stats.summary()
        assert math.isnan(summary["rho"]) and summary["reason"] == (
            f"needs 5 recorded gradients of a tensor for R(0..4) (lags=4); has {k}")
    p.grad = torch.randn(6, generator=gen)
    stats.update()
    summary = stats.summary()
    assert summary["reason"] is None and math.isfinite(summary["rho"])
    zero = torch.zeros(3, requires_grad=True)
    flat = GradientStats([zero], lags=2)
    for _ in range(3):
        zero.grad = torch.zeros(3)
        flat.update()
    assert flat.summary()["reason"] == "every recorded gradient is zero" and math.isnan(flat.summary()["rho"])
