"""Muon: hand-computed steps, shape scaling, conv flattening, batched = unbatched, torch.optim parity (catalogue C1)."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import Muon, muon, orthogonalize

from .problems import record_shapes, run_impls, step_updates

F64 = torch.float64


def _grads(shape, n, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(n)]


def _svd_polar_oracle(U, steps=5, eps=1e-7):
    """U's singular values through Muon's quintic, computed from the SVD (independent of orthogonalize)."""
    u, s, vh = torch.linalg.svd(U, full_matrices=False)
    a, b, c = 3.4445, -4.7750, 2.0315
    sigma = s / (s.norm() + eps)
    for _ in range(steps):
        sigma = a * sigma + b * sigma**3 + c * sigma**5
    return (u * sigma) @ vh


@pytest.mark.parametrize("shape", [(7, 4), (4, 7)])
def test_first_two_steps_by_hand(shape):
    lr, beta = 0.05, 0.9
    p = torch.zeros(shape, dtype=F64, requires_grad=True)
    opt = Muon([p], lr=lr, momentum=beta)
    g1, g2 = _grads(shape, 2)
    d1, d2 = step_updates(opt, p, [g1, g2])
    scale = math.sqrt(max(1.0, shape[0] / shape[1]))
    # step 1: B = (1−β)g₁, U = (1−β)g₁ + β(1−β)g₁
    torch.testing.assert_close(d1, -lr * scale * _svd_polar_oracle((1 - beta) * (1 + beta) * g1), rtol=0, atol=1e-12)
    # step 2: B = β(1−β)g₁ + (1−β)g₂, U = (1−β)g₂ + βB
    B = beta * (1 - beta) * g1 + (1 - beta) * g2
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], B, rtol=0, atol=1e-15)
    torch.testing.assert_close(d2, -lr * scale * _svd_polar_oracle((1 - beta) * g2 + beta * B), rtol=0, atol=1e-12)
    assert opt.state[p]["step"].item() == 2.0


def test_without_nesterov_orthogonalises_the_buffer():
    p = torch.zeros(5, 3, dtype=F64, requires_grad=True)
    opt = Muon([p], lr=0.1, momentum=0.5, nesterov=False)
    g1, g2 = _grads((5, 3), 2, seed=1)
    _, d2 = step_updates(opt, p, [g1, g2])
    expected = -0.1 * math.sqrt(5 / 3) * _svd_polar_oracle(0.25 * g1 + 0.5 * g2)
    torch.testing.assert_close(d2, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(6, 20), (20, 6), (12, 12)])
def test_shape_scaling_variants(shape):
    g = _grads(shape, 1, seed=2)[0]
    steps = {}
    for rule in ("original", "match_rms_adamw"):
        p = torch.zeros(shape, dtype=F64, requires_grad=True)
        steps[rule] = step_updates(Muon([p], lr=1.0, adjust_lr_fn=rule), p, [g])[0]
    rows, cols = shape
    ratio = 0.2 * math.sqrt(max(rows, cols)) / math.sqrt(max(1.0, rows / cols))
    torch.testing.assert_close(steps["match_rms_adamw"], ratio * steps["original"], rtol=1e-12, atol=0)
    # an orthogonal rows×cols matrix has RMS 1/√max(rows, cols): the Moonlight scale gives RMS ≈ 0.2 (NS σ ≈ 0.7–1.2)
    rms = steps["match_rms_adamw"].pow(2).mean().sqrt().item()
    assert 0.12 < rms < 0.24


def test_conv_kernel_is_flattened_to_out_by_in_kh_kw():
    shape = (4, 3, 2, 2)
    p = torch.zeros(shape, dtype=F64, requires_grad=True)
    g = _grads(shape, 1, seed=3)[0]
    d = step_updates(Muon([p], lr=0.1, momentum=0.0), p, [g])[0]
    # rows/cols of the flattened (4, 12) matrix: scale √max(1, 4/12) = 1 (the reference's kh/kw is also 1 here,
    # but it would orthogonalise nothing different); the direction is the polar factor of the 4×12 matrix
    torch.testing.assert_close(d, -0.1 * _svd_polar_oracle(g.reshape(4, 12)).reshape(shape), rtol=0, atol=1e-12)


def test_tall_conv_kernel_uses_flattened_aspect_ratio():
    shape = (16, 2, 1, 1)  # (16, 2): √(16/2), where the reference's 4-D rule would give √max(1, 2/1)
    p = torch.zeros(shape, dtype=F64, requires_grad=True)
    g = _grads(shape, 1, seed=4)[0]
    d = step_updates(Muon([p], lr=1.0, momentum=0.0), p, [g])[0]
    torch.testing.assert_close(d, -math.sqrt(8.0) * _svd_polar_oracle(g.reshape(16, 2)).reshape(shape), rtol=0,
                               atol=1e-12)


@pytest.mark.parametrize("mode, factor", [("decoupled", 1 - 0.1 * 0.5), ("independent", 1 - 0.5)])
def test_weight_decay_modes(mode, factor):
    p = torch.ones(3, 3, dtype=F64, requires_grad=True)
    g = _grads((3, 3), 1, seed=5)[0]
    d = step_updates(Muon([p], lr=0.1, weight_decay=0.5, decay_mode=mode, momentum=0.0), p, [g])[0]
    torch.testing.assert_close(d + 1 - factor, -0.1 * _svd_polar_oracle(g), rtol=0, atol=1e-12)


def test_coupled_decay_enters_the_momentum():
    p = torch.full((4, 2), 2.0, dtype=F64, requires_grad=True)
    g = _grads((4, 2), 1, seed=6)[0]
    d = step_updates(Muon([p], lr=0.1, weight_decay=0.3, decay_mode="coupled", momentum=0.0), p, [g])[0]
    torch.testing.assert_close(d, -0.1 * math.sqrt(2) * _svd_polar_oracle(g + 0.6), rtol=0, atol=1e-12)


def test_half_quadratic_moves_about_lr_in_spectral_norm_then_plateaus():
    """Catalogue C1 sanity 3: f = ½‖W − W*‖², β = 0: σ₁(W − W*) falls by p⁵(·)·η ∈ [0.6η, 1.25η] per step
    until it is about η, then stays there (Muon needs lr decay to go further)."""
    lr = 0.02
    gen = torch.Generator().manual_seed(7)
    target = torch.randn(6, 10, generator=gen, dtype=F64)
    W = torch.zeros(6, 10, dtype=F64, requires_grad=True)
    opt = Muon([W], lr=lr, momentum=0.0)
    gaps = [torch.linalg.matrix_norm(W.detach() - target, 2).item()]
    for _ in range(400):
        W.grad = W.detach() - target
        opt.step()
        gaps.append(torch.linalg.matrix_norm(W.detach() - target, 2).item())
    drops = torch.tensor([a - b for a, b in zip(gaps, gaps[1:]) if b > 3 * lr])
    assert len(drops) > 50 and drops.min() > 0.6 * lr and drops.max() < 1.25 * lr
    assert max(gaps[-50:]) < 1.5 * lr


def test_batched_equals_unbatched_and_batches_by_shape(monkeypatch):
    shapes = [(8, 6)] * 4 + [(6, 8)] * 2 + [(8, 3, 2)] + [(5,)]
    calls = record_shapes(monkeypatch, muon, "orthogonalize")

    def make(params, impl):
        calls.clear()
        return Muon(params, lr=0.03, weight_decay=0.1, impl=impl)

    results = {}
    for impl in ("reference", "foreach"):
        (params, opt), = run_impls(make, shapes, seed=8, impls=(impl,)).values()
        results[impl] = (params, opt, list(calls))
    (ref, oref, cref), (fast, ofast, cfast) = results["reference"], results["foreach"]
    assert cref[:7] == [(1, 8, 6)] * 4 + [(1, 6, 8)] * 2 + [(1, 8, 6)]
    assert cfast[:2] == [(5, 8, 6), (2, 6, 8)]  # the conv kernel (8, 3, 2) is an 8×6 matrix: same stack
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        key = "momentum_buffer" if a.ndim >= 2 else "exp_avg"
        torch.testing.assert_close(oref.state[a][key], ofast.state[b][key], rtol=1e-6, atol=1e-7)


def test_matches_torch_optim_muon_up_to_its_bf16_newton_schulz():
    """torch.optim.Muon runs NS in bf16, so agreement is to ~1 %; a different momentum, Nesterov or scale
    convention would be off by far more."""
    for rule in ("original", "match_rms_adamw"):
        for shape in [(16, 32), (32, 16)]:
            start = _grads(shape, 1, seed=11, dtype=torch.float32)[0] * 0.05
            ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
            kw = dict(lr=0.02, weight_decay=0.5, momentum=0.9, nesterov=True, adjust_lr_fn=rule)
            o1, o2 = Muon([ours], **kw), torch.optim.Muon([theirs], **kw)
            for g in _grads(shape, 6, seed=9, dtype=torch.float32):
                for p, o in ((ours, o1), (theirs, o2)):
                    p.grad = g.clone()
                    o.step()
            err = (ours - theirs).norm() / (theirs - start).norm()
            assert err < 0.02, (rule, shape, float(err))


def test_adamw_part_matches_torch_adamw():
    gen = torch.Generator().manual_seed(10)
    b1 = torch.randn(7, dtype=F64, generator=gen).requires_grad_()
    b2 = b1.detach().clone().requires_grad_()
    W = torch.zeros(3, 3, dtype=F64, requires_grad=True)
    ours = Muon([W, b1], adamw_lr=0.01, adamw_betas=(0.8, 0.99), adamw_eps=1e-6, adamw_weight_decay=0.2)
    theirs = torch.optim.AdamW([b2], lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.2)
    for _ in range(20):
        g = torch.randn(7, dtype=F64, generator=gen)
        b1.grad, b2.grad, W.grad = g.clone(), g.clone(), torch.ones(3, 3, dtype=F64)
        ours.step()
        theirs.step()
    torch.testing.assert_close(b1, b2, rtol=1e-12, atol=1e-14)


def test_bad_hyperparameters_name_themselves():
    p = torch.zeros(3, 3, requires_grad=True)
    for kwargs, name in [({"momentum": 1.0}, "momentum"), ({"ns_steps": 0}, "ns_steps"),
                         ({"adjust_lr_fn": "spectral"}, "adjust_lr_fn"), ({"nesterov": 1}, "nesterov"),
                         ({"ns_coefficients": (1.0, 2.0)}, "ns_coefficients"), ({"adamw_lr": -1.0}, "adamw_lr"),
                         ({"adamw_betas": (0.9, 1.0)}, "adamw_betas"), ({"adamw_eps": -1.0}, "adamw_eps"),
                         ({"adamw_weight_decay": -0.1}, "adamw_weight_decay"), ({"impl": "compiled"}, "impl")]:
        with pytest.raises(ValueError, match=name):
            Muon([p], **kwargs)
    with pytest.raises(TypeError, match="cautious"):
        Muon([p], cautious=True)


def test_registry_record():
    info = optfit.optimizer_info("muon")
    assert info.cls is Muon and info.family == "matrix"
    d = info.defaults
    assert (d["lr"], d["momentum"], d["nesterov"], d["ns_steps"]) == (0.02, 0.95, True, 5)
    assert d["ns_coefficients"] == (3.4445, -4.7750, 2.0315) and d["adjust_lr_fn"] == "original"
    assert (d["adamw_lr"], d["adamw_betas"], d["adamw_eps"]) == (3e-4, (0.9, 0.95), 1e-10)
    assert orthogonalize is optfit.optim.orthogonalize

