"""CoRe: step-by-step parity with the authors' package (core-optimizer), an independent loop of the paper's
equations, first steps by hand, the RPROP step-size bounds, the freezing of the highest scores, and the lr
semantics (η₀ = s₀, a schedule scales the updates)."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import CoRe

SHAPES = [(4, 3), (5,), (2, 2, 3), (10,)]
# name: (our hyperparameters, [(tensor indices, our group overrides)])
SETTINGS = {
    "defaults": ({}, [([0, 1, 2, 3], {})]),
    # plasticity on (the (5,) tensor has p_frozen·5 < 1: nothing to freeze); two groups with their own decay
    "plasticity-two-groups": ({"score_history": 12, "frozen": 0.15, "step_sizes": (1e-5, 0.05), "lr": 0.01},
                              [([0, 1, 3], {}), ([2], {"weight_decay": 0.02, "frozen": 0.5})]),
    # RPROP-like sign directions (β₂ < 0), other β₁ schedule, etas and bounds; maximisation
    "sign-mode-maximize": ({"betas": (0.5, 0.9, 20.0, -1.0), "etas": (0.5, 1.3), "step_sizes": (1e-4, 0.2),
                            "weight_decay": 0.3, "maximize": True}, [([0, 1, 2, 3], {})]),
}


def _stream(steps=70, seed=0):
    gen = torch.Generator().manual_seed(seed)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    # a drifting mean keeps signs persistent for a while (step sizes grow) and then flips them (they shrink)
    drift = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.cos(torch.tensor(t / 9.0)) * d + 0.4 * torch.randn(d.shape, generator=gen, dtype=torch.float64)
              for d in drift] for t in range(steps)]
    return start, grads


def _run(make, spec, steps=70):
    start, stream = _stream(steps)
    params = [x.clone().requires_grad_() for x in start]
    opt = make([{"params": [params[i] for i in idx], **over} for idx, over in spec])
    out = []
    for grads in stream:
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out, opt, params


def _assert_same(ours, theirs, tol):
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=tol, atol=tol, msg=lambda m: f"step {step + 1}: {m}")


def _as_reference_kwargs(hp):
    """The package takes weight_decay and frozen as floats or lists (a group's own value must be a list)."""
    return {k: ([v] if k in ("weight_decay", "frozen") else v) for k, v in hp.items()}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_core_optimizer_step_by_step_in_float64(setting):
    """Every step's parameters for 70 steps, plus the final RPROP step sizes and moments (the package's
    ``prev_1``/``prev_2``/``step_size``). Same operations in the same order: the runs agree to the last bit here."""
    core_optimizer = pytest.importorskip("core_optimizer")
    hp, spec = SETTINGS[setting]
    ours, opt, params = _run(lambda g: CoRe(g, **hp), spec)
    ref_spec = [(idx, _as_reference_kwargs(over)) for idx, over in spec]
    theirs, ref, ref_params = _run(lambda g: core_optimizer.CoRe(g, **_as_reference_kwargs(hp)), ref_spec)
    _assert_same(ours, theirs, 1e-13)
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(opt.state[p]["step_size"], ref.state[q]["step_size"], rtol=1e-13, atol=0)
        torch.testing.assert_close(opt.state[p]["exp_avg"], ref.state[q]["prev_1"], rtol=1e-13, atol=1e-15)
        if "exp_avg_sq" in opt.state[p]:
            torch.testing.assert_close(opt.state[p]["exp_avg_sq"], ref.state[q]["prev_2"], rtol=1e-13, atol=0)


# ------------------------------------------------------------------------ the paper's equations, written here
def _paper_core(start, stream, groups):
    """Plain loop of the CoRe equations (module docstring of optfit.optim.core, after Eckhoff & Reiher), one
    tensor at a time: β₁-schedule, EMA, RPROP step sizes, Adam-like u, score S and top-p freezing, decay ∝ |Δ|."""
    x = [t.clone() for t in start]
    g_prev = [torch.zeros_like(t) for t in start]
    h = [torch.zeros_like(t) for t in start]
    s, score = {}, [torch.zeros_like(t) for t in start]
    out = []
    for t, grads in enumerate(stream, start=1):
        for idx, hp in groups:
            b1a, b1b, b1c, b2 = hp["betas"]
            eta_minus, eta_plus = hp["etas"]
            s_min, s_max = hp["step_sizes"]
            t_hist, p_frozen = hp["score_history"], hp["frozen"]
            sign = -1.0 if hp.get("maximize") else 1.0
            b1 = b1b + (b1a - b1b) * math.exp(-(((t - 1) / b1c) ** 2))
            for i in idx:
                G = sign * grads[i]
                s.setdefault(i, torch.full_like(G, hp["lr"]))
                g = b1 * g_prev[i] + (1 - b1) * G
                if b2 >= 0:
                    h[i] = b2 * h[i] + (1 - b2) * G * G
                P = torch.ones_like(G)
                n = int(p_frozen * G.numel())
                if t_hist > 0 and t > t_hist and n > 0:
                    kth = score[i].flatten().sort(descending=True).values[n - 1]
                    P[score[i] >= 0.999999 * kth] = 0.0
                prod = g_prev[i] * g * P
                s[i] = torch.where(prod > 0, (s[i] * eta_plus).clamp(max=s_max),
                                   torch.where(prod < 0, (s[i] * eta_minus).clamp(min=s_min), s[i]))
                if b2 >= 0:
                    u = g / (1 - b1 ** t) / (torch.sqrt(h[i] / (1 - b2 ** t)) + hp["eps"])
                else:
                    u = torch.sign(g)
                delta = u * P * s[i]
                if t_hist > 0:
                    keep = 1.0 if t <= t_hist else 1 - 1 / t_hist
                    score[i] = keep * score[i] + g * delta / t_hist
                x[i] = (1 - hp["weight_decay"] * delta.abs()) * x[i] - delta
                g_prev[i] = g
        out.append([v.clone() for v in x])
    return out


DEFAULTS = dict(lr=1e-3, step_sizes=(1e-6, 1e-2), etas=(0.7375, 1.2), betas=(0.7375, 0.8125, 250.0, 0.99),
                eps=1e-8, weight_decay=0.1, score_history=0, frozen=0.0)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_matches_the_papers_equations_every_step(setting):
    hp, spec = SETTINGS[setting]
    start, stream = _stream()
    ours, *_ = _run(lambda g: CoRe(g, **hp), spec)
    expected = _paper_core(start, stream, [(idx, {**DEFAULTS, **hp, **over}) for idx, over in spec])
    _assert_same(ours, expected, 1e-12)


# ----------------------------------------------------------------------------------- first steps by hand
def test_first_two_steps_by_hand():
    """t = 1: β₁ = β₁a, g₁ = (1−β₁a)G, h₁ = 0.01G², g₀g₁ = 0 so s₁ = s₀ = lr, u₁ = G/(|G| + ε);
    θ₁ = θ₀ − d|Δ|θ₀ − Δ with Δ = u₁s₁. t = 2 with G₂ = G: same sign, s₂ = 1.2·s₁."""
    lr, d, eps = 1e-3, 0.1, 1e-8
    x = torch.tensor([1.0, -3.0], dtype=torch.float64, requires_grad=True)
    opt = CoRe([x], lr=lr)
    G = torch.tensor([2.0, -0.5], dtype=torch.float64)
    x.grad = G.clone()
    opt.step()
    u1 = [2.0 / (2.0 + eps), -0.5 / (0.5 + eps)]
    want1 = [1.0 - d * abs(u1[0]) * lr * 1.0 - u1[0] * lr, -3.0 - d * abs(u1[1]) * lr * -3.0 - u1[1] * lr]
    assert x.detach().tolist() == pytest.approx(want1, rel=1e-14)
    assert opt.state[x]["step_size"].tolist() == [lr, lr]
    assert opt.state[x]["exp_avg"].tolist() == pytest.approx([0.2625 * 2.0, -0.2625 * 0.5], rel=1e-14)

    x.grad = G.clone()
    opt.step()
    b1 = 0.8125 + (0.7375 - 0.8125) * math.exp(-((1 / 250) ** 2))
    g2 = [(b1 * 0.2625 + (1 - b1)) * v for v in (2.0, -0.5)]           # g₂ = β₁g₁ + (1−β₁)G
    h2 = [(0.99 * 0.01 + 0.01) * v * v for v in (2.0, -0.5)]          # h₂ = 0.99h₁ + 0.01G²
    s2 = 1.2 * lr
    u2 = [gi / (1 - b1 ** 2) / (math.sqrt(hi / (1 - 0.99 ** 2)) + eps) for gi, hi in zip(g2, h2)]
    want2 = [w - d * abs(u) * s2 * w - u * s2 for w, u in zip(want1, u2)]
    assert opt.state[x]["step_size"].tolist() == pytest.approx([s2, s2], rel=1e-15)
    assert x.detach().tolist() == pytest.approx(want2, rel=1e-14)


def test_step_sizes_grow_and_shrink_within_their_bounds():
    x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = CoRe([x], lr=0.01, step_sizes=(1e-3, 0.05), weight_decay=0.0)
    sizes = []
    for t in range(60):
        x.grad = torch.tensor([1.0, 1.0 if t < 30 else -1.0], dtype=torch.float64)  # 2nd coordinate flips once
        opt.step()
        sizes.append(opt.state[x]["step_size"].clone())
    assert sizes[20][0] == 0.05 and sizes[-1][0] == 0.05                       # grew by 1.2 per step to s_max
    assert all(float(s.min()) >= 1e-3 and float(s.max()) <= 0.05 for s in sizes)
    shrunk = [float(s[1]) for s in sizes[30:]]
    assert min(shrunk) == pytest.approx(0.05 * 0.7375, rel=1e-14)  # the EMA's sign flip: ×η− once
    assert shrunk[-1] == 0.05  # then the new sign persists and the step size grows back


def test_the_most_important_weights_are_frozen_after_the_history():
    """With t_hist = 5 and p_frozen = 0.25 of 8 weights, the 2 with the largest score S = Σ gΔ/t_hist stop moving
    at t = 6 (here: the two with the largest constant gradients), and their step sizes are left as they were."""
    x = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    opt = CoRe([x], lr=0.01, step_sizes=(1e-6, 1.0), score_history=5, frozen=0.25, weight_decay=0.0)
    g = torch.tensor([1.0, 9.0, 2.0, 3.0, 8.0, 0.5, 1.5, 2.5], dtype=torch.float64)
    for _ in range(5):
        x.grad = g.clone()
        opt.step()
    before, sizes = x.detach().clone(), opt.state[x]["step_size"].clone()
    x.grad = g.clone()
    opt.step()
    moved = x.detach() != before
    assert moved.tolist() == [True, False, True, True, False, True, True, True]
    assert torch.equal(opt.state[x]["step_size"][[1, 4]], sizes[[1, 4]])
    grown = [0, 2, 3, 5, 6, 7]
    torch.testing.assert_close(opt.state[x]["step_size"][grown], 1.2 * sizes[grown], rtol=1e-15, atol=0)


# ----------------------------------------------------------------------------- lr: s₀ and the schedule
def test_lr_sets_the_initial_step_size_and_a_schedule_scales_the_updates():
    def two_steps(scale):
        x = torch.ones(3, dtype=torch.float64, requires_grad=True)
        opt = CoRe([x], lr=0.01, step_sizes=(1e-6, 1.0))
        x.grad = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
        opt.step()
        mid = x.detach().clone()
        opt.param_groups[0]["lr"] = 0.01 * scale  # as an LR scheduler would
        x.grad = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
        opt.step()
        return mid, x.detach() - mid, opt.state[x]["step_size"].clone()

    mid, full, sizes = two_steps(1.0)
    assert sizes.tolist() == pytest.approx([0.012] * 3, rel=1e-15)  # s₀ = lr, then ×1.2
    _, half, sizes_half = two_steps(0.5)
    # the step sizes adapt as before; the update (and the decay ∝ |Δ|) are halved
    assert torch.equal(sizes, sizes_half)
    torch.testing.assert_close(half, 0.5 * full, rtol=1e-12, atol=0)
    _, none, _ = two_steps(0.0)
    assert torch.equal(none, torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("kw, match", [
    ({"betas": (0.9, 0.99)}, r"betas.*expected a tuple of 4"), ({"betas": (0.9, 0.8, 0.0, 0.99)}, r"betas\[2\]"),
    ({"betas": (0.9, 0.8, 250.0, 1.0)}, r"betas\[3\]"), ({"etas": (1.2, 0.5)}, "etas"),
    ({"step_sizes": (0.1, 0.01)}, "step_sizes"), ({"step_sizes": (0.0, 0.01)}, "step_sizes"),
    ({"score_history": -1}, "score_history"), ({"score_history": 2.5}, "score_history"),
    ({"frozen": 1.5}, "frozen"), ({"weight_decay": -0.1}, "weight_decay"),
])
def test_invalid_hyperparameters_raise_value_error_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        CoRe([torch.zeros(2, requires_grad=True)], **kw)


def test_decay_mode_is_not_an_option():
    with pytest.raises(TypeError, match="decay_mode"):
        CoRe([torch.zeros(2, requires_grad=True)], decay_mode="decoupled")
