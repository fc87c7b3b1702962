"""D-Adaptation Adam and SGD: step-by-step parity with the authors' package (dadaptation), hand-computed first
steps, the lower-bound property of d (SGD: d ≤ 2D on convex problems), d's monotonicity and scale, group rules."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import DAdaptAdam, DAdaptSGD

from .distance_trajectories import assert_same_trajectory, trajectory

ONE_GROUP = [([0, 1, 2, 3], {})]

ADAM_PARITY = {
    "defaults": (ONE_GROUP, {}),
    "decoupled-bias-correction-betas": (ONE_GROUP, dict(weight_decay=0.1, decouple=True, use_bias_correction=True,
                                                        betas=(0.8, 0.99))),
    # per-group layer_scale and L2, a frozen group (lr = 0: the package's only other lr), growth limit, ε
    "layer-scale-groups-growth": ([([0], {"layer_scale": 0.5}), ([2, 3], {"weight_decay": 0.2}), ([1], {"lr": 0.0})],
                                  dict(lr=0.5, weight_decay=0.05, growth_rate=1.3, eps=1e-6)),
}
SGD_PARITY = {
    "defaults": (ONE_GROUP, {}, False),
    "momentum-two-groups": ([([0, 1], {}), ([2, 3], {})], dict(momentum=0.9), False),
    "momentum-lr-growth-frozen-group": ([([0, 1, 3], {}), ([2], {"lr": 0.0})],
                                        dict(momentum=0.5, lr=0.8, growth_rate=1.2), False),
    # L2: the package leaves it out of ‖g₀‖ (a non-in-place add), so start at x₀ = 0 where the two agree
    "weight-decay-from-zero": (ONE_GROUP, dict(weight_decay=0.1, momentum=0.9), True),
}


@pytest.mark.parametrize("case", list(ADAM_PARITY))
def test_adam_matches_dadaptation_step_by_step_in_float64(case):
    dadaptation = pytest.importorskip("dadaptation")
    groups, hp = ADAM_PARITY[case]
    ours = trajectory(lambda g: DAdaptAdam(g, **hp), groups)
    theirs = trajectory(lambda g: dadaptation.DAdaptAdam(g, **hp), groups)
    assert_same_trajectory(ours, theirs, 1e-10)
    assert ours[-1][1] > 1e3 * ours[0][1]  # d really adapted (from d0 = 1e-6)


@pytest.mark.parametrize("case", list(SGD_PARITY))
def test_sgd_matches_dadaptation_step_by_step_in_float64(case):
    dadaptation = pytest.importorskip("dadaptation")
    groups, hp, zero_init = SGD_PARITY[case]
    ours = trajectory(lambda g: DAdaptSGD(g, **hp), groups, zero="all" if zero_init else "none")
    theirs = trajectory(lambda g: dadaptation.DAdaptSGD(g, **hp), groups, zero="all" if zero_init else "none")
    assert_same_trajectory(ours, theirs, 1e-10)
    assert ours[-1][1] > 1e3 * ours[0][1]


# ------------------------------------------------------------------------------------- hand-computed steps
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_adam_first_step_by_hand(impl):
    """s = 0 at the first step, so r = 0 and d stays d₀; m = (1−β₁)·lr·d₀·g, v = (1−β₂)g², so each coordinate
    moves by (1−β₁)·lr·d₀·g / (√(1−β₂)|g| + ε)."""
    g = torch.tensor([0.5, -2.0, 3.0, 1e-3], dtype=torch.float64)
    x = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=torch.float64, requires_grad=True)
    x0 = x.detach().clone()
    d0, lr, eps = 1e-3, 0.8, 1e-2
    opt = DAdaptAdam([x], lr=lr, d0=d0, eps=eps, impl=impl)
    x.grad = g.clone()
    opt.step()
    torch.testing.assert_close(x.detach(), x0 - 0.1 * lr * d0 * g / (math.sqrt(0.001) * g.abs() + eps),
                               rtol=1e-14, atol=0)
    assert opt.param_groups[0]["d"] == d0
    # second step: r = (1−√β₂)·λ⟨g, s₁/A₁⟩ with s₁ = (1−√β₂)λg, A₁ = √v₁ + ε
    x.grad = g.clone()
    opt.step()
    sb = math.sqrt(0.999)
    lam = lr * d0
    s1 = (1 - sb) * lam * g
    r = (1 - sb) * lam * float((g * s1 / ((0.001 * g * g).sqrt() + eps)).sum())
    s2 = sb * s1 + (1 - sb) * lam * g
    assert opt.param_groups[0]["d"] == pytest.approx(max(d0, r / ((1 - sb) * float(s2.abs().sum()))), rel=1e-13)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_sgd_first_step_moves_lr_d0_along_the_normalised_gradient(impl):
    """λ₀ = lr·d₀/‖g₀‖ with ‖g₀‖ over every group, so the first step has length lr·d₀; r₁ = 0 keeps d = d₀."""
    a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, 0.0], [3.0, 1.0]], dtype=torch.float64, requires_grad=True)
    before = [a.detach().clone(), b.detach().clone()]
    ga, gb = torch.tensor([3.0, 0.0], dtype=torch.float64), torch.tensor([[0.0, 4.0], [0.0, 0.0]], dtype=torch.float64)
    opt = DAdaptSGD([{"params": [a]}, {"params": [b]}], lr=0.5, d0=0.1, impl=impl)
    a.grad, b.grad = ga.clone(), gb.clone()
    opt.step()
    torch.testing.assert_close(a.detach(), before[0] - 0.5 * 0.1 * ga / 5.0, rtol=1e-15, atol=1e-16)
    torch.testing.assert_close(b.detach(), before[1] - 0.5 * 0.1 * gb / 5.0, rtol=1e-15, atol=1e-16)
    assert opt.param_groups[1]["g0_norm"] == 5.0 and opt.param_groups[1]["d"] == 0.1


def test_sgd_g0_includes_the_l2_term_and_waits_for_a_nonzero_gradient():
    x = torch.tensor([2.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = DAdaptSGD([x], weight_decay=0.5)
    x.grad = torch.tensor([-1.0, -2.0], dtype=torch.float64)  # cancels the L2 term 0.5·x exactly
    opt.step()
    assert torch.equal(x.detach(), torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert opt.param_groups[0]["g0_norm"] is None
    x.grad = torch.tensor([1.0, 1.0], dtype=torch.float64)
    opt.step()
    assert opt.param_groups[0]["g0_norm"] == pytest.approx(math.sqrt(2.0**2 + 3.0**2), rel=1e-15)


# --------------------------------------------------------------------------------------- properties of d
def _quadratic_run(opt_fn, x0, x_star, a, steps):
    x = x0.clone().requires_grad_()
    opt = opt_fn([x])
    ds = []
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * (a * (x - x_star) ** 2).sum()).backward()
        opt.step()
        ds.append(opt.param_groups[0]["d"])
    return x.detach(), ds


@pytest.mark.parametrize("seed", range(4))
def test_sgd_d_is_a_lower_bound_on_twice_the_distance(seed):
    """Dual averaging (momentum 0) on a convex function: Σλ⟨g_k, s_k⟩ ≤ ‖s‖·D by convexity, so d̂ = 2Σλ⟨g,s⟩/‖s‖
    (the package's factor 2; the paper's Algorithm 1 has d̂ ≤ D) never exceeds 2D, and d grows to within a factor
    of D."""
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(8, generator=gen, dtype=torch.float64)
    x_star = 3 * torch.randn(8, generator=gen, dtype=torch.float64)
    a = 0.1 + torch.rand(8, generator=gen, dtype=torch.float64)
    dist = float((x0 - x_star).norm())
    _, ds = _quadratic_run(lambda p: DAdaptSGD(p, lr=0.5), x0, x_star, a, 300)
    assert all(d <= 2 * dist for d in ds)
    assert all(b >= a_ for a_, b in zip(ds, ds[1:]))
    assert ds[-1] > dist / 4


@pytest.mark.parametrize("cls", [DAdaptAdam, DAdaptSGD])
def test_d_tracks_the_distance_to_the_optimum_on_a_1d_quadratic(cls):
    """f = ½a(x − D)², x₀ = 0: d/D is the same for D over four orders of magnitude and any curvature a, and lies
    within a small factor of 1 (SGD ≈ 0.87, Adam ≈ 2.8)."""
    ratios = []
    for dist in (0.01, 3.0, 100.0):
        for a in (1.0, 10.0):
            x, ds = _quadratic_run(cls, torch.zeros(1, dtype=torch.float64), torch.tensor([dist], dtype=torch.float64),
                                   torch.tensor([a], dtype=torch.float64), 200)
            assert float(x) == pytest.approx(dist, rel=1e-3)
            ratios.append(ds[-1] / dist)
    assert all(0.25 < q < 4 for q in ratios), ratios
    assert max(ratios) / min(ratios) < 1.1, ratios


@pytest.mark.parametrize("case", list(ADAM_PARITY))
def test_adam_d_never_decreases(case):
    groups, hp = ADAM_PARITY[case]
    ds = [d for _, d in trajectory(lambda g: DAdaptAdam(g, **hp), groups, steps=80, noise=1.0)]
    assert all(b >= a for a, b in zip(ds, ds[1:]))


# ---------------------------------------------------------------------------------- paths, groups, checks
@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.1, "cautious": True}, {"weight_decay": 0.1, "decouple": True},
                                {"weight_decay": 0.1, "decay_mode": "independent", "use_bias_correction": True}])
def test_adam_foreach_matches_reference(hp):
    groups = [([0, 1], {}), ([2, 3], {"lr": 0.5, "layer_scale": 2.0})]
    ref = trajectory(lambda g: DAdaptAdam(g, impl="reference", **hp), groups, steps=30)
    fast = trajectory(lambda g: DAdaptAdam(g, impl="foreach", **hp), groups, steps=30)
    assert_same_trajectory(fast, ref, 1e-12)


@pytest.mark.parametrize("hp", [{}, {"momentum": 0.9, "weight_decay": 0.1}, {"momentum": 0.5, "cautious": True}])
def test_sgd_foreach_matches_reference(hp):
    groups = [([0, 1], {}), ([2, 3], {"lr": 0.5})]
    ref = trajectory(lambda g: DAdaptSGD(g, impl="reference", **hp), groups, steps=30)
    fast = trajectory(lambda g: DAdaptSGD(g, impl="foreach", **hp), groups, steps=30)
    assert_same_trajectory(fast, ref, 1e-12)


@pytest.mark.parametrize("cls", [DAdaptAdam, DAdaptSGD])
def test_zero_lr_group_is_frozen_and_left_out_of_d(cls):
    a, b = (torch.ones(3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    opt = cls([{"params": [a]}, {"params": [b], "lr": 0.0}], weight_decay=0.1)
    alone = torch.ones(3, dtype=torch.float64, requires_grad=True)
    ref = cls([alone], weight_decay=0.1)
    for k in range(5):
        g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) * (k + 1)
        a.grad, b.grad, alone.grad = g.clone(), g.clone(), g.clone()
        opt.step()
        ref.step()
    assert torch.equal(b.detach(), torch.ones(3, dtype=torch.float64))
    assert torch.equal(a.detach(), alone.detach()) and opt.param_groups[0]["d"] == ref.param_groups[0]["d"]


def test_decay_modes_and_hyperparameter_checks():
    p = [torch.zeros(2, requires_grad=True)]
    assert DAdaptAdam(p).param_groups[0]["decay_mode"] == "coupled"  # the package's decouple=False
    assert DAdaptAdam(p, decouple=True).param_groups[0]["decay_mode"] == "decoupled"
    assert DAdaptSGD(p).param_groups[0]["decay_mode"] == "coupled"
    with pytest.raises(ValueError, match="decay_mode"):
        DAdaptSGD(p, decay_mode="decoupled")
    for cls, key, value in [(DAdaptAdam, "d0", 0.0), (DAdaptAdam, "growth_rate", 0.9), (DAdaptAdam, "eps", 0.0),
                            (DAdaptAdam, "layer_scale", -1.0), (DAdaptAdam, "decouple", 1),
                            (DAdaptSGD, "momentum", 1.0), (DAdaptSGD, "d0", -1.0), (DAdaptSGD, "growth_rate", "x")]:
        with pytest.raises(ValueError, match=key):
            cls(p, **{key: value})
    with pytest.raises(ValueError, match="betas"):  # √β₂ is the decay of the one estimate
        DAdaptAdam([{"params": [torch.zeros(1, requires_grad=True)]},
                    {"params": [torch.zeros(1, requires_grad=True)], "betas": (0.9, 0.99)}])
