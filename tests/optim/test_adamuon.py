"""AdaMuon: RMS 0.2·lr exactly, hand-computed first step, sign invariance, constant-gradient limit (catalogue C2)."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import AdaMuon, orthogonalize

from .problems import run_impls, step_updates, updates_under_constant_gradient

F64 = torch.float64


def _grads(shape, n, seed=0, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(n)]


def _rms(t):
    return t.pow(2).mean().sqrt().item()


@pytest.mark.parametrize("shape", [(7, 5), (5, 7), (4, 3, 2, 2)])
@pytest.mark.parametrize("target", [0.2, 0.5])
def test_update_rms_is_target_times_lr_exactly(shape, target):
    lr = 0.01
    p = torch.zeros(shape, dtype=F64, requires_grad=True)
    opt = AdaMuon([p], lr=lr, weight_decay=0.0, target_rms=target)
    for d in step_updates(opt, p, _grads(shape, 8, seed=1)):
        assert _rms(d) / lr == pytest.approx(target, rel=1e-9)


def test_first_step_by_hand():
    lr, beta, eps = 0.01, 0.95, 1e-8
    g = _grads((6, 4), 1, seed=2)[0]
    p = torch.zeros(6, 4, dtype=F64, requires_grad=True)
    opt = AdaMuon([p], lr=lr, momentum=beta, eps=eps, weight_decay=0.0)
    d = step_updates(opt, p, [g])[0]
    # M = (1−β)g, U = (1−β²)g → sign(U) = sign(g); V = (1−β)O²; Ô = O/(√V + ε), rescaled to RMS 0.2
    O = orthogonalize(g.sign())
    torch.testing.assert_close(opt.state[p]["exp_avg_sq"], (1 - beta) * O * O, rtol=1e-14, atol=0)
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], (1 - beta) * g, rtol=1e-14, atol=0)
    hat = O / ((1 - beta) ** 0.5 * O.abs() + eps)
    expected = -lr * hat * 0.2 * math.sqrt(24) / (hat.norm() + eps)
    torch.testing.assert_close(d, expected, rtol=1e-12, atol=0)
    # so the first step is a ±0.2·lr pattern: sign(NS(sign(g)))
    torch.testing.assert_close(d, -0.2 * lr * O.sign(), rtol=1e-6, atol=0)


def test_update_is_invariant_to_the_gradient_scale():
    """Sign stabilisation: scaling every gradient by the same positive factor changes nothing."""
    grads = _grads((5, 8), 6, seed=3)
    runs = []
    for factor in (1.0, 1e4):
        p = torch.zeros(5, 8, dtype=F64, requires_grad=True)
        runs.append(step_updates(AdaMuon([p], lr=0.01, weight_decay=0.0), p, [g * factor for g in grads]))
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)


def test_constant_gradient_gives_a_plus_minus_point_two_pattern():
    """Catalogue C2 sanity: with a constant gradient V → O², so Ô → 0.2·sign(O)."""
    lr = 0.01
    g = _grads((6, 9), 1, seed=4)[0]
    p = torch.zeros(6, 9, dtype=F64, requires_grad=True)
    d = updates_under_constant_gradient(AdaMuon([p], lr=lr, weight_decay=0.0), p, g, 300)[-1]
    torch.testing.assert_close(d.abs(), torch.full_like(d, 0.2 * lr), rtol=1e-4, atol=0)


def test_decoupled_decay():
    lr, wd = 0.01, 0.5
    g = _grads((4, 4), 1, seed=5)[0]
    a = torch.ones(4, 4, dtype=F64, requires_grad=True)
    b = torch.ones(4, 4, dtype=F64, requires_grad=True)
    da = step_updates(AdaMuon([a], lr=lr, weight_decay=wd), a, [g])[0]
    db = step_updates(AdaMuon([b], lr=lr, weight_decay=0.0), b, [g])[0]
    torch.testing.assert_close(da, db - lr * wd, rtol=0, atol=1e-15)


def test_batched_equals_unbatched():
    shapes = [(6, 4)] * 3 + [(4, 6)] * 2 + [(6, 2, 2)]
    out = run_impls(lambda params, impl: AdaMuon(params, lr=0.02, impl=impl), shapes, seed=6)
    (ref, oref), (fast, ofast) = out["reference"], out["foreach"]
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
        for key in ("momentum_buffer", "exp_avg_sq"):
            torch.testing.assert_close(oref.state[a][key], ofast.state[b][key], rtol=1e-5, atol=1e-7)


def test_zero_gradient_is_a_zero_step():
    p = torch.ones(3, 5, dtype=F64, requires_grad=True)
    d = step_updates(AdaMuon([p], lr=0.1, weight_decay=0.0), p, [torch.zeros(3, 5, dtype=F64)])[0]
    assert torch.equal(d, torch.zeros_like(d))


def test_bad_hyperparameters_name_themselves():
    p = torch.zeros(3, 3, requires_grad=True)
    for kwargs, name in [({"target_rms": 0.0}, "target_rms"), ({"eps": -1.0}, "eps"), ({"momentum": -0.1}, "momentum")]:
        with pytest.raises(ValueError, match=name):
            AdaMuon([p], **kwargs)


def test_registry_record():
    info = optfit.optimizer_info("adamuon")
    d = info.defaults
    assert info.cls is AdaMuon and info.family == "matrix" and info.state_tensors == 2
    assert (d["lr"], d["momentum"], d["eps"], d["target_rms"], d["adamw_lr"]) == (6e-4, 0.95, 1e-8, 0.2, None)
