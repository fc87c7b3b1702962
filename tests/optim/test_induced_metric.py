"""The induced-metric optimisers: every step against a loop of the author's update (one global EMA of
τ = ξ gᵀP⁻¹g over all parameters, as in his JAX code), first steps by hand, τ global across param groups, the
smooth clipping bound, and the log embedding's use of the loss."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import InducedMetric, InducedMetricLog

from .test_parity import SHAPES, _assert_close_runs, _run_impl

SHAPES_IM = [(4, 3), (6,), (2, 3, 2)]
TARGETS_SEED = 5


def _problem():
    gen = torch.Generator().manual_seed(TARGETS_SEED)
    start = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES_IM]
    target = [2 * torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES_IM]
    curv = [0.5 + 3 * torch.rand(s, generator=gen, dtype=torch.float64) for s in SHAPES_IM]
    return start, target, curv


def _loss_and_grads(xs, target, curv):
    """f = Σ ½c(x − t)² + log cosh(x − t) + 0.1 (> 0), its gradient."""
    loss = sum(float((0.5 * c * (x - t) ** 2 + torch.log(torch.cosh(x - t))).sum())
               for x, t, c in zip(xs, target, curv))
    grads = [c * (x - t) + torch.tanh(x - t) for x, t, c in zip(xs, target, curv)]
    return loss + 0.1, grads


def _author_update(start, groups, steps, preconditioner, log=False):
    """The author's optimiser (his ``custom_sgd`` / ``custom_sgd_rms`` / ``custom_sgd_log``), here over param groups
    sharing ξ and β: τ = ξ Σ_all g² (or g²/(√v̂+ε)); τ̄ ← βτ̄ + (1−β)τ; τ̂ = τ̄/(1−βᵗ); a = 1/(1+|τ̂|) (log: L/(L²+τ̂));
    θ ← θ − η·a·m̂ (÷ (√v̂+ε)) − ηλθ."""
    _, target, curv = _problem()
    xs = [x.clone() for x in start]
    ms = [torch.zeros_like(x) for x in xs]
    vs = [torch.zeros_like(x) for x in xs]
    tau_bar, out = 0.0, []
    hp0 = groups[0][1]
    for t in range(1, steps + 1):
        loss, grads = _loss_and_grads(xs, target, curv)
        b1, b2 = hp0["betas"]
        denoms = [torch.sqrt(v_new / (1 - b2 ** t)) + hp0["eps"] for v_new in
                  (b2 * v + (1 - b2) * g * g for v, g in zip(vs, grads))]
        if preconditioner == "adam":
            tau = hp0["xi"] * sum(float((g * g / d).sum()) for g, d in zip(grads, denoms))
        else:
            tau = hp0["xi"] * sum(float((g * g).sum()) for g in grads)
        tau_bar = hp0["metric_beta"] * tau_bar + (1 - hp0["metric_beta"]) * tau
        tau_hat = tau_bar / (1 - hp0["metric_beta"] ** t)
        a = loss / (loss ** 2 + tau_hat) if log else 1 / (1 + abs(tau_hat))
        for idx, hp in groups:
            for i in idx:
                ms[i] = b1 * ms[i] + (1 - b1) * grads[i]
                vs[i] = b2 * vs[i] + (1 - b2) * grads[i] ** 2
                d = ms[i] / (1 - b1 ** t)
                if preconditioner == "adam":
                    d = d / denoms[i]
                xs[i] = xs[i] - hp["lr"] * a * d - hp["lr"] * hp["weight_decay"] * xs[i]
        out.append([x.clone() for x in xs])
    return out


def _ours(cls, groups, steps, impl="reference", **hp):
    start, target, curv = _problem()
    params = [x.clone().requires_grad_() for x in start]
    opt = cls([{"params": [params[i] for i in idx], **over} for idx, over in groups], impl=impl, **hp)
    out = []
    for _ in range(steps):
        def closure():
            opt.zero_grad()
            loss = sum((0.5 * c * (p - t) ** 2 + torch.log(torch.cosh(p - t))).sum()
                       for p, t, c in zip(params, target, curv)) + 0.1
            loss.backward()
            return loss
        opt.step(closure)
        out.append([p.detach().clone() for p in params])
    return out, opt


SETTINGS = {
    "defaults": ({}, [([0, 1, 2], {})]),
    "momentum-xi-beta-decay": ({"betas": (0.5, 0.9), "xi": 2.0, "metric_beta": 0.3, "weight_decay": 0.05},
                               [([0, 1, 2], {})]),
    "two-groups": ({"betas": (0.95, 0.999), "xi": 0.01, "eps": 1e-3},
                   [([0, 2], {}), ([1], {"lr_scale": 0.3, "weight_decay": 0.1})]),
}
LR = {"adam": 0.02, "sgd": 0.05, "log": 0.05}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("variant", ["adam", "sgd", "log"])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_matches_the_authors_update_every_step(variant, setting, impl):
    hp, spec = SETTINGS[setting]
    lr = LR[variant]
    groups = [(idx, {k: v for k, v in over.items() if k != "lr_scale"}
               | ({"lr": lr * over["lr_scale"]} if "lr_scale" in over else {})) for idx, over in spec]
    cls = InducedMetricLog if variant == "log" else InducedMetric
    precond = "sgd" if variant == "log" else variant
    ours, opt = _ours(cls, groups, 60, impl=impl, lr=lr, preconditioner=precond, **hp)
    full = {"lr": lr, "betas": (0.9, 0.99), "eps": 1e-8, "xi": 0.1, "metric_beta": 0.8, "weight_decay": 0.0, **hp}
    start, *_ = _problem()
    theirs = _author_update(start, [(idx, {**full, **over}) for idx, over in groups], 60, precond, log=variant == "log")
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-13, msg=lambda m: f"step {step + 1}: {m}")
    assert 0 < opt.last_scale < 1 or variant == "log"


# ----------------------------------------------------------------------------------- first steps by hand
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_first_sgd_step_by_hand_is_global_over_tensors(impl):
    """m̂₁ = g and τ̂₁ = ξ‖g‖² (bias corrections cancel): with g = (3) and (4) in two tensors and two groups,
    ‖g‖² = 25 and ξ = 0.1, a = 1/3.5; θ₁ = θ₀(1 − ηλ) − η·a·g."""
    x, y = (torch.tensor([1.0], dtype=torch.float64, requires_grad=True) for _ in range(2))
    opt = InducedMetric([{"params": [x]}, {"params": [y], "weight_decay": 0.5}], lr=0.1, preconditioner="sgd",
                        impl=impl)
    x.grad, y.grad = torch.tensor([3.0], dtype=torch.float64), torch.tensor([4.0], dtype=torch.float64)
    opt.step()
    assert opt.last_scale == pytest.approx(1 / 3.5, rel=1e-14)
    assert x.item() == pytest.approx(1.0 - 0.1 * 3.0 / 3.5, rel=1e-14)
    assert y.item() == pytest.approx(1.0 * 0.95 - 0.1 * 4.0 / 3.5, rel=1e-14)


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_first_adam_step_by_hand(impl):
    """v̂₁ = g², D = |g| + ε, d = g/D; τ = ξΣg²/D = ξΣ|g|·|g|/(|g|+ε); a = 1/(1+τ)."""
    eps = 1e-3
    x = torch.tensor([0.5, -0.5, 2.0], dtype=torch.float64, requires_grad=True)
    g = [1.0, -3.0, 0.5]
    opt = InducedMetric([x], lr=0.01, eps=eps, xi=0.2, impl=impl)
    x.grad = torch.tensor(g, dtype=torch.float64)
    opt.step()
    tau = 0.2 * sum(gi * gi / (abs(gi) + eps) for gi in g)
    a = 1 / (1 + tau)
    assert opt.last_scale == pytest.approx(a, rel=1e-14)
    want = [x0 - 0.01 * a * gi / (abs(gi) + eps) for x0, gi in zip([0.5, -0.5, 2.0], g)]
    assert x.detach().tolist() == pytest.approx(want, rel=1e-14)


def test_first_log_step_by_hand():
    """a = L/(L² + τ̂): with L = ½x² + 1 at x = 2 (L = 3, g = 2), ξ = 0.5: τ̂ = 2, a = 3/11."""
    x = torch.tensor([2.0], dtype=torch.float64, requires_grad=True)
    opt = InducedMetricLog([x], lr=0.1, xi=0.5)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (x ** 2).sum() + 1.0
        loss.backward()
        return loss

    opt.step(closure)
    assert opt.last_scale == pytest.approx(3 / 11, rel=1e-14)
    assert x.item() == pytest.approx(2.0 - 0.1 * 3 / 11 * 2.0, rel=1e-14)


# ------------------------------------------------------------------------------------------ properties
def test_the_metric_factor_is_the_same_whether_params_share_a_group_or_not():
    one, _ = _ours(InducedMetric, [([0, 1, 2], {})], 30, lr=0.02)
    three, _ = _ours(InducedMetric, [([0], {}), ([1], {}), ([2], {})], 30, lr=0.02)
    for a, b in zip(one, three):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-13, atol=1e-15)


def test_a_huge_gradient_is_smoothly_clipped():
    """First SGD-metric step: ‖Δθ‖ = η‖g‖/(1 + ξ‖g‖²) ≤ η/(2√ξ), whatever ‖g‖ is (max at ‖g‖ = 1/√ξ)."""
    xi, lr = 0.04, 1.0
    for norm in (0.1, 5.0, 1e3, 1e8):
        x = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = InducedMetric([x], lr=lr, xi=xi, preconditioner="sgd")
        x.grad = torch.full((4,), norm / 2, dtype=torch.float64)  # ‖g‖ = norm
        opt.step()
        moved = float(torch.linalg.vector_norm(x.detach()))
        assert moved == pytest.approx(lr * norm / (1 + xi * norm ** 2), rel=1e-12)
        assert moved <= lr / (2 * math.sqrt(xi)) * (1 + 1e-12)


def test_log_variant_refuses_a_non_positive_loss_before_changing_anything():
    x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    opt = InducedMetricLog([x], lr=0.1)

    def closure(shift):
        def fn():
            opt.zero_grad()
            loss = (x ** 2).sum() + shift
            loss.backward()
            return loss
        return fn

    opt.step(closure(1.0))
    before, state = x.detach().clone(), {k: v.clone() for k, v in opt.state[x].items()}
    with pytest.raises(ValueError, match="L > 0"):
        opt.step(closure(-10.0))
    assert torch.equal(x.detach(), before)
    assert all(torch.equal(opt.state[x][k], v) for k, v in state.items())
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()


@pytest.mark.parametrize("name", ["induced-metric", "induced-metric-sgd", "induced-metric-log"])
@pytest.mark.parametrize("extra", [{}, {"cautious": True, "weight_decay": 0.1}], ids=["plain", "cautious-decay"])
def test_foreach_matches_reference_in_float64(name, extra):
    ref = _run_impl(name, "reference", SHAPES, torch.float64, 20, extra)
    fast = _run_impl(name, "foreach", SHAPES, torch.float64, 20, extra)
    _assert_close_runs(ref, fast, rtol=1e-13, atol=1e-15)


def test_registry_variants():
    assert dict(optfit.optimizer_info("induced-metric-adam").preset) == {"preconditioner": "adam"}
    assert dict(optfit.optimizer_info("induced-metric-sgd").preset) == {"preconditioner": "sgd"}
    assert optfit.optimizer_info("induced-metric").defaults["preconditioner"] == "adam"
    info = optfit.optimizer_info("induced-metric-log")
    assert info.cls is InducedMetricLog and info.needs_closure and info.defaults["preconditioner"] == "sgd"


@pytest.mark.parametrize("kw, match", [({"xi": -1.0}, "xi"), ({"metric_beta": 1.0}, "metric_beta"),
                                       ({"preconditioner": "lbfgs"}, "preconditioner"), ({"betas": (0.9,)}, "betas")])
def test_invalid_hyperparameters_raise_value_error_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        InducedMetric([torch.zeros(2, requires_grad=True)], **kw)
