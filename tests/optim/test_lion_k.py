"""Lion-𝒦: k="l1" is Lion bit for bit; every 𝒦 against the paper's update written here in the paper's own sign
convention (momentum of −∇f, x ← x + η(∇𝒦(m̃) − λx)), hand-computed first steps, and the constraint the decay
enforces (‖θ‖ ≤ 1/λ in 𝒦's dual norm)."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import LionK

from .test_parity import SHAPES, _assert_close_runs, _run_impl


# ------------------------------------------------------------------------------------ Lion, bit for bit
@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("extra", [{}, {"weight_decay": 0.3, "betas": (0.8, 0.95)}, {"cautious": True},
                                   {"weight_decay": 0.1, "decay_mode": "independent", "maximize": True}],
                         ids=["defaults", "decay-betas", "cautious", "independent-maximize"])
def test_l1_is_lion_bit_for_bit(impl, extra):
    gen = torch.Generator().manual_seed(0)
    shapes = [(6, 5), (5,), (2, 3, 2)]
    start = [torch.randn(s, generator=gen, dtype=torch.float32) for s in shapes]
    ours = [x.clone().requires_grad_() for x in start]
    lion = [x.clone().requires_grad_() for x in start]
    a = optfit.create_optimizer([{"params": ours[:2]}, {"params": ours[2:], "lr": 3e-3}], "lion-k", lr=1e-2,
                                impl=impl, **extra)
    b = optfit.create_optimizer([{"params": lion[:2]}, {"params": lion[2:], "lr": 3e-3}], "lion", lr=1e-2,
                                impl=impl, **extra)
    for step in range(60):
        for x, y in zip(ours, lion):
            x.grad = torch.randn(x.shape, generator=gen) * 10 ** (step % 3 - 1)
            y.grad = x.grad.clone()
        a.step(), b.step()
        for x, y in zip(ours, lion):
            assert torch.equal(x, y), f"step {step}"
    for x, y in zip(ours, lion):
        assert torch.equal(a.state[x]["exp_avg"], b.state[y]["exp_avg"])


# ----------------------------------------------------------------------- the paper's update, in its signs
def _paper_grad_k(x, k, p=None, e=None):
    """∇𝒦 per tensor, written from the paper's definitions (𝒦 = ‖x‖_p ⇒ ∇𝒦 = sign(x)|x|^{p−1}/‖x‖_p^{p−1})."""
    if k == "l1":
        return torch.sign(x)
    if k in ("l2", "lp"):
        p = 2.0 if k == "l2" else p
        norm = torch.linalg.vector_norm(x, ord=p)
        return torch.zeros_like(x) if norm == 0 else torch.sign(x) * x.abs() ** (p - 1) / norm ** (p - 1)
    if k == "huber":  # d/dx of x²/(2e) inside [−e, e], |x| − e/2 outside
        return torch.where(x.abs() <= e, x / e, torch.sign(x))
    if k == "relativistic":  # d/dx √(x² + e²)
        return x / torch.sqrt(x ** 2 + e ** 2)
    return torch.tanh(x / e)  # entropy: d/dx e·log cosh(x/e)


def _paper_lion_k(params, grads_per_step, groups, k, p=None, e=None):
    """m ← β₂m − (1−β₂)∇f ;  m̃ = β₁m_old − (1−β₁)∇f ;  x ← x + η(∇𝒦(m̃) − λx)  (arXiv 2310.05898, Lion-𝒦)."""
    xs = [x.clone() for x in params]
    ms = [torch.zeros_like(x) for x in params]
    out = []
    for grads in grads_per_step:
        for idx, hp in groups:
            b1, b2 = hp["betas"]
            for i in idx:
                m_tilde = b1 * ms[i] - (1 - b1) * grads[i]
                ms[i] = b2 * ms[i] - (1 - b2) * grads[i]
                xs[i] = xs[i] + hp["lr"] * (_paper_grad_k(m_tilde, k, p, e) - hp["weight_decay"] * xs[i])
        out.append([x.clone() for x in xs])
    return out


SHAPES_K = [(4, 3), (7,), (2, 2, 3)]
# (k, extra hyperparameters, groups: [(tensor indices, per-group overrides)])
SETTINGS = {
    "defaults": ({}, [([0, 1, 2], {})]),
    "decay-betas": ({"lr": 0.03, "weight_decay": 0.5, "betas": (0.7, 0.9)}, [([0, 1, 2], {})]),
    "two-groups": ({"lr": 0.01, "weight_decay": 0.2, "betas": (0.95, 0.999)},
                   [([0, 2], {}), ([1], {"lr": 0.002, "weight_decay": 0.0})]),
}
K_CASES = [("l1", {}), ("l2", {}), ("lp", {"p": 3.0}), ("lp", {"p": 1.5}), ("huber", {"smoothing": 0.3}),
           ("relativistic", {"smoothing": 0.2}), ("entropy", {"smoothing": 0.5}), ("huber", {})]


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("k, kw", K_CASES, ids=[f"{k}-{'-'.join(f'{a}{b}' for a, b in kw.items())}"
                                                   for k, kw in K_CASES])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_matches_the_papers_update_every_step(k, kw, setting, impl):
    hp, group_spec = SETTINGS[setting]
    defaults = {"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0, **hp}
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES_K]
    stream = [[torch.randn(s, generator=gen, dtype=torch.float64) * 0.3 for s in SHAPES_K] for _ in range(60)]
    params = [x.clone().requires_grad_() for x in start]
    opt = LionK([{"params": [params[i] for i in idx], **over} for idx, over in group_spec], k=k, impl=impl,
                **hp, **kw)
    oracle_groups = [(idx, {**defaults, **over}) for idx, over in group_spec]
    expected = _paper_lion_k(start, stream, oracle_groups, k, kw.get("p"), kw.get("smoothing", 1e-3))
    for step, (grads, want) in enumerate(zip(stream, expected)):
        for x, g in zip(params, grads):
            x.grad = g.clone()
        opt.step()
        for x, w in zip(params, want):
            torch.testing.assert_close(x.detach(), w, rtol=1e-12, atol=1e-14, msg=lambda m: f"step {step}: {m}")


# ------------------------------------------------------------------------------------ first steps by hand
@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("k, kw, grad_k", [
    ("l1", {}, [1.0, -1.0]),
    ("l2", {}, [0.6, -0.8]),                                                   # c/‖c‖ with c = (0.3, −0.4)
    ("lp", {"p": 3.0}, [0.09 / 0.091 ** (2 / 3), -0.16 / 0.091 ** (2 / 3)]),  # |c|²/‖c‖₃², ‖c‖₃³ = 0.091
    ("huber", {"smoothing": 0.5}, [0.6, -0.8]),                                # c/e inside the band
    ("huber", {"smoothing": 0.2}, [1.0, -1.0]),                                # clipped outside it
    ("relativistic", {"smoothing": 0.3}, [0.3 / math.sqrt(0.18), -0.8]),     # c/√(c² + e²)
    ("entropy", {"smoothing": 0.4}, [math.tanh(0.75), -math.tanh(1.0)]),
])
def test_first_step_by_hand(k, kw, grad_k, impl):
    """m = 0, so c = (1−β₁)g = (0.3, −0.4) for g = (3, −4); θ₁ = θ₀(1 − ηλ) − η∇𝒦(c), then m = (1−β₂)g."""
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = LionK([x], lr=0.1, weight_decay=0.5, k=k, impl=impl, **kw)
    x.grad = torch.tensor([3.0, -4.0], dtype=torch.float64)
    opt.step()
    want = [1.0 * 0.95 - 0.1 * grad_k[0], -2.0 * 0.95 - 0.1 * grad_k[1]]
    assert x.detach().tolist() == pytest.approx(want, rel=1e-14, abs=1e-15)
    assert opt.state[x]["exp_avg"].tolist() == pytest.approx([0.03, -0.04], rel=1e-14)


@pytest.mark.parametrize("k, kw", [("l2", {}), ("lp", {"p": 4.0})])
def test_zero_momentum_does_not_move_or_make_nans(k, kw):
    x = torch.ones(3, dtype=torch.float64, requires_grad=True)
    opt = LionK([x], lr=0.1, k=k, **kw)
    x.grad = torch.zeros(3, dtype=torch.float64)
    opt.step()
    assert torch.equal(x.detach(), torch.ones(3, dtype=torch.float64))


def test_lp_handles_values_whose_pth_power_overflows():
    x = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    opt = LionK([x], lr=1.0, betas=(0.0, 0.0), k="lp", p=8.0)
    x.grad = torch.tensor([1e30, -1e30, 0.0])  # |c|⁸ = 1e240 overflows float32
    opt.step()
    s = 2 ** (-7 / 8)  # ∇𝒦 = sign(c)(|c|/‖c‖₈)⁷ with ‖c‖₈ = 2^{1/8}·1e30
    torch.testing.assert_close(x.detach(), torch.tensor([-s, s, 0.0]), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------- the constraint Lion-𝒦 solves
@pytest.mark.parametrize("k, kw, dual_norm", [
    ("l1", {}, lambda x: x.abs().max()),                                   # 𝒦 = ‖·‖₁ → ‖θ‖∞ ≤ 1/λ
    ("l2", {}, lambda x: torch.linalg.vector_norm(x)),                     # 𝒦 = ‖·‖₂ → ‖θ‖₂ ≤ 1/λ
    ("lp", {"p": 3.0}, lambda x: torch.linalg.vector_norm(x, ord=1.5)),    # 𝒦 = ‖·‖₃ → ‖θ‖_{3/2} ≤ 1/λ
])
def test_decay_drives_theta_onto_the_dual_norm_ball(k, kw, dual_norm):
    """Under a constant gradient the fixed point is λθ = −∇𝒦(g): on the boundary ‖θ‖_q = 1/λ of the dual ball."""
    lam = 2.0
    x = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    g = torch.tensor([-1.0, 2.0, -0.5, 3.0, 0.25], dtype=torch.float64)
    opt = LionK([x], lr=0.01, weight_decay=lam, k=k, **kw)
    for _ in range(3000):
        x.grad = g.clone()
        opt.step()
    assert float(dual_norm(x.detach())) == pytest.approx(1 / lam, rel=1e-9)
    assert torch.equal(torch.sign(x.detach()), -torch.sign(g))


# -------------------------------------------------------------------------------- fast path, registry
@pytest.mark.parametrize("name", ["lion-k-l2", "lion-k-huber", "lion-k-relativistic", "lion-k-entropy"])
@pytest.mark.parametrize("extra", [{}, {"cautious": True, "weight_decay": 0.1}], ids=["plain", "cautious-decay"])
def test_foreach_matches_reference_in_float64(name, extra):
    ref = _run_impl(name, "reference", SHAPES, torch.float64, 20, extra)
    fast = _run_impl(name, "foreach", SHAPES, torch.float64, 20, extra)
    _assert_close_runs(ref, fast, rtol=1e-13, atol=1e-15)


def test_named_variants_are_presets_of_k():
    for k in ("l2", "huber", "relativistic", "entropy"):
        info = optfit.optimizer_info(f"lion-k-{k}")
        assert info.cls is LionK and dict(info.preset) == {"k": k} and info.family == "sign-based"
    assert optfit.optimizer_info("lion-k").defaults["k"] == "l1"


@pytest.mark.parametrize("kw, match", [({"k": "l3"}, "k"), ({"k": "lp"}, "p"), ({"k": "lp", "p": 0.5}, "p"),
                                       ({"smoothing": 0.0}, "smoothing"), ({"p": "x"}, "p")])
def test_invalid_arguments_raise_value_error_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        LionK([torch.zeros(2, requires_grad=True)], **kw)
