"""OASIS (arXiv 2109.05198): hand-computed first steps, the paper's Algorithm 1 written out independently and
followed step for step, the step-size oracles (η = ½ = 1/(2L) with an exact diagonal Hessian; the local term
between 1/(2λ_max) and 1/(2λ_min) of D̂^{-½}HD̂^{-½}), the Hutchinson expectation of the curvature estimate, and
the contract details of a Hessian optimizer (create_graph, resume with the generator and η)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optfit.optim import OASIS, oasis_step_size

from .problems import TinyNet, backward

F64 = torch.float64


# ------------------------------------------------------------------------------------------- helpers
def _rademacher(x, gen):
    return torch.randint(0, 2, x.shape, generator=gen, dtype=torch.int8).to(x.dtype) * 2 - 1


def _mlp_loss(ws):
    """A small nonconvex full-batch problem over three tensors (float64, fixed data)."""
    W1, b1, W2 = ws
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(16, 3, generator=gen, dtype=F64)
    Y = torch.randn(16, 2, generator=gen, dtype=F64)
    return ((torch.tanh(X @ W1.T + b1) @ W2.T - Y) ** 2).mean()


def _mlp_start():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, generator=gen, dtype=F64) * 0.7, torch.randn(4, generator=gen, dtype=F64) * 0.1,
            torch.randn(2, 4, generator=gen, dtype=F64) * 0.7]


def paper_oasis(loss_fn, start, steps, lrs, beta2=0.99, alpha=1e-5, eta0=1e-3, adaptive=True, seed=0):
    """Algorithm 1 of the paper over the concatenated parameters, with a per-tensor lr multiplier ``lrs``; the
    Rademacher draws come from a generator seeded like the optimizer's, tensor by tensor. Returns every iterate."""
    gen = torch.Generator().manual_seed(seed)
    w, D, eta, theta, w_prev, g_prev = [x.clone() for x in start], None, None, math.inf, None, None
    out = []
    for k in range(steps):
        ws = [x.detach().requires_grad_() for x in w]
        g = torch.autograd.grad(loss_fn(ws), ws, create_graph=True)
        z = [_rademacher(x, gen) for x in ws]
        hz = torch.autograd.grad(g, ws, grad_outputs=z)
        v = [zi * hi for zi, hi in zip(z, hz)]
        g = [gi.detach() for gi in g]
        D = v if k == 0 else [beta2 * d + (1 - beta2) * vi for d, vi in zip(D, v)]
        Dh = [d.abs().clamp_min(alpha) for d in D]
        if not adaptive:
            eta = 1.0
        elif k == 0:
            eta = eta0
        else:
            num = sum(float(((a - b) ** 2 * dh).sum()) for a, b, dh in zip(w, w_prev, Dh))
            den = sum(float(((a - b) ** 2 / dh).sum()) for a, b, dh in zip(g, g_prev, Dh))
            new = min(math.sqrt(1 + theta) * eta, 0.5 * math.sqrt(num / den))
            theta, eta = new / eta, new
        w_prev, g_prev = w, g
        w = [x - lr * eta * gi / dh for x, lr, gi, dh in zip(w, lrs, g, Dh)]
        out.append(w)
    return out


def _run(opt, params, loss_fn, steps):
    out = []
    for _ in range(steps):
        opt.zero_grad()
        backward(loss_fn(params), opt)
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


# ---------------------------------------------------------------------------------- the paper's algorithm
@pytest.mark.parametrize("setting", [
    dict(hp={}, lrs=(1.0, 1.0, 1.0), groups=False),
    dict(hp=dict(beta2=0.9, alpha=1e-3, eta0=0.05, seed=3), lrs=(1.0, 1.0, 0.5), groups=True),
    dict(hp=dict(adaptive_lr=False, lr=0.1, beta2=0.95, alpha=1e-2, seed=7), lrs=(0.1, 0.1, 0.1), groups=False),
], ids=["defaults", "two-groups", "fixed-lr"])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_follows_the_papers_algorithm_every_step(setting, impl):
    hp, lrs = {**setting["hp"], "impl": impl}, setting["lrs"]
    params = [x.clone().requires_grad_() for x in _mlp_start()]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": lrs[2]}] if setting["groups"] else params
    opt = OASIS(groups, **hp)
    ours = _run(opt, params, _mlp_loss, 60)
    paper = paper_oasis(_mlp_loss, _mlp_start(), 60, lrs, beta2=hp.get("beta2", 0.99), alpha=hp.get("alpha", 1e-5),
                        eta0=hp.get("eta0", 1e-3), adaptive=hp.get("adaptive_lr", True), seed=hp.get("seed", 0))
    for t, (a, b) in enumerate(zip(ours, paper)):
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12, msg=f"step {t + 1}")
    assert _mlp_loss(params) < _mlp_loss(_mlp_start())


# ------------------------------------------------------------------------------------ hand-computed steps
def _diag_quadratic(h, b):
    return lambda ps: (0.5 * h * ps[0] ** 2 - b * ps[0]).sum()


@pytest.mark.parametrize("impl", ["reference", "foreach", "compiled"])
def test_first_steps_by_hand_on_a_diagonal_quadratic(impl):
    """f = Σ ½h_i x_i² − b_i x_i: z⊙Hz = h for every z, so D = h. Step 1: x₁ = x₀ − η₀·g₀/max(|h|, α). Step 2:
    ‖Δx‖²_D̂ = Σ D̂Δx² and ‖Δg‖*² = Σ (hΔx)²/D̂ = ‖Δx‖²_D̂ where D̂ = |h| ⇒ η₁ = ½ (θ₀ = ∞); the coordinate with
    |h| < α is truncated, so there η₁ uses D̂ = α."""
    h = torch.tensor([2.0, -4.0, 0.5, 1e-9], dtype=F64)
    b = torch.tensor([1.0, 1.0, -2.0, 3e-6], dtype=F64)
    x0 = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=F64)
    x = x0.clone().requires_grad_()
    alpha, eta0 = 1e-3, 0.2
    opt = OASIS([x], alpha=alpha, eta0=eta0, impl=impl)
    loss = _diag_quadratic(h, b)
    dhat = h.abs().clamp_min(alpha)
    g0 = h * x0 - b
    x1 = x0 - eta0 * g0 / dhat
    _run(opt, [x], loss, 1)
    torch.testing.assert_close(x.detach(), x1, rtol=1e-14, atol=0)
    assert opt.last_step_size == eta0 and opt.theta == math.inf
    torch.testing.assert_close(opt.state[x]["exp_hessian_diag"], h, rtol=0, atol=0)  # D_0 = v_0

    g1 = h * x1 - b
    num = float(((x1 - x0) ** 2 * dhat).sum())
    den = float(((g1 - g0) ** 2 / dhat).sum())
    eta1 = 0.5 * math.sqrt(num / den)
    _run(opt, [x], loss, 1)
    torch.testing.assert_close(x.detach(), x1 - eta1 * g1 / dhat, rtol=1e-14, atol=0)
    assert opt.last_step_size == pytest.approx(eta1, rel=1e-14)
    assert opt.theta == pytest.approx(eta1 / eta0, rel=1e-14)
    assert eta1 > 0.5  # the truncated coordinate (|h| < α) looks stiffer in the D̂-norm than it is: a > b


def test_exact_diagonal_curvature_gives_the_step_half_and_halves_the_distance():
    """Oracle: with D̂ = H the D̂-norm smoothness is L = 1 and η_k = 1/(2L) = ½ for every k ≥ 1, so each step
    halves the distance to the minimiser x* = H⁻¹b."""
    h = torch.tensor([0.5, 3.0, 20.0, 1.0, 7.0], dtype=F64)
    b = torch.tensor([1.0, -2.0, 0.5, 0.0, 4.0], dtype=F64)
    x = torch.zeros(5, dtype=F64, requires_grad=True)
    opt = OASIS([x])
    x_star = b / h
    _run(opt, [x], _diag_quadratic(h, b), 1)
    for _ in range(20):
        before = float((x.detach() - x_star).norm())
        _run(opt, [x], _diag_quadratic(h, b), 1)
        assert opt.last_step_size == pytest.approx(0.5, rel=1e-8)  # Δx shrinks: rounding grows relatively
        assert float((x.detach() - x_star).norm()) == pytest.approx(before / 2, rel=1e-8)


def test_the_step_size_stays_within_the_smoothness_bounds_of_a_dense_quadratic():
    """Oracle: on f = ½xᵀHx the local term ½‖Δx‖_D̂/‖HΔx‖*_D̂ lies in [1/(2λ_max), 1/(2λ_min)] of
    M = D̂^{-½}HD̂^{-½}; η_k is the smaller of it and the growth bound √(1+θ)η_{k−1}."""
    gen = torch.Generator().manual_seed(2)
    Q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=F64))
    H = Q @ torch.diag(torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0, 30.0], dtype=F64)) @ Q.T
    x = torch.randn(4, generator=gen, dtype=F64).requires_grad_()
    y = torch.randn(2, generator=gen, dtype=F64).requires_grad_()
    opt = OASIS([x, y], alpha=1e-4, seed=1)

    def loss(ps):
        w = torch.cat(ps)
        return 0.5 * w @ H @ w

    _run(opt, [x, y], loss, 1)
    for _ in range(40):
        eta, theta = opt.last_step_size, opt.theta
        _run(opt, [x, y], loss, 1)
        dhat = torch.cat([opt.state[p]["exp_hessian_diag"] for p in (x, y)]).abs().clamp_min(1e-4)
        scale = dhat.rsqrt()
        lam = torch.linalg.eigvalsh(scale[:, None] * H * scale[None, :])
        growth = math.sqrt(1 + theta) * eta
        assert opt.last_step_size <= 1 / (2 * float(lam[0])) * (1 + 1e-9)
        assert opt.last_step_size >= min(growth, 1 / (2 * float(lam[-1]))) * (1 - 1e-9)
        assert opt.last_step_size <= growth * (1 + 1e-12)


def test_the_curvature_estimate_is_the_hutchinson_sample_unbiased_for_the_diagonal():
    """With β₂ = 0 D is the latest sample z⊙Hz; at a fixed point (lr = 0: nothing moves) its average over many
    draws converges to diag H (E[z_i z_j] = δ_ij) — the expectation OASIS's preconditioner rests on."""
    gen = torch.Generator().manual_seed(4)
    B = torch.randn(6, 6, generator=gen, dtype=F64)
    H = B @ B.T + torch.diag(torch.linspace(1, 3, 6, dtype=F64))
    x = torch.randn(6, generator=gen, dtype=F64).requires_grad_()
    opt = OASIS([x], lr=0.0, beta2=0.0, seed=9)
    start = x.detach().clone()
    total, n = torch.zeros(6, dtype=F64), 4000
    for _ in range(n):
        _run(opt, [x], lambda ps: 0.5 * ps[0] @ H @ ps[0], 1)
        total += opt.state[x]["exp_hessian_diag"]
    assert torch.equal(x.detach(), start)
    off = H - torch.diag(torch.diag(H))
    sigma = (off**2).sum(1).sqrt()  # the standard deviation of one sample's i-th entry
    assert ((total / n - torch.diag(H)).abs() <= 5 * sigma / math.sqrt(n)).all()


# ----------------------------------------------------------------------------------------------- the rule
def test_oasis_step_size_rule_and_its_degenerate_cases():
    # θ = ∞: purely local; ½√(a/b)
    assert oasis_step_size(1e-3, math.inf, 4.0, 1.0) == (1.0, 1000.0)
    # the growth bound √(1+θ)η binds
    eta, theta = oasis_step_size(0.1, 0.44, 100.0, 1.0)
    assert eta == pytest.approx(0.12) and theta == pytest.approx(1.2)
    # gradient unchanged while moving: local term +∞, the growth bound applies
    assert oasis_step_size(0.1, 3.0, 1.0, 0.0) == (pytest.approx(0.2), pytest.approx(2.0))
    # nothing moved: no information, η and θ kept (also when the gradient changed: stochastic noise)
    assert oasis_step_size(0.1, 3.0, 0.0, 0.0) == (0.1, 3.0)
    assert oasis_step_size(0.1, 3.0, 0.0, 5.0) == (0.1, 3.0)
    # θ = ∞ and a locally linear function: no finite step size, keep the last one
    assert oasis_step_size(0.1, math.inf, 1.0, 0.0) == (0.1, math.inf)


def test_lr_is_a_multiplier_per_group_of_one_shared_step_size():
    h = torch.tensor([2.0, 5.0], dtype=F64)
    x = torch.ones(2, dtype=F64, requires_grad=True)
    y = torch.ones(2, dtype=F64, requires_grad=True)
    opt = OASIS([{"params": [x]}, {"params": [y], "lr": 0.25}], eta0=0.1)

    def loss(ps):
        return sum((0.5 * h * p**2).sum() for p in ps)

    for _ in range(3):
        before_x, before_y = x.detach().clone(), y.detach().clone()
        opt.zero_grad()
        backward(loss([x, y]), opt)
        gx, gy = x.grad.detach().clone(), y.grad.detach().clone()
        opt.step()
        eta = opt.last_step_size
        torch.testing.assert_close(before_x - x.detach(), eta * gx / h, rtol=1e-13, atol=0)
        torch.testing.assert_close(before_y - y.detach(), 0.25 * eta * gy / h, rtol=1e-13, atol=0)


def test_coupled_weight_decay_enters_the_curvature():
    """L2 is part of F: the Hessian sample of ½λ‖x‖² is λ (z⊙z = 1), so D_0 = h + λ."""
    h = torch.tensor([1.0, 4.0], dtype=F64)
    x = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    opt = OASIS([x], weight_decay=0.5)
    _run(opt, [x], _diag_quadratic(h, torch.zeros(2, dtype=F64)), 1)
    torch.testing.assert_close(opt.state[x]["exp_hessian_diag"], h + 0.5, rtol=0, atol=0)
    torch.testing.assert_close(x.detach(), torch.tensor([1.0, -1.0], dtype=F64) * (1 - 1e-3), rtol=1e-14, atol=0)


def test_decoupled_weight_decay_uses_the_adaptive_step():
    h = torch.tensor([1.0, 4.0], dtype=F64)
    x = torch.tensor([1.0, -1.0], dtype=F64, requires_grad=True)
    x0 = x.detach().clone()
    opt = OASIS([x], weight_decay=0.5, decay_mode="decoupled", eta0=0.1)
    _run(opt, [x], _diag_quadratic(h, torch.zeros(2, dtype=F64)), 1)
    torch.testing.assert_close(x.detach(), x0 * (1 - 0.1 * 0.5) - 0.1 * x0, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------------------- the contract
def _train(steps=4, **kw):
    model = TinyNet(torch.float64)
    opt = OASIS(model.parameters(), **kw)
    for _ in range(steps):
        opt.zero_grad()
        backward(model(), opt)
        opt.step()
    return model, opt


def test_resume_is_bit_exact_including_the_generator_and_the_step_size():
    model, opt = _train(steps=3, seed=7)
    saved_model, saved = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved["optfit"]["last_step_size"] == opt.last_step_size and saved["optfit"]["theta"] == opt.theta
    for _ in range(3):
        opt.zero_grad()
        backward(model(), opt)
        opt.step()
    model2 = TinyNet(torch.float64)
    model2.load_state_dict(saved_model)
    opt2 = OASIS(model2.parameters(), seed=123)  # the checkpoint's generator replaces this seed's
    opt2.load_state_dict(saved)
    for _ in range(3):
        opt2.zero_grad()
        backward(model2(), opt2)
        opt2.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    assert opt2.last_step_size == opt.last_step_size and opt2.theta == opt.theta


def test_missing_create_graph_is_a_clear_error_and_moves_nothing():
    model = TinyNet()
    opt = OASIS(model.parameters())
    assert opt.needs_create_graph and opt.next_step_needs_graph()
    model().backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match=r"create_graph=True"):
        opt.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)) and not opt.state


def test_gradients_are_detached_after_the_step():
    model, _ = _train(steps=1)
    assert all(p.grad is not None and p.grad.grad_fn is None for p in model.parameters())


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_hessian_follows_the_policy(policy):
    """f = Σ|x|^1.5 at x = 0: finite gradient (0), infinite curvature."""
    x = torch.zeros(3, dtype=F64, requires_grad=True)
    opt = OASIS([x], nonfinite=policy)
    gen = opt.generator.get_state()
    opt.zero_grad()
    backward((x.abs() ** 1.5).sum(), opt)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="Hessian estimate in parameter 0"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    assert torch.equal(x, torch.zeros(3, dtype=F64)) and not opt.state[x] and opt.last_step_size is None
    assert torch.equal(opt.generator.get_state(), gen)


@pytest.mark.parametrize("bad", [{"beta2": 1.0}, {"alpha": 0.0}, {"eta0": 0.0}, {"adaptive_lr": 1}, {"seed": 0.5},
                                 {"cautious": True}])
def test_invalid_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        OASIS([torch.zeros(2, requires_grad=True)], **bad)


@pytest.mark.compiled
def test_compiled_step_is_the_eager_step():
    models = [TinyNet(), TinyNet()]
    opts = [OASIS(m.parameters()) for m in models]
    steps = [opts[0].step, torch.compile(opts[1].step)]
    for _ in range(3):
        for model, opt, step in zip(models, opts, steps):
            opt.zero_grad()
            backward(model(), opt)
            step()
    for p, q in zip(*(m.parameters() for m in models)):
        assert torch.equal(p, q)
