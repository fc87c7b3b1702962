"""Prodigy: step-by-step parity with the authors' package (prodigyopt), a plain-Python oracle of the paper's
algorithm (where the package differs: the ε term and β₁ = 0), d's monotonicity and scale, the param-group rules."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import Prodigy

from .distance_trajectories import assert_same_trajectory, trajectory

ONE_GROUP = [([0, 1, 2, 3], {})]
# two active groups with their own weight decay, and a frozen one (lr = 0: the package's only other lr)
THREE_GROUPS = [([0, 3], {}), ([2], {"weight_decay": 0.2}), ([1], {"lr": 0.0})]
# ε → 0: the ε term is the one place the paper (d_k·ε, implemented here) and the package (d_{k+1}·ε) differ;
# test_epsilon_term_is_the_papers pins it
EPS0 = {"eps": 1e-30}

PARITY = {
    "defaults": (ONE_GROUP, dict(EPS0), 1e-11),
    "decoupled-bias-correction-betas-dcoef-slice": (
        ONE_GROUP, dict(EPS0, weight_decay=0.1, use_bias_correction=True, betas=(0.8, 0.99), d_coef=0.5,
                        slice_p=3), 1e-8),
    "coupled-safeguard-growth-beta3-lr-groups": (
        THREE_GROUPS, dict(EPS0, lr=0.7, weight_decay=0.05, decouple=False, safeguard_warmup=True, growth_rate=1.5,
                           beta3=0.9), 1e-11),
    "decoupled-two-groups": ([([0, 2], {}), ([1, 3], {"weight_decay": 0.0})], dict(EPS0, weight_decay=0.1), 1e-8),
}


@pytest.mark.parametrize("case", list(PARITY))
def test_matches_prodigyopt_step_by_step_in_float64(case):
    """Every step's parameters and d, 60 steps. The tolerance is 1e-8 with decoupled decay: θ(1 − λη) here vs
    θ − ληθ in the package round differently, and Prodigy's d (a ratio of sums that partly cancel) amplifies
    that last-bit difference to ~3e-10; with the package's rounding of the decay the runs agree to ~1e-12."""
    prodigyopt = pytest.importorskip("prodigyopt")
    groups, hp, tol = PARITY[case]
    ours = trajectory(lambda g: Prodigy(g, **hp), groups, zero="last")
    theirs = trajectory(lambda g: prodigyopt.Prodigy(g, **hp), groups, zero="last")
    assert_same_trajectory(ours, theirs, tol)
    assert ours[-1][1] > 1e3 * ours[0][1]  # d really adapted (from d0 = 1e-6)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_first_step_by_hand(impl):
    """At the first step x = x₀, so r = 0 and d stays d₀; m = (1−β₁)d₀g, v = (1−β₂)d₀²g², so each coordinate
    moves by d₀·lr·(1−β₁)g / (√(1−β₂)|g| + ε)."""
    g = torch.tensor([0.5, -2.0, 3.0, 1e-3], dtype=torch.float64)
    x = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    d0, lr, eps = 1e-6, 0.8, 1e-3
    opt = Prodigy([x], lr=lr, d0=d0, eps=eps, impl=impl)
    x.grad = g.clone()
    opt.step()
    expected = x0 - d0 * lr * 0.1 * d0 * g / (math.sqrt(0.001) * d0 * g.abs() + d0 * eps)
    torch.testing.assert_close(x.detach(), expected, rtol=1e-14, atol=0)
    assert opt.param_groups[0]["d"] == d0


def _paper_prodigy(x0, grad_fn, steps, lr, betas, eps, d0):
    """The paper's Algorithm 4 in plain Python floats (growth unlimited, d_coef = 1)."""
    b1, b2 = betas
    b3 = math.sqrt(b2)
    n = len(x0)
    x, m, v, s = list(x0), [0.0] * n, [0.0] * n, [0.0] * n
    d, r, out = d0, 0.0, []
    for _ in range(steps):
        g = grad_fn(x)
        lam = lr * d
        r = b3 * r + (d / d0) * lam * sum(gi * (x0i - xi) for gi, x0i, xi in zip(g, x0, x))
        s = [b3 * si + (d / d0) * lam * gi for si, gi in zip(s, g)]
        m = [b1 * mi + (1 - b1) * d * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * d * d * gi * gi for vi, gi in zip(v, g)]
        x = [xi - lam * mi / (math.sqrt(vi) + d * eps) for xi, mi, vi in zip(x, m, v)]
        l1 = sum(abs(si) for si in s)
        if l1 > 0:
            d = max(d, r / l1)
        out.append((x, d))
    return out


@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.99)], ids=["beta1", "beta1-zero"])
def test_epsilon_term_is_the_papers(betas):
    """With a large ε the placement of d in the ε term (and, at β₁ = 0, in the step) shows: optfit follows the
    paper's d_k (a plain-Python oracle), the package uses d_{k+1}."""
    a = [1.0, 4.0, 0.25]
    target = [3.0, -1.0, 2.0]
    x0 = [0.5, 0.0, -1.0]

    def grad_fn(x):
        return [ai * (xi - ti) for ai, xi, ti in zip(a, x, target)]

    hp = dict(lr=1.0, betas=betas, eps=0.05, d0=1e-3)
    oracle = _paper_prodigy(x0, grad_fn, 8, **hp)

    def run(cls):
        x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
        opt = cls([x], **hp)
        out = []
        for _ in range(8):
            x.grad = torch.tensor(grad_fn(x.detach().tolist()), dtype=torch.float64)
            opt.step()
            out.append((x.detach().tolist(), opt.param_groups[0]["d"]))
        return out

    ours = run(Prodigy)
    for (xa, da), (xb, db) in zip(ours, oracle):
        assert xa == pytest.approx(xb, rel=1e-12, abs=1e-14)
        assert da == pytest.approx(db, rel=1e-12)
    assert ours[-1][1] > 10 * hp["d0"]  # d moved, so d_k and d_{k+1} differ
    prodigyopt = pytest.importorskip("prodigyopt")
    theirs = run(prodigyopt.Prodigy)
    assert max(abs(p - q) for (xa, _), (xb, _) in zip(ours, theirs) for p, q in zip(xa, xb)) > 1e-6


@pytest.mark.parametrize("case", list(PARITY))
def test_d_never_decreases(case):
    groups, hp, _ = PARITY[case]
    ds = [d for _, d in trajectory(lambda g: Prodigy(g, **hp), groups, steps=80, noise=1.0, zero="last")]
    assert all(b >= a for a, b in zip(ds, ds[1:]))


def test_d_tracks_the_distance_to_the_optimum_on_a_1d_quadratic():
    """f = ½a(x − D)², x₀ = 0: d is proportional to D (whatever a and D's scale) and stays below it (the paper
    proves d ≤ D for its gradient-descent and dual-averaging versions; for the Adam version, here d/D ≈ 0.36-0.47)."""
    ratios = []
    for dist in (0.01, 3.0, 100.0):
        for a in (1.0, 10.0):
            x = torch.zeros(1, dtype=torch.float64, requires_grad=True)
            opt = Prodigy([x])
            for _ in range(200):
                opt.zero_grad()
                (0.5 * a * (x - dist) ** 2).sum().backward()
                opt.step()
            ratios.append(opt.param_groups[0]["d"] / dist)
            assert float(x.detach()) == pytest.approx(dist, rel=1e-3)
    assert all(0.25 < q <= 1.0 for q in ratios), ratios


@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.1, "cautious": True}, {"weight_decay": 0.1, "decouple": False},
                                {"weight_decay": 0.1, "decay_mode": "independent", "betas": (0.0, 0.99)},
                                {"slice_p": 2, "use_bias_correction": True}])
def test_foreach_matches_reference(hp):
    groups = [([0, 1], {}), ([2, 3], {"lr": 0.5, "eps": 1e-6})]
    ref = trajectory(lambda g: Prodigy(g, impl="reference", **hp), groups, steps=30, zero="last")
    fast = trajectory(lambda g: Prodigy(g, impl="foreach", **hp), groups, steps=30, zero="last")
    assert_same_trajectory(fast, ref, 1e-12)


def test_group_lr_scales_the_step_and_zero_freezes():
    """Each group steps with its own lr·d (the package allows only equal lrs or 0); lr = 0 moves nothing, leaves
    the state untouched and adds nothing to d's sums."""
    a, b, c = (torch.ones(3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    opt = Prodigy([{"params": [a]}, {"params": [b], "lr": 0.5}, {"params": [c], "lr": 0.0}], weight_decay=0.1)
    for p in (a, b, c):
        p.grad = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    opt.step()
    torch.testing.assert_close(1 - b.detach(), 0.5 * (1 - a.detach()), rtol=1e-6, atol=0)
    assert torch.equal(c.detach(), torch.ones(3, dtype=torch.float64))
    assert not opt.state[c]["exp_avg"].any() and not opt.state[c]["s"].any()


def test_estimate_state_is_global_and_in_every_group():
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(4, dtype=torch.float64, generator=gen).requires_grad_() for _ in range(2))
    opt = Prodigy([{"params": [a]}, {"params": [b], "weight_decay": 0.1}])
    for _ in range(5):  # the gradients of ½‖θ − 3‖²: the estimate grows from d₀ (random ones may leave it there)
        a.grad, b.grad = (a - 3).detach(), (b - 3).detach()
        opt.step()
    keys = ("d", "d_max", "d_numerator")
    first, second = ([g[k] for k in keys] for g in opt.param_groups)
    assert first == second == list(opt.estimate.values())
    assert opt.param_groups[0]["d"] > 1e-6
    c = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt.add_param_group({"params": [c]})
    assert opt.param_groups[2]["d"] == opt.param_groups[0]["d"]  # a late group joins the current estimate
    with pytest.raises(ValueError, match="d_coef"):
        opt.add_param_group({"params": [torch.zeros(1, requires_grad=True)], "d_coef": 2.0})


def test_state_layout():
    """exp_avg (β₁ > 0), exp_avg_sq, s and x₀ per parameter; x₀ of an all-zero parameter is a 0-d zero; slice_p
    keeps s and x₀ for every k-th entry of the flattened tensor."""
    w = torch.randn(4, 5, requires_grad=True)
    z = torch.zeros(7, requires_grad=True)
    w0 = w.detach().clone()
    opt = Prodigy([w, z], slice_p=3)
    w.grad, z.grad = torch.ones(4, 5), torch.ones(7)
    opt.step()
    assert opt.state[w]["s"].shape == (7,) and torch.equal(opt.state[w]["p0"], w0.reshape(-1)[::3])
    assert opt.state[z]["p0"].ndim == 0
    opt0 = Prodigy([torch.randn(3, requires_grad=True)], betas=(0.0, 0.99))
    p = opt0.param_groups[0]["params"][0]
    p.grad = torch.ones(3)
    opt0.step()
    assert set(opt0.state[p]) == {"step", "exp_avg_sq", "s", "p0"}


def test_decouple_sets_decay_mode_and_hyperparameters_are_checked():
    p = [torch.zeros(2, requires_grad=True)]
    assert Prodigy(p).param_groups[0]["decay_mode"] == "decoupled"  # the package's decouple=True
    assert Prodigy(p, decouple=False).param_groups[0]["decay_mode"] == "coupled"
    assert Prodigy(p, decay_mode="independent").param_groups[0]["decay_mode"] == "independent"
    for key, value in [("d0", 0.0), ("d_coef", -1.0), ("growth_rate", 0.5), ("beta3", 1.0), ("slice_p", 0),
                       ("eps", 0.0), ("decouple", "yes"), ("safeguard_warmup", 1)]:
        with pytest.raises(ValueError, match=key):
            Prodigy(p, **{key: value})
