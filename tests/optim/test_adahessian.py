"""Catalogue D1 (AdaHessian): the Newton sanity step, the Hutchinson estimate it feeds on, spatial averaging,
update_period, the seeded generator in the state_dict, and the create_graph requirement."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optfit.optim import AdaHessian, _hvp, spatial_average

from .problems import TinyNet, backward


def _diag_step(opt, params, hs, steps=1):
    """Steps on f = ½ Σ h ⊙ θ² (Hessian diagonal h, exactly); returns the losses."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = sum(0.5 * (h * p * p).sum() for p, h in zip(params, hs))
        backward(loss, opt)
        losses.append(float(loss.detach()))
        opt.step()
    return losses


def test_one_step_is_a_newton_step_on_a_diagonal_quadratic():
    """D1 sanity: β₁ = 0, k = 1, ε = 0, λ = 0, η = 1 ⇒ θ₁ = θ₀ − dθ₀/|d| = 0."""
    d = torch.tensor([0.5, 2.0, 7.0, 1e-3], dtype=torch.float64)
    x = torch.tensor([1.0, -3.0, 0.25, 40.0], dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([x], lr=1.0, betas=(0.0, 0.999), eps=0.0, seed=5)
    _diag_step(opt, [x], [d])
    torch.testing.assert_close(x.detach(), torch.zeros(4, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hutchinson_estimate_of_a_known_diagonal_hessian(seed):
    """For diagonal H, z ⊙ Hz = diag H for every z: after step 1 v = (1−β₂)·d² exactly, whatever the seed;
    across two groups (one HVP covers both: the reference indexes gradients per group)."""
    d1 = torch.tensor([0.5, 2.0, -3.0], dtype=torch.float64)
    d2 = torch.tensor([[1.0, 4.0], [9.0, 0.25]], dtype=torch.float64)
    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(2, 2, dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([{"params": [x]}, {"params": [W], "lr": 0.01}], betas=(0.9, 0.5), spatial_average=False,
                     seed=seed)
    _diag_step(opt, [x, W], [d1, d2])
    assert torch.equal(opt.state[x]["exp_hessian_diag_sq"], 0.5 * d1**2)
    assert torch.equal(opt.state[W]["exp_hessian_diag_sq"], 0.5 * d2**2)


def test_the_estimate_is_the_hutchinson_sample_of_one_shared_z():
    """On a dense Hessian spanning two parameters, D = |z ⊙ Hz| with z drawn from the seeded generator in
    parameter order (so its mean over draws is diag H: tests/optim/test_hvp.py)."""
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    A = B @ B.T
    x = torch.randn(2, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([x, y], betas=(0.9, 0.0), seed=11)
    opt.zero_grad()
    z = torch.cat([x, y])
    backward(0.5 * z @ A @ z, opt)
    grads = [x.grad, y.grad]
    expected = _hvp.hutchinson_diagonal([x, y], grads, torch.Generator().manual_seed(11), retain_graph=True)
    opt.step()
    for p, e in zip([x, y], expected):
        torch.testing.assert_close(opt.state[p]["exp_hessian_diag_sq"], e.abs() ** 2, rtol=1e-12, atol=0)


@pytest.mark.parametrize("shape, dims", [((3,), None), ((3, 4), (1,)), ((2, 3, 4), (-1,)), ((2, 3, 2, 2), (2, 3)),
                                         ((2, 1, 2, 1, 2), None)])
def test_spatial_averaging(shape, dims):
    h = torch.arange(1.0, 1.0 + math.prod(shape), dtype=torch.float64).reshape(shape)
    avg = h if dims is None else h.mean(dim=dims, keepdim=True).expand(shape)
    assert spatial_average(h).shape == h.shape
    torch.testing.assert_close(spatial_average(h), avg)
    h = h * (-1.0) ** torch.arange(h.numel()).reshape(shape)  # mixed signs: D averages |z⊙Hz|, not z⊙Hz
    avg = avg if dims is None else h.abs().mean(dim=dims, keepdim=True).expand(shape)
    p = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([p], betas=(0.9, 0.0))
    _diag_step(opt, [p], [h])
    torch.testing.assert_close(opt.state[p]["exp_hessian_diag_sq"], avg**2, rtol=1e-14, atol=0)


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_hessian_power_and_first_step(power):
    d = torch.tensor([4.0, 0.25], dtype=torch.float64)
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([x], lr=0.1, betas=(0.0, 0.99), eps=1e-3, hessian_power=power)
    _diag_step(opt, [x], [d])
    g = d * torch.tensor([1.0, 2.0], dtype=torch.float64)
    want = torch.tensor([1.0, 2.0], dtype=torch.float64) - 0.1 * g / (d.abs() ** power + 1e-3)
    torch.testing.assert_close(x.detach(), want, rtol=1e-13, atol=0)


def test_update_period_estimates_every_k_steps_with_matching_bias_correction():
    """Hessian at steps 1, 4, 7 (generator draws only then); v̂ = v/(1−β₂ⁿ) stays d² exactly, so every step has
    the Newton denominator |d| (dividing by 1−β₂ᵗ instead would shrink it)."""
    d = torch.tensor([3.0, 0.5], dtype=torch.float64)
    x = torch.tensor([1.0, -1.0], dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([x], lr=0.1, betas=(0.0, 0.9), eps=0.0, update_period=3)
    drawn = []
    for t in range(1, 8):
        before, gen_before = x.detach().clone(), opt.generator.get_state()
        _diag_step(opt, [x], [d])
        drawn.append(not torch.equal(gen_before, opt.generator.get_state()))
        torch.testing.assert_close(x.detach() - before, -0.1 * d * before / d, rtol=1e-12, atol=0)
    assert drawn == [True, False, False, True, False, False, True]
    n = 3
    torch.testing.assert_close(opt.state[x]["exp_hessian_diag_sq"], (1 - 0.9**n) * d**2, rtol=1e-13, atol=0)


def test_coupled_decay_adds_its_curvature():
    d, lam = torch.tensor([2.0, -5.0], dtype=torch.float64), 0.5
    x = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([x], betas=(0.9, 0.0), weight_decay=lam, decay_mode="coupled")
    _diag_step(opt, [x], [d])
    torch.testing.assert_close(opt.state[x]["exp_hessian_diag_sq"], (d + lam) ** 2)


def _train(seed=0, steps=6, opt_seed=0, **kw):
    model = TinyNet(torch.float64, seed=seed)
    opt = AdaHessian(model.parameters(), lr=0.05, seed=opt_seed, **kw)
    for _ in range(steps):
        opt.zero_grad()
        backward(model(), opt)
        opt.step()
    return model, opt


def test_same_seed_same_trajectory_other_seed_differs():
    a, _ = _train(opt_seed=3)
    b, _ = _train(opt_seed=3)
    c, _ = _train(opt_seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_resume_is_bit_exact_including_the_generator():
    model, opt = _train(steps=3, opt_seed=7)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert isinstance(saved["optfit"]["generator"], torch.Tensor)
    for _ in range(3):
        opt.zero_grad()
        backward(model(), opt)
        opt.step()
    model2 = TinyNet(torch.float64)
    model2.load_state_dict(saved_model)
    opt2 = AdaHessian(model2.parameters(), lr=0.05, seed=123)  # the seed is overridden by the checkpoint
    opt2.load_state_dict(saved)
    for _ in range(3):
        opt2.zero_grad()
        backward(model2(), opt2)
        opt2.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    assert torch.equal(opt.generator.get_state(), opt2.generator.get_state())


def test_missing_create_graph_is_a_clear_error():
    model = TinyNet()
    opt = AdaHessian(model.parameters())
    model().backward()
    with pytest.raises(RuntimeError, match=r"create_graph=True"):
        opt.step()
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = model()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match=r"closure"):
        opt.step(closure)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)) and not opt.state


def test_plain_backward_is_enough_between_hessian_steps():
    model = TinyNet()
    opt = AdaHessian(model.parameters(), update_period=2)
    needs = []
    for _ in range(4):
        needs.append(opt.next_step_needs_graph())
        opt.zero_grad()
        loss = model()
        if needs[-1]:
            backward(loss, opt)
        else:
            loss.backward()
        opt.step()
    assert needs == [True, False, True, False]


def test_gradients_are_detached_after_the_step():
    model, opt = _train(steps=1)
    assert all(p.grad is not None and p.grad.grad_fn is None for p in model.parameters())


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_hessian_follows_the_policy(policy):
    """f = Σ|θ|^1.5 at θ = 0: finite gradient (0), infinite curvature."""
    x = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = AdaHessian([x], nonfinite=policy)
    gen = opt.generator.get_state()
    opt.zero_grad()
    backward((x.abs() ** 1.5).sum(), opt)
    assert torch.isfinite(x.grad).all()
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="Hessian estimate in parameter 0"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert torch.equal(x, torch.zeros(3, dtype=torch.float64)) and not opt.state[x]
    assert torch.equal(opt.generator.get_state(), gen)


@pytest.mark.parametrize("impl", ["foreach"])
def test_fast_path_matches_reference(impl):
    ref, _ = _train(steps=5, update_period=2, hessian_power=0.7, cautious=True, impl="reference")
    fast, _ = _train(steps=5, update_period=2, hessian_power=0.7, cautious=True, impl=impl)
    for p, q in zip(ref.parameters(), fast.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("bad", [{"hessian_power": 0.0}, {"hessian_power": 1.5}, {"update_period": 0},
                                 {"spatial_average": 1}, {"seed": 1.5}])
def test_invalid_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        AdaHessian([torch.zeros(2, requires_grad=True)], **bad)


@pytest.mark.compiled
def test_compiled_step_is_the_eager_step():
    """``torch.compile(opt.step)`` must not change the maths (traced, the hand-off of D was lost and v stayed 0:
    the largest weight went from 3.4 to 3.9e4 in one step)."""
    models = [TinyNet(), TinyNet()]
    opts = [AdaHessian(m.parameters(), lr=0.1) for m in models]
    steps = [opts[0].step, torch.compile(opts[1].step)]
    for _ in range(3):
        for model, opt, step in zip(models, opts, steps):
            opt.zero_grad()
            backward(model(), opt)
            step()
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)
