"""Catalogue D3 (FOSI): the Newton-on-the-subspace sanity step, exact equality with the base optimizer when no
subspace is in use, the eigen-estimates, the velocity carried across refreshes, and argument checks."""

from __future__ import annotations

import copy

import pytest
import torch

import optfit
from optfit.optim import FOSI

from .problems import Quadratic, TinyNet, backward

LAM = torch.tensor([10.0, 8.0, 6.0, 4.0, 3.0, 2.0, 1.0, 0.5], dtype=torch.float64)


def _quad_step(opt, x, A):
    opt.zero_grad()
    backward(0.5 * x @ A @ x, opt)
    opt.step()


def _newton_setup(base="sgd", **kw):
    x0 = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0, 2.0, 0.3, -0.7], dtype=torch.float64)
    x = x0.clone().requires_grad_()
    hp = dict(top_k=2, alpha=1.0, momentum=0.0, warmup=1, update_freq=1)
    hp.update(kw)
    return x0, x, FOSI([x], lr=0.1, base=base, **hp)


def test_one_step_zeroes_the_top_k_and_scales_the_base_elsewhere():
    """D3 sanity on f = ½xᵀdiag(λ)x, k = 2, α = 1, no momentum, SGD base: the top-2 coordinates reach 0; the
    others move as SGD by s = clip(λ₁/λ₂, 1, 3) = 1.25 times its step."""
    x0, x, opt = _newton_setup(lr_clip=3.0)
    _quad_step(opt, x, torch.diag(LAM))
    torch.testing.assert_close(opt.eigenvalues, LAM[:2], rtol=1e-10, atol=0)
    got = x.detach()
    torch.testing.assert_close(got[:2], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(got[2:], x0[2:] - 1.25 * 0.1 * LAM[2:] * x0[2:], rtol=1e-12, atol=1e-14)


def test_with_adam_the_rest_moves_exactly_as_adam_on_the_projected_gradient():
    x0, x, opt = _newton_setup(base="adam")  # lr_clip defaults to 1 for an adaptive base: s = 1
    _quad_step(opt, x, torch.diag(LAM))
    g2 = LAM * x0
    g2[:2] = 0
    y = x0.clone().requires_grad_()
    adam = optfit.optim.Adam([y], lr=0.1)
    y.grad = g2
    adam.step()
    torch.testing.assert_close(x.detach()[:2], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(x.detach()[2:], y.detach()[2:], rtol=1e-12, atol=1e-14)


def test_rotated_quadratic_top_k_components_vanish():
    gen = torch.Generator().manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))
    A = Q @ torch.diag(LAM) @ Q.T
    _, x, opt = _newton_setup(top_k=3)
    _quad_step(opt, x, A)
    along = Q[:, :3].T @ x.detach()
    torch.testing.assert_close(along, torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-10)


def _trajectory(opt, model, steps):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        backward(model(), opt)
        opt.step()
        out.append([p.detach().clone() for p in model.parameters()])
    return out


@pytest.mark.parametrize("kw", [{"top_k": 0}, {"warmup": 6, "update_freq": 3}])
def test_without_a_subspace_it_is_exactly_the_base(kw):
    """k = ℓ = 0 throughout, and every step before the first estimate: bit-equal to optfit Adam."""
    a, b = TinyNet(), TinyNet()
    fosi = optfit.create_optimizer(a, "fosi", lr=0.02, **kw)
    adam = optfit.create_optimizer(b, "adam", lr=0.02)
    ours, theirs = _trajectory(fosi, a, 8), _trajectory(adam, b, 8)
    same = [all(torch.equal(p, q) for p, q in zip(s, t)) for s, t in zip(ours, theirs)]
    assert same == ([True] * 8 if "top_k" in kw else [True] * 5 + [False] * 3)


def test_eigenvalue_estimates_on_the_conformance_quadratic():
    model = Quadratic(torch.float64)
    opt = optfit.create_optimizer(model, "fosi", top_k=3, bottom_l=1, update_freq=1, warmup=1)
    opt.zero_grad()
    backward(model(), opt)
    opt.step()
    spectrum = torch.cat([model.a, model.b.flatten()]).sort(descending=True).values
    want = torch.cat([spectrum[:3], spectrum[-1:]])
    # the top (10, 9, 8) is well separated; the bottom (1, 1, 1.16, …) is clustered: 16 Lanczos steps get it to ~1e-4
    torch.testing.assert_close(opt.eigenvalues[:3], want[:3], rtol=1e-8, atol=0)
    torch.testing.assert_close(opt.eigenvalues[3:], want[3:], rtol=1e-3, atol=0)
    assert opt.state[model.x]["fosi_V"].shape == (4, 10) and opt.state[model.W]["fosi_V"].shape == (4, 4, 5)


def test_velocity_is_carried_across_refreshes():
    """On a fixed quadratic every refresh finds the same subspace (eigenvectors up to sign): refreshing at every
    step must give the same trajectory as refreshing once, momentum included."""
    runs = []
    for freq in (1, 1000):
        _, x, opt = _newton_setup(base="sgd", alpha=0.5, momentum=0.8, update_freq=freq, seed=freq)
        for _ in range(6):
            _quad_step(opt, x, torch.diag(LAM))
        runs.append(x.detach())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("style, first", [("ema", 0.2), ("heavy-ball", 1.0)])
def test_momentum_styles(style, first):
    """First step from u = 0: ema gives u = (1−β)c, heavy-ball u = c; the Newton step scales with it."""
    x0, x, opt = _newton_setup(alpha=1.0, momentum=0.8, momentum_style=style)
    _quad_step(opt, x, torch.diag(LAM))
    torch.testing.assert_close(x.detach()[:2], (1 - first) * x0[:2], rtol=1e-10, atol=1e-12)


def test_missing_create_graph_is_a_clear_error_on_refresh_steps_only():
    model = TinyNet()
    opt = optfit.create_optimizer(model, "fosi", update_freq=3)
    for _ in (1, 2):  # before the first refresh a plain backward is enough
        assert not opt.next_step_needs_graph()
        opt.zero_grad()
        model().backward()
        opt.step()
    assert opt.next_step_needs_graph()
    opt.zero_grad()
    model().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"step 3.*create_graph=True"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
    assert not opt.state_dict()["optfit"]["fosi"]["has_basis"]


def test_resume_across_a_refresh_restores_the_lanczos_generator():
    model = TinyNet()
    opt = optfit.create_optimizer(model, "fosi", lr=0.02, update_freq=3, seed=1)
    _trajectory(opt, model, 2)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    rest = _trajectory(opt, model, 4)  # refreshes at steps 3 and 6
    model2 = TinyNet()
    model2.load_state_dict(saved_model)
    opt2 = optfit.create_optimizer(model2, "fosi", lr=0.02, update_freq=3, seed=99)
    opt2.load_state_dict(saved)
    rest2 = _trajectory(opt2, model2, 4)
    assert all(torch.equal(p, q) for p, q in zip(rest[-1], rest2[-1]))
    assert opt2.param_groups is opt2.base.param_groups and opt2.state is opt2.base.state


def test_base_weight_decay_is_off_unless_asked():
    p = [torch.zeros(3, requires_grad=True)]
    assert FOSI(p, base="adamw").base.param_groups[0]["weight_decay"] == 0.0
    assert FOSI(p, base="adamw", base_kwargs={"weight_decay": 0.1}).base.param_groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("bad, match", [({"base": "nope"}, "base"), ({"base": "sania"}, "base"),
                                        ({"base": "adahessian"}, "base"), ({"top_k": -1}, "top_k"),
                                        ({"update_freq": 0}, "update_freq"), ({"lr_clip": 0.5}, "lr_clip"),
                                        ({"momentum_style": "nesterov"}, "momentum_style"),
                                        ({"base_kwargs": {"lr": 0.1}, "lr": 0.2}, "base_kwargs"),
                                        ({"base_kwargs": {"betas": (2.0, 0.9)}}, "betas")])
def test_invalid_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        FOSI([torch.zeros(3, requires_grad=True)], **bad)


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_hessian_follows_the_policy(policy):
    """f = Σ|x|^1.5 at x = 0: finite gradient (0), infinite curvature, met by the Lanczos refresh."""
    x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = FOSI([x], top_k=1, warmup=1, nonfinite=policy)
    gen = opt.generator.get_state()
    backward((x.abs() ** 1.5).sum(), opt)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="Lanczos"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert torch.equal(x, torch.zeros(4, dtype=torch.float64)) and not opt.state[x]
    assert torch.equal(opt.generator.get_state(), gen) and not opt.state_dict()["optfit"]["fosi"]["has_basis"]


def test_param_groups_and_defaults_are_the_bases_and_fosis_own_settings_are_attributes():
    """A group's hyperparameters are the base's and drive it (LR schedulers, cycle_momentum); FOSI's own β
    (the velocity's momentum), α, k… are optimizer-wide attributes read at every step, so none of them sits in
    ``defaults`` pretending to be a per-group key that changes nothing."""
    p = [torch.zeros(3, requires_grad=True)]
    adam_based = FOSI(p, base="adam")
    assert adam_based.defaults is adam_based.base.defaults
    assert not {"momentum", "top_k", "alpha", "base"} & set(adam_based.defaults)
    runs = {}
    for change in (None, "group", "attribute"):
        _, x, opt = _newton_setup(base="sgd", momentum=0.5, base_kwargs={"momentum": 0.9})
        for t in range(6):
            if t == 3 and change == "group":
                opt.param_groups[0]["momentum"] = 0.0  # SGD's momentum: the base's part of the step
            if t == 3 and change == "attribute":
                opt.momentum = 0.0  # FOSI's velocity: the Newton part
            _quad_step(opt, x, torch.diag(LAM))
        runs[change] = x.detach().clone()
    assert not torch.equal(runs[None], runs["group"]) and not torch.equal(runs[None], runs["attribute"])


def test_maximize_is_newton_on_minus_f():
    """maximize=True on f equals the default on −f, Lanczos included (the Hessian there is −H)."""
    A = torch.diag(LAM)
    runs = []
    for sign, maximize in ((1.0, True), (-1.0, False)):
        _, x, opt = _newton_setup(base="adam", maximize=maximize)
        for _ in range(4):
            opt.zero_grad()
            backward(sign * (-0.5 * x @ A @ x), opt)  # f = −½xᵀAx has its maximum at 0
            opt.step()
        runs.append(x.detach().clone())
    assert torch.equal(runs[0], runs[1])
    # Newton on the top-2 eigenpairs of −f's Hessian A (λ = 10, 8: coordinates 0, 1) puts them at the maximum
    torch.testing.assert_close(runs[0][:2], torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
