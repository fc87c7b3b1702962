"""Sophia: the clipped step by hand, the Hutchinson estimate (one shared z; its expectation diag H on a quadratic
with known Hessian), the refresh period, the plain-closure finite difference, the Gauss-Newton-Bartlett hook (by
hand and in expectation), float64 trajectories against pytorch_optimizer's SophiaH, and the error paths."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as nnf
from torch import nn

from optfit.optim import Sophia

from .problems import Smooth


def _backward(loss, create_graph=True):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        loss.backward(create_graph=create_graph)


def _quadratic(seed=0):
    """x (2,), y (3,) and f = ½ zᵀAz, z = (x, y), with a dense SPD Hessian A."""
    gen = torch.Generator().manual_seed(seed)
    B = torch.randn(5, 5, generator=gen, dtype=torch.float64)
    A = B @ B.T + torch.eye(5, dtype=torch.float64)
    x = torch.randn(2, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, generator=gen, dtype=torch.float64, requires_grad=True)
    return x, y, A, lambda: 0.5 * torch.cat([x, y]) @ A @ torch.cat([x, y])


def _closure(opt, f, create_graph=True):
    def closure():
        opt.zero_grad()
        loss = f()
        _backward(loss, create_graph)
        return loss
    return closure


def _h(opt, params):
    return torch.cat([opt.state[p]["exp_hessian_diag"].reshape(-1) for p in params])


# --------------------------------------------------------------------------------------------- the update
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_first_step_by_hand_clipped_unclipped_and_negative_curvature(impl):
    """f = ½Σdθ², Rademacher z: ĥ = d exactly. m = (1−β₁)dθ, h = (1−β₂)d, Δθ = −ηλθ − η clip(m/max(γh, ε), 1):
    coordinate 0 unclipped, 1 clipped, 2 negative curvature (max picks ε: a sign step), 3 small curvature."""
    d = torch.tensor([1.0, 100.0, -2.0, 1e-3], dtype=torch.float64)
    theta0 = torch.tensor([2.0, 10.0, 1.0, 3.0], dtype=torch.float64)
    x = theta0.clone().requires_grad_()
    eta, lam, b1, b2, gamma, eps = 0.5, 0.1, 0.9, 0.5, 1.0, 1e-12
    opt = Sophia([x], lr=eta, betas=(b1, b2), gamma=gamma, eps=eps, weight_decay=lam, distribution="rademacher",
                 impl=impl)
    opt.step(_closure(opt, lambda: 0.5 * (d * x * x).sum()))
    m, h = (1 - b1) * d * theta0, (1 - b2) * d
    ratio = (m / torch.clamp(gamma * h, min=eps)).clamp(-1, 1)
    assert ratio.tolist() == pytest.approx([0.4, 1.0, -1.0, 0.6])
    torch.testing.assert_close(x.detach(), theta0 * (1 - eta * lam) - eta * ratio, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(opt.state[x]["exp_hessian_diag"], h, rtol=0, atol=0)


def test_the_hutchinson_sample_is_z_times_hz_with_one_shared_gaussian_z():
    x, y, A, f = _quadratic(1)
    opt = Sophia([x, y], lr=0.0, betas=(0.9, 0.0), update_period=1, seed=7)
    opt.step(_closure(opt, f))
    gen = torch.Generator().manual_seed(7)
    z = torch.cat([torch.randn(n, generator=gen, dtype=torch.float64) for n in (2, 3)])
    torch.testing.assert_close(_h(opt, [x, y]), z * (A @ z), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_hutchinson_expectation_is_the_hessian_diagonal(distribution):
    """With β₂ = 0 and k = 1, h after each step is one sample z ⊙ Az; the mean of 3000 is diag A within 5 standard
    errors (Var = 2A_ii² + Σ_{j≠i}A_ij² for Gaussian z, Σ_{j≠i}A_ij² for Rademacher)."""
    x, y, A, f = _quadratic(2)
    opt = Sophia([x, y], lr=0.0, betas=(0.9, 0.0), update_period=1, distribution=distribution, seed=3)
    closure = _closure(opt, f)
    samples = []
    for _ in range(3000):
        opt.step(closure)
        samples.append(_h(opt, [x, y]))
    mean = torch.stack(samples).mean(0)
    off = (A**2).sum(1) - A.diag() ** 2
    var = off + (2 * A.diag() ** 2 if distribution == "gaussian" else 0)
    assert ((mean - A.diag()).abs() <= 5 * (var / 3000).sqrt() + 1e-12).all(), (mean, A.diag())


def test_the_estimate_is_refreshed_every_k_steps_only():
    x, y, A, f = _quadratic(3)
    opt = Sophia([x, y], lr=0.01, update_period=3)
    closure = _closure(opt, f)
    seen, due = [], []
    for _ in range(7):
        due.append(opt.next_step_needs_graph())
        opt.step(closure)
        seen.append(_h(opt, [x, y]).clone())
    assert due == [True, False, False, True, False, False, True]
    changed = [not torch.equal(a, b) for a, b in zip(seen, seen[1:])]
    assert changed == [False, False, True, False, False, True]


def test_a_plain_closure_uses_a_finite_difference_exact_on_quadratics():
    """No create_graph: Hz from one extra closure call at θ + δz; on a quadratic it matches the autograd path."""
    runs = []
    for create_graph in (True, False):
        x, y, A, f = _quadratic(4)
        opt = Sophia([x, y], lr=0.05, update_period=2, seed=5)
        closure = _closure(opt, f, create_graph)
        for _ in range(30):
            opt.step(closure)
        runs.append((torch.cat([x.detach(), y.detach()]), _h(opt, [x, y])))
    (p_graph, h_graph), (p_fd, h_fd) = runs
    torch.testing.assert_close(h_fd, h_graph, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(p_fd, p_graph, rtol=1e-6, atol=1e-8)


def test_the_finite_difference_restores_theta_and_the_gradients():
    x, y, A, f = _quadratic(5)
    opt = Sophia([x, y], lr=0.0)
    closure = _closure(opt, f, create_graph=False)
    theta = [x.detach().clone(), y.detach().clone()]
    loss = opt.step(closure)
    assert float(loss.detach()) == pytest.approx(float(0.5 * torch.cat(theta) @ A @ torch.cat(theta)))
    assert torch.equal(x, theta[0]) and torch.equal(y, theta[1])
    torch.testing.assert_close(torch.cat([x.grad, y.grad]), A @ torch.cat(theta), rtol=1e-14, atol=1e-14)


# -------------------------------------------------------------------------------------------- Sophia-G
def _linear_softmax(seed=0, rows=6, features=3, classes=4):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(rows, features, generator=gen, dtype=torch.float64)
    W = torch.randn(features, classes, generator=gen, dtype=torch.float64, requires_grad=True)
    return X, W


def test_gnb_estimate_by_hand():
    """ĥ = B ĝ⊙ĝ, ĝ = ∇ mean CE(XW, ŷ), ŷ ~ softmax(XW) from the seeded generator."""
    X, W = _linear_softmax()
    opt = Sophia([W], lr=0.0, betas=(0.9, 0.0), estimator="gnb", seed=4)
    assert opt.hessian_due() and not opt.next_step_needs_graph()
    logits = X @ W
    opt.update_hessian_gnb(logits)
    W.grad = torch.zeros_like(W)
    opt.step()
    labels = torch.multinomial(torch.softmax(logits.detach().float(), -1), 1,
                               generator=torch.Generator().manual_seed(4)).squeeze(-1)
    (g,) = torch.autograd.grad(nnf.cross_entropy(X @ W, labels), [W])
    torch.testing.assert_close(opt.state[W]["exp_hessian_diag"], 6 * g * g, rtol=1e-13, atol=1e-15)
    assert logits.grad_fn is not None  # the graph is kept: the training loss can still be back-propagated
    nnf.cross_entropy(logits, torch.zeros(6, dtype=torch.long)).backward()


def test_gnb_expectation_is_the_gauss_newton_diagonal():
    """E[B ĝ⊙ĝ] = (1/B) Σ_b x_bi² p_bk(1 − p_bk) for W_ik of a linear softmax model (the labels' draws are
    independent and E_ŷ[∇ℓ_b] = 0); the mean of 2000 estimates is within 5 standard errors of it."""
    X, W = _linear_softmax(1)
    opt = Sophia([W], lr=0.0, betas=(0.9, 0.0), estimator="gnb", seed=9)
    samples = []
    for _ in range(2000):
        opt.update_hessian_gnb(X @ W)
        W.grad = torch.zeros_like(W)
        opt.step()
        samples.append(opt.state[W]["exp_hessian_diag"].clone())
    stack = torch.stack(samples)
    p = torch.softmax(X @ W.detach(), -1)
    exact = (X.T**2) @ (p * (1 - p)) / X.shape[0]
    se = stack.std(0) / 2000**0.5
    assert ((stack.mean(0) - exact).abs() <= 5 * se + 1e-12).all()


def test_gnb_steps_never_estimate_by_themselves():
    x, y, A, f = _quadratic(6)
    opt = Sophia([x, y], lr=0.01, estimator="gnb")
    opt.step(_closure(opt, f, create_graph=False))
    assert torch.equal(_h(opt, [x, y]), torch.zeros(5, dtype=torch.float64))


# --------------------------------------------------------------------------------------- pytorch_optimizer
SETTINGS = [
    ("defaults", {}, [{}]),
    ("betas-gamma-period-decay", {"lr": 0.02, "betas": (0.9, 0.5), "gamma": 0.5, "update_period": 2,
                                  "weight_decay": 0.1}, [{}]),
    ("two-groups", {"lr": 0.02, "gamma": 0.02, "update_period": 1, "eps": 1e-8}, [{}, {"lr": 0.005}]),
]


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("setting, kwargs, group_extras", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_matches_pytorch_optimizer_sophiah_in_float64(setting, kwargs, group_extras, impl):
    """SophiaH steps lr·clip(m/max(h, eps), p): ours with lr = η/γ, p = γ, eps = ε/γ, weight_decay = λγ; both draw
    z ~ N(0, I) per parameter in order (theirs from torch's global generator, seeded alike). 60 steps."""
    po = pytest.importorskip("pytorch_optimizer")
    hp = {"lr": 6e-4, "betas": (0.96, 0.99), "gamma": 0.01, "eps": 1e-12, "update_period": 10, "weight_decay": 0.0,
          **kwargs}
    gamma = hp["gamma"]

    def groups(model, scale=1.0):
        ps = list(model.ps)
        extras = [{k: v * scale for k, v in e.items()} for e in group_extras]
        if len(extras) == 1:
            return [{"params": ps, **extras[0]}]
        return [{"params": ps[:2], **extras[0]}, {"params": ps[2:], **extras[1]}]

    ours_model, theirs_model = Smooth(7), Smooth(7)
    ours = Sophia(groups(ours_model), seed=11, impl=impl, **hp)
    theirs = po.SophiaH(groups(theirs_model, 1 / gamma), lr=hp["lr"] / gamma, betas=hp["betas"],
                        weight_decay=hp["weight_decay"] * gamma, p=gamma, eps=hp["eps"] / gamma,
                        update_period=hp["update_period"], hessian_distribution="gaussian")
    torch.manual_seed(11)
    unclipped = 0
    for t in range(60):
        for model, opt in ((ours_model, ours), (theirs_model, theirs)):
            opt.zero_grad()
            _backward(model())
            opt.step()
        for p, q in zip(ours_model.ps, theirs_model.ps):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12, msg=f"step {t + 1}")
            st = ours.state[p]
            unclipped += int((st["exp_avg"].abs() < gamma * st["exp_hessian_diag"]).sum())
    assert setting == "defaults" or unclipped > 100, "h must matter (coordinates off the clip) for the test to see it"


# ---------------------------------------------------------------------------------------------- errors
def test_a_hessian_step_without_graph_or_closure_raises():
    x, y, A, f = _quadratic(7)
    opt = Sophia([x, y])
    f().backward()
    with pytest.raises(RuntimeError, match="create_graph"):
        opt.step()
    assert opt.state[x] == {} or "exp_avg" not in opt.state[x]


@pytest.mark.parametrize("kwargs, name", [({"estimator": "lbfgs"}, "estimator"),
                                          ({"distribution": "cauchy"}, "distribution"), ({"gamma": -1.0}, "gamma"),
                                          ({"update_period": 0}, "update_period"), ({"seed": 1.5}, "seed")])
def test_invalid_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Sophia([nn.Parameter(torch.zeros(2))], **kwargs)


def test_update_hessian_checks_its_input_and_nonfinite_estimates_follow_the_policy():
    x = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = Sophia([x], lr=0.1, estimator="gnb", nonfinite="skip")
    with pytest.raises(ValueError, match="estimates"):
        opt.update_hessian([])
    with pytest.raises(ValueError, match="estimates"):
        opt.update_hessian([torch.ones(2)])
    with pytest.raises(ValueError, match="logits"):
        opt.update_hessian_gnb(torch.zeros(2, 3))
    opt.update_hessian([torch.tensor([1.0, float("nan"), 1.0], dtype=torch.float64)])
    x.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert opt.skipped_steps == 1 and torch.equal(x, torch.ones(3, dtype=torch.float64))
    opt.step()  # the estimate was consumed: this step runs
    assert opt.skipped_steps == 1 and not torch.equal(x, torch.ones(3, dtype=torch.float64))
    strict = Sophia([x], estimator="gnb")
    strict.update_hessian([torch.tensor([1.0, float("inf"), 1.0], dtype=torch.float64)])
    with pytest.raises(FloatingPointError, match="Hessian estimate"):
        strict.step()
