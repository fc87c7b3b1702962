"""SANIA (catalogue D4): the Polyak step size γ, the SQR preconditioners, global q, the ε floor."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import SANIA
from optfit.optim.sania import polyak_gamma


@pytest.mark.parametrize("c, gamma", [(0.1, 0.1056), (0.3, 0.3675), (0.49, 0.8586), (0.5, 1.0), (0.7, 1.0),
                                      (3.0, 1.0)])
def test_gamma_as_a_function_of_loss_over_q(c, gamma):
    assert polyak_gamma(c * 2.0, 2.0) == pytest.approx(gamma, abs=5e-5)


def test_gamma_edge_cases():
    assert polyak_gamma(0.0, 1.0) == 0.0  # at f* = 0 nothing moves
    assert polyak_gamma(-1.0, 1.0) == 0.0  # negative loss: the model's f* = 0 is violated
    assert polyak_gamma(1.0, 0.0) == 1.0  # zero gradient (d = 0 anyway)
    g = polyak_gamma(0.2, 1.0)
    assert 0.2 - g * 1.0 + 0.5 * g * g * 1.0 == pytest.approx(0.0, abs=1e-15)  # a root of f − γq + ½γ²q


def _problem(a, x0, **kw):
    x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
    a = torch.as_tensor(a, dtype=torch.float64)
    opt = SANIA([x], **kw)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (a * x * x).sum()
        loss.backward()
        return loss

    return x, opt, closure


@pytest.mark.parametrize("preconditioner", ["adam", "adagrad"])
def test_exact_newton_preconditioner_reaches_the_minimum_in_one_step(preconditioner):
    # at x = ±1/√a the first preconditioner g² equals the Hessian a: q = 2f, γ = 1, x₁ = x − g/a = 0
    a = torch.tensor([0.5, 2.0, 9.0], dtype=torch.float64)
    x, opt, closure = _problem(a, (torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64) / a.sqrt()).tolist(),
                               preconditioner=preconditioner, eps=1e-3)
    opt.step(closure)
    assert opt.last_gamma == pytest.approx(1.0, abs=1e-6)
    assert x.detach().abs().max() < 1e-7


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_two_adam_sqr_steps_by_hand(impl):
    a = torch.tensor([1.0, 4.0, 0.25], dtype=torch.float64)
    x0 = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    lr, b2, eps = 0.7, 0.9, 0.1
    x, opt, closure = _problem(a, x0.tolist(), lr=lr, beta2=b2, eps=eps, impl=impl)
    theta, s = x0.clone(), torch.zeros(3, dtype=torch.float64)
    for t in (1, 2):
        opt.step(closure)
        g = a * theta
        f = 0.5 * float((a * theta * theta).sum())
        s = b2 * s + (1 - b2) * g * g
        B = torch.clamp(s / (1 - b2**t), min=eps)
        d = g / B
        q = float((g * d).sum())
        gamma = 1 - math.sqrt(1 - 2 * f / q) if 2 * f <= q else 1.0
        assert opt.last_gamma == pytest.approx(gamma, rel=1e-12)
        theta = theta - lr * gamma * d
        torch.testing.assert_close(x.detach(), theta, rtol=1e-13, atol=1e-15)
        torch.testing.assert_close(opt.state[x]["exp_avg_sq"], s, rtol=1e-13, atol=0)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_adagrad_sqr_accumulates_and_eps_is_a_floor(impl):
    a = torch.tensor([1.0, 1.0], dtype=torch.float64)
    x, opt, closure = _problem(a, [2.0, 0.01], preconditioner="adagrad", eps=0.1, impl=impl)
    opt.step(closure)
    assert torch.equal(opt.state[x]["sum"], torch.tensor([4.0, 1e-4], dtype=torch.float64))
    g = torch.tensor([2.0, 0.01], dtype=torch.float64)
    d = g / torch.tensor([4.0, 0.1], dtype=torch.float64)  # max(ε, s), not s + ε
    f, q = 0.5 * (4.0 + 1e-4), float((g * d).sum())
    assert 2 * f > q and opt.last_gamma == 1.0
    x1 = torch.tensor([2.0, 0.01], dtype=torch.float64) - d
    torch.testing.assert_close(x.detach(), x1, rtol=1e-15, atol=0)
    opt.step(closure)  # the accumulator sums: s = g₁² + g₂²
    torch.testing.assert_close(opt.state[x]["sum"], g * g + x1 * x1, rtol=1e-15, atol=0)


def test_is_sqrt_divides_by_the_root():
    x, opt, closure = _problem([1.0], [3.0], preconditioner="adagrad", is_sqrt=True, lr=0.5)
    opt.step(closure)
    # g = 3, B = 9, d = g/√B = 1, q = 3, f = 4.5 > q/2 → γ = 1
    assert x.item() == pytest.approx(3.0 - 0.5, rel=1e-15)


def test_sqr_preconditioner_is_invariant_to_rescaling_the_coordinates():
    """f(θ) and h(u) = f(Du) from u₀ = D⁻¹θ₀ give θ_t = D u_t (with √B this fails)."""
    D = torch.tensor([10.0, 0.1, 3.0], dtype=torch.float64)
    A = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64)
    theta0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def run(scale, is_sqrt):
        u = (theta0 / scale).clone().requires_grad_()
        opt = SANIA([u], eps=1e-12, lr=0.5, is_sqrt=is_sqrt)

        def closure():
            opt.zero_grad()
            t = u * scale
            loss = 0.5 * t @ A @ t
            loss.backward()
            return loss

        for _ in range(10):
            opt.step(closure)
        return u.detach() * scale

    torch.testing.assert_close(run(D, False), run(torch.ones(3, dtype=torch.float64), False), rtol=1e-10, atol=0)
    assert not torch.allclose(run(D, True), run(torch.ones(3, dtype=torch.float64), True), rtol=1e-3)


def test_q_is_global_over_all_parameters_and_groups():
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(7, generator=gen, dtype=torch.float64) * 0.1  # small: below the ε floor, so γ < 1

    def run(layout):
        if layout == "one tensor":
            ps = [torch.zeros(7, dtype=torch.float64, requires_grad=True)]
        else:
            ps = [torch.zeros(4, dtype=torch.float64, requires_grad=True),
                  torch.zeros(3, dtype=torch.float64, requires_grad=True)]
        opt = SANIA([{"params": [ps[0]]}, {"params": [ps[1]]}] if layout == "two groups" else ps, lr=0.5)

        def closure():
            opt.zero_grad()
            loss = ((torch.cat(ps) - target) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
            assert opt.last_gamma < 0.5
        return torch.cat([p.detach() for p in ps])

    one = run("one tensor")
    torch.testing.assert_close(run("two tensors"), one, rtol=1e-14, atol=0)
    torch.testing.assert_close(run("two groups"), one, rtol=1e-14, atol=0)


def test_lr_is_a_multiplier_per_group():
    a = torch.tensor([1.0, 1.0], dtype=torch.float64)
    xs = [torch.tensor([1.0], dtype=torch.float64, requires_grad=True) for _ in range(2)]
    opt = SANIA([{"params": [xs[0]], "lr": 1.0}, {"params": [xs[1]], "lr": 0.25}])

    def closure():
        opt.zero_grad()
        loss = 0.5 * sum((x * x).sum() for x in xs) * a[0]
        loss.backward()
        return loss

    opt.step(closure)
    step0, step1 = 1.0 - xs[0].item(), 1.0 - xs[1].item()
    assert step0 > 0 and step1 == pytest.approx(0.25 * step0, rel=1e-14)


def test_negative_loss_does_not_move():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    opt = SANIA([x])

    def closure():
        opt.zero_grad()
        loss = (x * x).sum() - 100.0
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.last_gamma == 0.0 and torch.equal(x.detach(), torch.tensor([1.0, 2.0]))


def test_closure_is_required_and_must_return_the_loss():
    x = torch.zeros(2, requires_grad=True)
    x.grad = torch.ones(2)
    opt = SANIA([x])
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()

    def closure():
        opt.zero_grad()
        x.sum().backward()

    with pytest.raises(RuntimeError, match="return the loss"):
        opt.step(closure)


@pytest.mark.parametrize("impl", ["foreach", "reference"])
def test_bf16_parameters_with_float32_state_follow_the_float32_run(impl):
    gen = torch.Generator().manual_seed(0)
    target = torch.randn(64, generator=gen)

    def run(dtype, state_dtype):
        x = torch.zeros(64, dtype=dtype, requires_grad=True)
        opt = SANIA([x], lr=0.5, state_dtype=state_dtype, impl=impl)

        def closure():
            opt.zero_grad()
            loss = ((x.float() - target) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        return x.detach().float()

    ref = run(torch.float32, None)
    low = run(torch.bfloat16, "float32")
    assert (ref - target).norm() < 0.9 * target.norm()  # it moved towards the target
    torch.testing.assert_close(low, ref, rtol=2e-2, atol=2e-2)


def test_invalid_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    for kw, name in [({"preconditioner": "shampoo"}, "preconditioner"), ({"beta2": 1.0}, "beta2"),
                     ({"eps": 0.0}, "eps"), ({"is_sqrt": 1}, "is_sqrt"), ({"cautious": True}, "cautious")]:
        with pytest.raises(ValueError, match=name):
            SANIA(p, **kw)
