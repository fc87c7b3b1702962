"""Lion and C-Lion: hand-computed steps and closed-form behaviour (catalogue B1, B2)."""

from __future__ import annotations

import pytest
import torch

import optfit

from .test_parity import SHAPES, _assert_close_runs, _run_impl
from .problems import step_updates



def _param(values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype).requires_grad_()


def _step(opt, p, grad):
    return step_updates(opt, p, [torch.as_tensor(grad, dtype=p.dtype)])[0]


def test_every_nonzero_move_is_exactly_lr():
    lr = 2.0 ** -7  # dyadic, and θ starts on the grid, so θ − η·sign(c) is exact
    gen = torch.Generator().manual_seed(0)
    p = torch.zeros(200, dtype=torch.float64, requires_grad=True)
    opt = optfit.create_optimizer([p], "lion", lr=lr)
    for t in range(20):
        g = torch.randn(200, generator=gen, dtype=torch.float64)
        if t == 3:
            g[:10] = 0.0  # c = β₁m ≠ 0 still moves by η
        d = _step(opt, p, g)
        assert set(d.abs().unique().tolist()) <= {0.0, lr}
        assert (d != 0).all()


def test_zero_interpolation_does_not_move():
    p = _param([1.0, 2.0])
    opt = optfit.create_optimizer([p], "lion", lr=0.1)
    d = _step(opt, p, [0.0, 3.0])  # m = 0, g = 0 → c = 0 → sign 0
    assert d.tolist() == pytest.approx([0.0, -0.1], abs=1e-15) and d[0].item() == 0.0


def test_interpolation_uses_old_momentum_and_momentum_uses_beta2():
    # step 1: m = 0 → c = 0.1·g₁; then m = 0.01·g₁.  step 2 with g₂ = −0.085:
    # correct c = 0.9·0.01 + 0.1·(−0.085) = +0.0005 (θ goes down); with m updated first it would be −0.000355.
    p = _param([0.0])
    opt = optfit.create_optimizer([p], "lion", lr=0.01, betas=(0.9, 0.99))
    assert _step(opt, p, [1.0]).item() == pytest.approx(-0.01)
    assert opt.state[p]["exp_avg"].item() == pytest.approx(0.01, rel=1e-12)
    assert _step(opt, p, [-0.085]).item() == pytest.approx(-0.01)
    assert opt.state[p]["exp_avg"].item() == pytest.approx(0.99 * 0.01 + 0.01 * -0.085, rel=1e-12)


def test_half_quadratic_walks_at_lr_then_stays_in_lr_band():
    lr = 0.01
    x = _param([1.0])
    opt = optfit.create_optimizer([x], "lion", lr=lr)
    xs = []
    for _ in range(600):
        x.grad = x.detach().clone()  # f = ½x²
        opt.step()
        xs.append(x.item())
    moves = torch.diff(torch.tensor([1.0] + xs, dtype=torch.float64))
    assert torch.allclose(moves[:100], torch.full((100,), -lr, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(moves.abs(), torch.full_like(moves, lr), atol=1e-12)  # always exactly η
    assert max(abs(v) for v in xs[-200:]) <= lr * (1 + 1e-9)  # after the momentum overshoot: ±η band


def test_decoupled_decay_is_applied_to_theta():
    p = _param([2.0, -4.0])
    opt = optfit.create_optimizer([p], "lion", lr=0.1, weight_decay=0.5)
    _step(opt, p, [1.0, 1.0])
    assert p.detach().tolist() == pytest.approx([2.0 * 0.95 - 0.1, -4.0 * 0.95 - 0.1], abs=1e-12)


def test_clion_equals_lion_when_signs_agree():
    gen = torch.Generator().manual_seed(3)
    g = torch.randn(50, generator=gen, dtype=torch.float64)
    a, b = torch.zeros(50, dtype=torch.float64, requires_grad=True), torch.zeros(50, dtype=torch.float64,
                                                                                requires_grad=True)
    oa, ob = optfit.create_optimizer([a], "lion", lr=0.01), optfit.create_optimizer([b], "clion", lr=0.01)
    for _ in range(5):  # a constant gradient: c always agrees with g
        _step(oa, a, g), _step(ob, b, g)
    assert torch.equal(a, b)


def test_clion_masks_disagreeing_coordinates_with_mean_rescale():
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = optfit.create_optimizer([p], "clion", lr=0.01)
    _step(opt, p, [1.0, 1.0, 1.0, 1.0])  # m = 0.01
    # c = 0.009 + 0.1·g: agrees with g = 1, disagrees with g = −0.085 (c = +0.0005)
    d = _step(opt, p, [1.0, 1.0, -0.085, -0.085])
    assert d.tolist() == pytest.approx([-0.02, -0.02, 0.0, 0.0], abs=1e-15)  # φ / mean φ = 2 on the kept half


@pytest.mark.parametrize("impl", ["foreach", pytest.param("compiled", marks=pytest.mark.compiled)])
@pytest.mark.parametrize("hp", [{"weight_decay": 0.1}, {"betas": (0.0, 0.5), "cautious": True},
                                {"weight_decay": 0.1, "decay_mode": "coupled"}])
def test_fast_paths_match_reference(impl, hp):
    ref = _run_impl("lion", "reference", SHAPES, torch.float32, 10, hp)
    fast = _run_impl("lion", impl, SHAPES, torch.float32, 10, hp)
    _assert_close_runs(ref, fast, rtol=1e-6, atol=1e-6)
