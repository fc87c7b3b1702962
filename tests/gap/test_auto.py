"""auto: what it is made of (Prodigy with bias correction, exactly, when the schedule is flat; Prodigy under a linear
LambdaLR when total_steps is given), the oracles of docs/auto.md (the scale never exceeds the distance to the solution
of a convex problem; anytime, the step follows the 1/k envelope on a noisy quadratic and the loss keeps falling where
a constant step stalls; deterministic runs still converge; a jump of curvature is absorbed), visibility, bitwise
resume, errors, and the runner's total_steps."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.gap import Auto, attach_summary_writer
from optfit.optim import Prodigy

from ..optim.distance_trajectories import assert_same_trajectory, problem, trajectory

ALL = [([0, 1, 2, 3], {})]
NEVER = 10**9  # min_samples: the anytime test never decides, ψ stays 1


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("hp", [{}, {"weight_decay": 0.1, "betas": (0.8, 0.99)}])
def test_flat_schedule_is_prodigy_with_bias_correction_bit_for_bit(impl, hp):
    ours = trajectory(lambda g: Auto(g, min_samples=NEVER, impl=impl, **hp), ALL)
    theirs = trajectory(lambda g: Prodigy(g, use_bias_correction=True, impl=impl, **hp), ALL)
    assert_same_trajectory(ours, theirs, 0.0)


def test_total_steps_is_prodigy_under_a_linear_lambda_schedule():
    total = 40

    def prodigy_linear(groups):
        opt = Prodigy(groups, use_bias_correction=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: max(0.0, 1 - e / total))
        opt.register_step_post_hook(lambda *_: sched.step())
        return opt

    with pytest.warns(RuntimeWarning, match="past total_steps=40"):
        ours = trajectory(lambda g: Auto(g, total_steps=total), ALL, steps=total + 5)
    theirs = trajectory(prodigy_linear, ALL, steps=total + 5)
    assert_same_trajectory(ours, theirs, 1e-12)
    assert all(torch.equal(a, b) for a, b in zip(ours[-1][0], ours[total - 1][0]))  # ψ = 0 after T: no motion


def test_scale_never_exceeds_the_distance_to_the_solution_of_a_convex_problem():
    """D-Adaptation's bound: with full gradients of a convex f, r ≤ ⟨s, x₀ − x*⟩ ≤ ‖s‖₁‖x₀ − x*‖_∞, so
    d ≤ ‖x₀ − x*‖_∞ at every step; and the estimate does reach that scale."""
    init, target, _ = problem()
    dist = max(float((x - t).abs().max()) for x, t in zip(init, target))  # x* = target
    run = trajectory(lambda g: Auto(g, min_samples=NEVER), ALL, steps=300, noise=0.0)
    ds = [d for _, d in run]
    assert max(ds) <= dist * (1 + 1e-12)
    assert ds[-1] >= dist / 10
    final = run[-1][0]
    assert max(float((x - t).abs().max()) for x, t in zip(final, target)) < 1e-3 * dist


def _noisy_quadratic(steps: int, sigma: float, jump_at: int | None = None, **hp):
    """½Σ h_i x_i² (h log-spaced in [0.1, 1], 200 coordinates) with N(0, σ²) gradient noise; per step the loss, the
    step size auto reports and its decay count."""
    gen = torch.Generator().manual_seed(0)
    h = torch.logspace(-1, 0, 200, dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(200, dtype=torch.float64))
    opt = optfit.create_optimizer([x], "auto", **hp)
    out = []
    for k in range(steps):
        hk = h * (100.0 if jump_at is not None and k >= jump_at else 1.0)
        with torch.no_grad():
            loss = 0.5 * float((hk * x * x).sum())
            x.grad = hk * x + sigma * torch.randn(200, generator=gen, dtype=torch.float64)
        opt.step()
        stats = opt.gap_stats()[0]
        out.append((loss, stats["step_size"], stats["decays"]))
    return out


def test_anytime_step_follows_the_one_over_k_envelope_and_the_loss_keeps_falling():
    """Noise phase: the optimal schedule on a noisy quadratic decays like 1/k; halving at a detected stationarity,
    never sooner than the run's length doubled, keeps k·η_k within a factor 2 sawtooth, and the loss falls ∝ 1/k.
    A constant step (the test switched off) stalls at its noise floor."""
    run = _noisy_quadratic(8000, sigma=0.1)
    k_eta = [(k + 1) * run[k][1] for k in range(1000, 8000)]
    assert max(k_eta) / min(k_eta) <= 2.5
    assert run[-1][2] >= 4
    assert run[-1][0] < run[1000][0] / 4
    constant = _noisy_quadratic(8000, sigma=0.1, min_samples=NEVER)
    assert constant[-1][2] == 0
    assert run[-1][0] < constant[-1][0] / 4


def test_anytime_deterministic_run_converges():
    run = _noisy_quadratic(3000, sigma=0.0)
    assert run[-1][0] < 1e-20 * run[0][0]


def test_a_jump_of_curvature_is_absorbed():
    """The curvature ×100 at step 200: Adam's second moment rescales the step within a few steps (auto's scale only
    grows) — the loss is back below its value at the jump within 30 steps and keeps falling."""
    run = _noisy_quadratic(400, sigma=1.0, jump_at=200, min_samples=NEVER)
    at_jump = run[200][0]
    assert all(math.isfinite(loss) for loss, _, _ in run)
    assert min(loss for loss, _, _ in run[200:230]) < at_jump
    assert run[-1][0] < at_jump / 4


def test_selection_and_stats_show_what_it_chose():
    x = torch.nn.Parameter(torch.ones(3))
    opt = Auto([x], total_steps=10)
    x.grad = torch.ones(3)
    opt.step()
    sel = opt.selection()[0]
    assert sel["phase"] == "linear decay to step 10" and sel["schedule"] == pytest.approx(0.9)
    assert sel["step_size"] == pytest.approx(sel["d"] * 0.9) and sel["beta1"] == 0.9
    stats = _noisy_quadratic(200, sigma=0.1, min_samples=8)
    assert stats[-1][2] >= 1
    opt = Auto([x])
    assert opt.selection()[0]["phase"] == "constant (progressing)"
    assert {"decays", "stationarity_mean", "stationarity_se", "stationarity_n"} <= set(opt.gap_stats()[0])


def test_tensorboard_logging_sends_every_number():
    class Writer:
        def __init__(self):
            self.rows = []

        def add_scalar(self, tag, value, step):
            self.rows.append((tag, value, step))

    x = torch.nn.Parameter(torch.ones(3))
    opt = Auto([x])
    writer = Writer()
    attach_summary_writer(opt, writer, prefix="auto")
    for _ in range(3):
        x.grad = torch.randn(3)
        opt.step()
    tags = {t for t, _, _ in writer.rows}
    assert {"auto/group0/step_size", "auto/group0/d", "auto/group0/schedule", "auto/group0/decays"} <= tags
    assert not any(t.endswith("phase") for t in tags)


def test_resume_is_bitwise_after_decays():
    def run(split: int | None):
        gen = torch.Generator().manual_seed(3)
        x = torch.nn.Parameter(torch.ones(50, dtype=torch.float64))
        opt = Auto([x], min_samples=8)
        h = torch.linspace(0.1, 1, 50, dtype=torch.float64)
        for k in range(300):
            if split is not None and k == split:
                sd = opt.state_dict()
                x = torch.nn.Parameter(x.detach().clone())
                opt = Auto([x], min_samples=8)
                opt.load_state_dict(sd)
            x.grad = h * x.detach() + 0.3 * torch.randn(50, generator=gen, dtype=torch.float64)
            opt.step()
        return x.detach(), opt.gap_stats()

    (xa, sa), (xb, sb) = run(None), run(150)
    assert sa[0]["decays"] >= 2
    assert torch.equal(xa, xb)
    assert repr(sa) == repr(sb)


@pytest.mark.parametrize("kwargs, name", [
    ({"total_steps": 0}, "total_steps"), ({"total_steps": 2.5}, "total_steps"), ({"decay_factor": 1.0}, "decay_factor"),
    ({"decay_factor": 0}, "decay_factor"), ({"betas": (0.0, 0.999)}, "betas"), ({"confidence": 1.5}, "confidence"),
    ({"min_samples": 1}, "min_samples"), ({"lr": -1.0}, "lr"),
])
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Auto([torch.nn.Parameter(torch.ones(2))], **kwargs)


def test_groups_must_share_the_schedule():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="total_steps"):
        Auto([{"params": [a]}, {"params": [b], "total_steps": 5}])
    opt = Auto([{"params": [a]}, {"params": [b], "weight_decay": 0.1}], total_steps=5)  # per-group decay is fine
    assert opt.param_groups[1]["total_steps"] == 5


def test_trains_a_model_with_no_learning_rate():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1))
    X = torch.randn(512, 8)
    Y = torch.sin(X[:, :1]) + 0.5 * X[:, 1:2]
    opt = optfit.create_optimizer(model, "auto", total_steps=300)
    first = None
    for k in range(300):
        i = torch.randint(0, 512, (64,))
        loss = ((model(X[i]) - Y[i]) ** 2).mean()
        first = first if first is not None else float(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        final = float(((model(X) - Y) ** 2).mean())
    assert final < first / 10


def test_stationarity_statistic_is_zero_in_mean_at_a_constant_step():
    """Inside auto: at a constant step (the test never decides) the recent mean of Δ_k is within noise of 0 once the
    run is stationary — the fluctuation–dissipation weight (1+β₁)/(2(1−β₁)) on Adam's actual step — and far below 0
    while it descends."""
    early: dict = {}
    gen = torch.Generator().manual_seed(0)
    h = torch.logspace(-1, 0, 200, dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(200, dtype=torch.float64))
    opt = Auto([x], min_samples=NEVER)
    for k in range(6000):
        with torch.no_grad():
            x.grad = h * x + torch.randn(200, generator=gen, dtype=torch.float64)
        opt.step()
        if k == 60:
            early = opt.gap_stats()[0]
    late = opt.gap_stats()[0]
    assert early["stationarity_mean"] < -20 * late["stationarity_se"]
    assert abs(late["stationarity_mean"]) < 3 * late["stationarity_se"]  # with the weight ½ instead: ~70 se above
