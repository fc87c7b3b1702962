"""The shared features of optfit/optim/_features.py: Grokfast filters, caution, decay modes, the non-finite scan."""

from __future__ import annotations

import copy

import pytest
import torch

import optfit
from optfit.optim import _features as F
from optfit.optim import grokfast_ema, grokfast_ma

D = torch.float64


def _feed(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


def _stream(shape, steps, seed=0, dtype=D):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(steps)]


# ------------------------------------------------------------------------------------------ Grokfast EMA
@pytest.mark.parametrize("lamb", [2.0, 0.5])
def test_ema_constant_gradient_is_amplified_by_one_plus_lambda_at_every_step(lamb):
    cfg, state, g = grokfast_ema(alpha=0.9, lamb=lamb), {}, torch.tensor([1.0, -2.0, 0.5], dtype=D)
    for _ in range(5):
        torch.testing.assert_close(F.apply_filter(cfg, g, state), (1 + lamb) * g, rtol=1e-15, atol=0)


def test_ema_filter_by_hand_and_first_call_copies_the_gradient():
    cfg, state = grokfast_ema(alpha=0.8, lamb=2.0), {}
    gs = _stream(4, 4)
    out = F.apply_filter(cfg, gs[0], state)
    assert torch.equal(state["grokfast_ema"], gs[0]) and state["grokfast_ema"].data_ptr() != gs[0].data_ptr()
    torch.testing.assert_close(out, 3 * gs[0], rtol=1e-15, atol=0)
    mu = gs[0].clone()
    for g in gs[1:]:
        keep = g.clone()
        out = F.apply_filter(cfg, g, state)
        mu = 0.8 * mu + 0.2 * g
        torch.testing.assert_close(out, g + 2.0 * mu, rtol=1e-14, atol=1e-15)
        assert torch.equal(g, keep)  # the input is never modified


def test_filter_through_an_optimizer_leaves_p_grad_alone_and_matches_filtered_sgd():
    lr, alpha, lamb = 0.1, 0.9, 2.0
    a = torch.linspace(0.5, 2.0, 5, dtype=D)
    x = torch.zeros(5, dtype=D, requires_grad=True)
    target = torch.arange(5, dtype=D)
    opt = optfit.create_optimizer([x], "sgd", lr=lr, grad_filter=grokfast_ema(alpha=alpha, lamb=lamb))
    theta, mu = torch.zeros(5, dtype=D), None
    for _ in range(10):
        opt.zero_grad()
        (0.5 * a * (x - target) ** 2).sum().backward()
        raw = x.grad.clone()
        opt.step()
        assert torch.equal(x.grad, raw)  # p.grad itself is not filtered
        g = a * (theta - target)
        mu = g.clone() if mu is None else alpha * mu + (1 - alpha) * g
        theta = theta - lr * (g + lamb * mu)
        torch.testing.assert_close(x.detach(), theta, rtol=1e-13, atol=1e-14)
        assert opt.state[x]["grokfast_ema"].data_ptr() != x.grad.data_ptr()


def test_filter_runs_before_coupled_l2():
    lr, wd, lamb = 0.1, 0.5, 2.0
    x = torch.tensor([1.0, -1.0], dtype=D, requires_grad=True)
    opt = optfit.create_optimizer([x], "sgd", lr=lr, weight_decay=wd, grad_filter=grokfast_ema(lamb=lamb))
    g = torch.tensor([0.3, 0.2], dtype=D)
    _feed(opt, [x], [g])
    expected = torch.tensor([1.0, -1.0], dtype=D) - lr * ((1 + lamb) * g + wd * torch.tensor([1.0, -1.0], dtype=D))
    torch.testing.assert_close(x.detach(), expected, rtol=1e-15, atol=0)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_filter_composes_with_adam_like_feeding_torch_the_filtered_gradient(name):
    ours_p = torch.ones(6, dtype=D, requires_grad=True)
    theirs_p = torch.ones(6, dtype=D, requires_grad=True)
    ours = optfit.create_optimizer([ours_p], name, lr=0.01, weight_decay=0.1,
                                   grad_filter=grokfast_ema(alpha=0.9, lamb=1.5))
    theirs = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]([theirs_p], lr=0.01, weight_decay=0.1)
    mu = None
    for g in _stream(6, 15, seed=4):
        mu = g.clone() if mu is None else 0.9 * mu + 0.1 * g
        _feed(ours, [ours_p], [g])
        _feed(theirs, [theirs_p], [g + 1.5 * mu])
    torch.testing.assert_close(ours_p.detach(), theirs_p.detach(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("cfg", [grokfast_ema(alpha=0.7, lamb=2.0), grokfast_ma(window=3, lamb=1.0)],
                         ids=["ema", "ma"])
def test_filter_state_lives_in_optimizer_state_and_resumes_bit_exact(cfg):
    stream = _stream((3, 2), 12, seed=1, dtype=torch.float32)

    def make():
        p = torch.ones(3, 2, requires_grad=True)
        return p, optfit.create_optimizer([p], "adamw", lr=0.05, grad_filter=cfg)

    p1, o1 = make()
    for g in stream[:5]:
        _feed(o1, [p1], [g])
    key = "grokfast_ema" if cfg["kind"] == "ema" else "grokfast_window"
    assert key in o1.state_dict()["state"][0]
    saved, theta = copy.deepcopy(o1.state_dict()), p1.detach().clone()
    for g in stream[5:]:
        _feed(o1, [p1], [g])
    p2, o2 = make()
    with torch.no_grad():
        p2.copy_(theta)
    o2.load_state_dict(saved)
    for g in stream[5:]:
        _feed(o2, [p2], [g])
    assert torch.equal(p1, p2)
    assert torch.equal(o1.state[p1][key], o2.state[p2][key])


# ------------------------------------------------------------------------------------------ Grokfast MA
def test_ma_window_with_warmup():
    cfg, state = grokfast_ma(window=3, lamb=1.0, warmup=True), {}
    gs = [torch.tensor([v], dtype=D) for v in (1.0, 2.0, 4.0, 8.0, 16.0)]
    want = [1.0, 2.0, 4.0 + 7 / 3, 8.0 + 14 / 3, 16.0 + 28 / 3]  # raw until the window is full; mean includes g
    for g, w in zip(gs, want):
        assert F.apply_filter(cfg, g, state).item() == pytest.approx(w, rel=1e-15)
    assert int(state["grokfast_count"]) == 5


def test_ma_window_without_warmup_averages_what_it_has():
    cfg, state = grokfast_ma(window=3, lamb=2.0, warmup=False), {}
    gs = [torch.tensor([v], dtype=D) for v in (1.0, 2.0, 4.0, 8.0)]
    want = [1.0 + 2 * 1.0, 2.0 + 2 * 1.5, 4.0 + 2 * 7 / 3, 8.0 + 2 * 14 / 3]
    for g, w in zip(gs, want):
        assert F.apply_filter(cfg, g, state).item() == pytest.approx(w, rel=1e-15)


def test_ma_constant_gradient_after_warmup_is_one_plus_lambda():
    cfg, state, g = grokfast_ma(window=4, lamb=5.0), {}, torch.tensor([0.5, -1.0], dtype=D)
    out = [F.apply_filter(cfg, g, state) for _ in range(8)]
    assert all(torch.equal(o, g) for o in out[:3])
    assert all(torch.allclose(o, 6.0 * g, rtol=1e-15, atol=0) for o in out[3:])


def test_ma_count_survives_resume_onto_low_precision_parameters():
    def make():
        p = torch.zeros(2, dtype=torch.bfloat16, requires_grad=True)
        return p, optfit.create_optimizer([p], "sgd", lr=0.0, grad_filter=grokfast_ma(window=3, lamb=1.0))

    p, opt = make()
    for _ in range(301):
        _feed(opt, [p], [torch.ones(2, dtype=torch.bfloat16)])
    p2, opt2 = make()
    opt2.load_state_dict(opt.state_dict())
    for _ in range(300):
        _feed(opt2, [p2], [torch.ones(2, dtype=torch.bfloat16)])
    assert int(opt2.state[p2]["grokfast_count"]) == 601


def test_invalid_filter_configs():
    for cfg, name in [("lowpass", "kind"), ({"kind": "ema", "alpha": 1.0}, "alpha"),
                      ({"kind": "ma", "window": 0}, "window"), ({"kind": "ema", "window": 3}, "window"),
                      ({"kind": "ma", "warmup": 1}, "warmup")]:
        with pytest.raises(ValueError, match=name):
            optfit.create_optimizer([torch.zeros(1, requires_grad=True)], "sgd", grad_filter=cfg)


# ------------------------------------------------------------------------------------------------ caution
def test_cautious_is_bit_identical_to_adamw_when_m_and_g_agree():
    signs = torch.tensor([1.0, -1.0, 1.0, 1.0, -1.0, -1.0])
    gen = torch.Generator().manual_seed(0)
    grads = [signs * (torch.rand(6, generator=gen) + 0.1) for _ in range(20)]
    out = []
    for name in ("adamw", "cadamw"):
        p = torch.linspace(-1, 1, 6).requires_grad_()
        opt = optfit.create_optimizer([p], name, lr=0.01, weight_decay=0.1, impl="foreach")  # the same kernel for both
        for g in grads:
            _feed(opt, [p], [g])
        out.append(p.detach())
    assert torch.equal(out[0], out[1])


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_cautious_half_flipped_coordinates_get_zero_and_the_rest_double(impl, wd):
    g1 = torch.ones(8, dtype=D)
    flipped = torch.tensor([True, False] * 4)
    g2 = torch.where(flipped, -0.01, 0.5).to(D)  # m stays positive: m ⊙ g < 0 exactly on the flipped half
    steps = []
    for cautious in (False, True):
        p = torch.ones(8, dtype=D, requires_grad=True)
        opt = optfit.create_optimizer([p], "adamw", lr=0.01, weight_decay=wd, cautious=cautious, impl=impl)
        _feed(opt, [p], [g1])  # m and g agree: an identical first step for both
        before = p.detach().clone()
        _feed(opt, [p], [g2])
        steps.append(before * (1 - 0.01 * wd) - p.detach())  # the step s, decay taken out (it is never masked)
    plain, masked = steps
    assert (plain > 0).all()
    assert torch.equal(masked[flipped], torch.zeros(4, dtype=D))
    torch.testing.assert_close(masked[~flipped], 2 * plain[~flipped], rtol=1e-12, atol=0)


def test_cautious_rescale_is_clamped_when_everything_disagrees():
    s, g = torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 2.0])
    assert torch.equal(F.cautious(s, g), torch.zeros(2))
    torch.testing.assert_close(F.cautious(torch.tensor([1.0, 1.0, 1.0, 1.0]), torch.tensor([1.0, -1.0, -1.0, 0.0])),
                               torch.tensor([4.0, 0.0, 0.0, 0.0]))


# ------------------------------------------------------------------------------------------- decay modes
def _zero_grad_run(name, steps, schedule=None, **kw):
    p = torch.tensor([2.0, -0.5, 1.0], dtype=D, requires_grad=True)
    opt = optfit.create_optimizer([p], name, **kw)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule) if schedule else None
    out = []
    for _ in range(steps):
        _feed(opt, [p], [torch.zeros(3, dtype=D)])
        if sched:
            sched.step()
        out.append(p.detach().clone())
    return out


def test_decoupled_decay_with_zero_gradient_is_geometric():
    lr, wd, theta0 = 0.1, 0.3, torch.tensor([2.0, -0.5, 1.0], dtype=D)
    for name in ("adamw", "sgd"):
        traj = _zero_grad_run(name, 5, lr=lr, weight_decay=wd, decay_mode="decoupled")
        for t, theta in enumerate(traj, 1):
            torch.testing.assert_close(theta, theta0 * (1 - lr * wd) ** t, rtol=1e-14, atol=0)


def test_independent_decay_follows_the_schedule_shape_not_the_lr():
    lr, wd, theta0 = 0.1, 0.3, torch.tensor([2.0, -0.5, 1.0], dtype=D)
    factors = [1.0, 0.5, 0.25, 0.0, 0.75]
    sched = lambda epoch: factors[min(epoch, len(factors) - 1)]  # noqa: E731
    ind = _zero_grad_run("adamw", 5, sched, lr=lr, weight_decay=wd, decay_mode="independent")
    dec = _zero_grad_run("adamw", 5, sched, lr=lr, weight_decay=wd, decay_mode="decoupled")
    want_ind, want_dec = theta0.clone(), theta0.clone()
    for t, f in enumerate(factors):
        want_ind = want_ind * (1 - wd * f)
        want_dec = want_dec * (1 - lr * f * wd)
        torch.testing.assert_close(ind[t], want_ind, rtol=1e-14, atol=0)
        torch.testing.assert_close(dec[t], want_dec, rtol=1e-14, atol=0)
    # λ·η/η₀ does not depend on the peak lr
    ind10 = _zero_grad_run("adamw", 5, sched, lr=10 * lr, weight_decay=wd, decay_mode="independent")
    torch.testing.assert_close(ind10[-1], ind[-1], rtol=1e-14, atol=0)


def test_coupled_decay_goes_through_the_optimizer_maths():
    lr, wd, mom = 0.1, 0.3, 0.9
    theta0 = torch.tensor([2.0, -0.5, 1.0], dtype=D)
    # SGD with momentum: g = λθ feeds the buffer
    traj = _zero_grad_run("sgd", 3, lr=lr, weight_decay=wd, momentum=mom)
    theta, buf = theta0.clone(), None
    for t in range(3):
        g = wd * theta
        buf = g if buf is None else mom * buf + g
        theta = theta - lr * buf
        torch.testing.assert_close(traj[t], theta, rtol=1e-14, atol=0)
    # Adam: g = λθ is normalised, the first step is ≈ η·sign(θ)
    eps = 1e-8
    first = _zero_grad_run("adam", 1, lr=lr, weight_decay=wd, decay_mode="coupled", eps=eps)[0]
    want = theta0 - lr * wd * theta0 / (wd * theta0.abs() + eps)
    torch.testing.assert_close(first, want, rtol=1e-12, atol=0)


def test_decay_multiplier_values():
    assert F.decay_multiplier("coupled", 0.1, 0.5, 0.1) == 1.0
    assert F.decay_multiplier("decoupled", 0.1, 0.5, 1.0) == pytest.approx(0.95)
    assert F.decay_multiplier("independent", 0.05, 0.5, 0.1) == pytest.approx(0.75)
    assert F.decay_multiplier("independent", 0.05, 0.5, 0.0) == 1.0
    assert F.decay_multiplier("decoupled", 0.1, 0.0, 0.1) == 1.0


# ----------------------------------------------------------------------------------------- non-finite scan
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_nonfinite_scan_flags_nan_and_both_infinities(bad, dtype):
    grads = [torch.ones(3, dtype=dtype), torch.zeros(0, dtype=dtype), torch.ones(2, 2, dtype=dtype)]
    assert F.first_nonfinite(grads) is None
    grads[2][1, 0] = bad
    assert F.first_nonfinite(grads) == 2
    grads[0][0] = bad
    assert F.first_nonfinite(grads) == 0


def test_nonfinite_scan_does_not_flag_huge_finite_values():
    assert F.first_nonfinite([torch.full((10_000,), 3e38), torch.full((7,), -3e38)]) is None  # ‖·‖₂ would overflow
    assert F.first_nonfinite([torch.full((5,), 3e38, dtype=torch.bfloat16)]) is None
    assert F.first_nonfinite([torch.full((5,), 65504.0, dtype=torch.float16)]) is None
    assert F.first_nonfinite([torch.ones(3), torch.full((3,), 1e300, dtype=D)]) is None  # mixed dtypes
    assert F.first_nonfinite([torch.full((3,), 1e300, dtype=D), torch.tensor([float("nan")])]) == 1
    assert F.first_nonfinite([]) is None


def test_huge_finite_gradient_is_stepped_not_flagged():
    p = torch.zeros(4, requires_grad=True)
    opt = optfit.create_optimizer([p], "sgd", lr=1e-3)
    _feed(opt, [p], [torch.full((4,), 3e38)])
    assert torch.isfinite(p).all() and opt.skipped_steps == 0


def test_nonfinite_in_a_complex_gradient_is_found():
    z = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    opt = optfit.create_optimizer([z], "adam")
    g = torch.zeros(3, dtype=torch.complex64)
    g[1] = complex(0.0, float("inf"))
    z.grad = g
    with pytest.raises(FloatingPointError, match="parameter 0"):
        opt.step()
    assert torch.equal(z.detach(), torch.zeros(3, dtype=torch.complex64))
