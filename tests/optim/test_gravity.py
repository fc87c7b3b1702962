"""Gravity (catalogue A15): β̂ schedule, the saturating transform, the seeded random initial velocity."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import optfit
from optfit.optim import Gravity
from optfit.optim.gravity import beta_hat


def _feed(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def test_beta_hat_schedule_starts_at_one_half():
    got = [beta_hat(0.9, k) for k in (0, 1, 2, 10, 100)]
    assert got == pytest.approx([0.5, 0.6333, 0.7, 0.8333, 0.8922], abs=5e-4)


def test_first_two_steps_by_hand():
    lr, beta = 0.1, 0.9
    p = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = Gravity([p], lr=lr, alpha=0.0, beta=beta)  # α = 0: v₀ = 0
    g1 = torch.tensor([0.5, -2.0, 0.0], dtype=torch.float64)
    _feed(opt, [p], [g1])
    zeta1 = torch.tensor([0.5 / (1 + 1.0), -2.0 / (1 + 16.0), 0.0], dtype=torch.float64)  # max|g| = 2
    v1 = 0.5 * zeta1
    theta1 = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) - lr * v1
    torch.testing.assert_close(p.detach(), theta1, rtol=1e-14, atol=1e-15)

    g2 = torch.tensor([0.1, 0.3, -0.2], dtype=torch.float64)  # max|g| = 0.3
    _feed(opt, [p], [g2])
    zeta2 = g2 / (1 + (g2 * 0.3) ** 2)
    b = (beta * 1 + 1) / 3
    v2 = b * v1 + (1 - b) * zeta2
    torch.testing.assert_close(opt.state[p]["velocity"], v2, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(p.detach(), theta1 - lr * v2, rtol=1e-14, atol=1e-15)


def test_small_gradients_are_ema_momentum_sgd():
    lr, beta = 0.5, 0.8
    gen = torch.Generator().manual_seed(3)
    p = torch.zeros(50, dtype=torch.float64, requires_grad=True)
    opt = Gravity([p], lr=lr, alpha=0.0, beta=beta)
    theta, v = torch.zeros(50, dtype=torch.float64), torch.zeros(50, dtype=torch.float64)
    for k in range(20):
        g = torch.randn(50, generator=gen, dtype=torch.float64) * 1e-5
        _feed(opt, [p], [g])
        b = (beta * k + 1) / (k + 2)
        v = b * v + (1 - b) * g
        theta = theta - lr * v
    torch.testing.assert_close(p.detach(), theta, rtol=1e-8, atol=0)


def test_large_components_are_damped_like_inverse_cube():
    p = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = Gravity([p], lr=1.0, alpha=0.0)
    _feed(opt, [p], [torch.tensor([100.0, 1e-3], dtype=torch.float64)])
    zeta = opt.state[p]["velocity"] / 0.5
    assert zeta[0].item() == pytest.approx(100.0 / (1 + 100.0**4), rel=1e-12)  # ≈ 1/g³
    assert zeta[1].item() == pytest.approx(1e-3 / (1 + 0.1**2), rel=1e-12)


def test_zero_gradient_gives_no_nan_and_moves_by_half_the_initial_velocity():
    lr, alpha = 0.1, 0.01
    p = torch.zeros(20000, requires_grad=True)
    opt = Gravity([p], lr=lr, alpha=alpha)
    _feed(opt, [p], [torch.zeros(20000)])
    assert torch.isfinite(p).all()
    # v₁ = ½v₀ and ηv₀ ~ N(0, α²): the first displacement has std α/2
    disp = -p.detach() * 2
    assert disp.mean().abs() < 4 * alpha / math.sqrt(20000)
    assert disp.std().item() == pytest.approx(alpha, rel=0.03)
    for impl in ("reference", "foreach"):
        q = torch.ones(5, requires_grad=True)
        o = Gravity([q], alpha=0.0, impl=impl)
        for _ in range(3):
            _feed(o, [q], [torch.zeros(5)])
        assert torch.equal(q.detach(), torch.ones(5))


def _initial_velocity(params, **kw):
    opt = Gravity(params, **kw)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    return [opt.state[p]["velocity"] * 2 for p in params]  # zero gradient: v₁ = ½v₀


def test_initial_velocity_is_seeded_and_differs_between_parameters():
    def params():
        return [torch.zeros(100, requires_grad=True), torch.zeros(100, requires_grad=True)]

    a, b = _initial_velocity(params()), _initial_velocity(params())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])
    c = _initial_velocity(params(), seed=1)
    assert not torch.equal(a[0], c[0])
    # drawn in float64 on the CPU: the float32 velocity is the rounded float64 one
    d = _initial_velocity([torch.zeros(100, dtype=torch.float64, requires_grad=True),
                           torch.zeros(100, dtype=torch.float64, requires_grad=True)])
    assert torch.equal(d[0].float(), a[0])
    # std α/η
    big = _initial_velocity([torch.zeros(20000, requires_grad=True)], lr=0.5, alpha=0.02)[0]
    assert big.std().item() == pytest.approx(0.04, rel=0.03)


def test_zero_lr_at_the_first_step_gives_a_zero_initial_velocity():
    v = _initial_velocity([torch.zeros(10, requires_grad=True)], lr=0.0)[0]
    assert torch.equal(v, torch.zeros(10))


def test_runs_are_reproducible_and_resume_bit_exact():
    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 3)

    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 3, generator=gen)

    def run(model, opt, n):
        for _ in range(n):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

    m1 = make()
    o1 = optfit.create_optimizer(m1, "gravity")
    run(m1, o1, 3)
    sd, msd = copy.deepcopy(o1.state_dict()), {k: v.clone() for k, v in m1.state_dict().items()}
    run(m1, o1, 4)
    m2 = make()
    m2.load_state_dict(msd)
    o2 = optfit.create_optimizer(m2, "gravity")
    o2.load_state_dict(sd)
    run(m2, o2, 4)
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    m3 = make()
    o3 = optfit.create_optimizer(m3, "gravity")
    run(m3, o3, 7)
    for p, q in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("decay_mode", ["coupled", "decoupled", "independent"])
@pytest.mark.parametrize("cautious", [False, True])
def test_foreach_matches_reference_with_options(decay_mode, cautious):
    gen = torch.Generator().manual_seed(1)
    shapes = [(5, 3), (4,), (0,)]
    stream = [[torch.randn(s, generator=gen) * 3 for s in shapes] for _ in range(6)]
    out = []
    for impl in ("reference", "foreach"):
        ps = [torch.ones(s, requires_grad=True) for s in shapes]
        opt = Gravity(ps, weight_decay=0.1, decay_mode=decay_mode, cautious=cautious, impl=impl)
        for grads in stream:
            _feed(opt, ps, grads)
        out.append(ps)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_invalid_seed_and_alpha():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="seed"):
        Gravity(p, seed=-1)
    with pytest.raises(ValueError, match="alpha"):
        Gravity(p, alpha=-0.1)
    with pytest.raises(ValueError, match="beta"):
        Gravity(p, beta=1.0)
