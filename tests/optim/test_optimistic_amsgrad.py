"""Optimistic AMSGrad (arXiv 1903.01435): the RMPE guess (oracle: it finds the limit of a linear fixed-point
sequence), hand-computed first steps, and the paper's Algorithm 2 — written out with its second sequence w_{t−½}
stored explicitly — followed step for step."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.optim import OptimisticAMSGrad, rmpe_weights

F64 = torch.float64


# ---------------------------------------------------------------------------------------- the extrapolation
def rmpe(points, reg):
    """Algorithm 3 on the flat vectors x_0..x_k (k ≥ 1): U = [x_1 − x_0, …], (UᵀU/‖UᵀU‖_F + λI)z = 1,
    c = z/Σz, Σ_{i<k} c_i x_i."""
    X = torch.stack(points)
    U = X[1:] - X[:-1]
    G = U @ U.T
    norm = torch.linalg.matrix_norm(G)
    A = (G / norm if norm > 0 else G) + reg * torch.eye(len(points) - 1, dtype=F64)
    z = torch.linalg.solve(A, torch.ones(len(points) - 1, dtype=F64))
    return (z / z.sum()) @ X[:-1]


def test_rmpe_finds_the_limit_of_a_linear_fixed_point_iteration():
    """Oracle (Scieur et al.): x_{s+1} − x* = A(x_s − x*) with A of d distinct eigenvalues. Σc_i(x_{i+1} − x_i) = 0
    with Σc_i = 1 means p(A)(x_0 − x*) = 0 for p(λ) = Σc_iλ^i, so r = d+1 differences give the minimal polynomial
    and, with λ → 0, Σc_i x_i = x* exactly: the limit, not the last point."""
    gen = torch.Generator().manual_seed(0)
    r, n = 4, 12
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64))
    eig = torch.tensor([0.9, -0.5, 0.3], dtype=F64).repeat_interleave(4)
    A = Q @ torch.diag(eig) @ Q.T
    x_star = torch.randn(n, generator=gen, dtype=F64)
    xs = [torch.randn(n, generator=gen, dtype=F64)]
    for _ in range(r):
        xs.append(x_star + A @ (xs[-1] - x_star))
    X = torch.stack(xs)
    U = X[1:] - X[:-1]
    c = rmpe_weights(U @ U.T, r, 1e-13)
    torch.testing.assert_close(c @ X[:-1], x_star, rtol=0, atol=1e-6)
    assert float((xs[-1] - x_star).norm()) > 0.5  # the last point itself is far from x*
    torch.testing.assert_close(c @ X[:-1], rmpe(xs, 1e-13), rtol=0, atol=1e-9)


def test_rmpe_weights_sum_to_one_and_empty_slots_get_zero():
    gen = torch.Generator().manual_seed(1)
    U = torch.randn(4, 7, generator=gen, dtype=F64)
    for filled in range(1, 5):
        c = rmpe_weights(U @ U.T, filled, 1e-3)
        assert float(c.sum()) == pytest.approx(1.0, abs=1e-12)
        assert torch.equal(c[: 4 - filled], torch.zeros(4 - filled, dtype=F64))
        sub = U[4 - filled:]
        torch.testing.assert_close(c[4 - filled:], rmpe_weights(sub @ sub.T, filled, 1e-3), rtol=1e-12, atol=1e-14)
    assert torch.equal(rmpe_weights(U @ U.T, 0, 1e-3), torch.zeros(4, dtype=F64))
    # a constant sequence (U = 0): no direction to extrapolate, c is the plain average
    torch.testing.assert_close(rmpe_weights(torch.zeros(3, 3, dtype=F64), 3, 1e-3), torch.full((3,), 1 / 3, dtype=F64))


# --------------------------------------------------------------------------------------- the paper's loop
def paper_opt_amsgrad(grad_fn, start, steps, lrs, betas=(0.9, 0.99), eps=1e-8, span=5, reg=1e-3, weight_decay=0.0,
                      decoupled=False):
    """Algorithm 2 with the second sequence w_{t−½} stored: w_{t+½} = δ·w_{t−½} − ηθ̂_t/D_t,
    w_{t+1} = w_{t+½} − ηĥ_{t+1}/D_t, h_{t+1} = β₁θ_{t−1} + (1−β₁)m_{t+1}, m_{t+1} = RMPE of the last span+1
    gradients (g_t itself at t = 1), per tensor. Returns every iterate w_t."""
    b1, b2 = betas
    w = [x.clone() for x in start]
    half = [x.clone() for x in start]
    theta = [torch.zeros_like(x) for x in start]
    v = [torch.zeros_like(x) for x in start]
    vhat = [torch.zeros_like(x) for x in start]
    hist = [[] for _ in start]
    out = []
    for t in range(1, steps + 1):
        grads = grad_fn(w)
        new_w = []
        for i, (x, g, lr) in enumerate(zip(w, grads, lrs)):
            if weight_decay and not decoupled:
                g = g + weight_decay * x
            pts = [q.flatten() for q in hist[i]] + [g.flatten()]
            guess = rmpe(pts, reg).reshape(g.shape) if len(pts) > 1 else g
            h = b1 * theta[i] + (1 - b1) * guess
            theta[i] = b1 * theta[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            vhat[i] = torch.maximum(vhat[i], v[i])
            D = vhat[i].sqrt() / math.sqrt(1 - b2**t) + eps
            bc1 = 1 - b1**t
            delta = 1 - lr * weight_decay if decoupled else 1.0
            half[i] = delta * half[i] - lr * theta[i] / bc1 / D
            new_w.append(half[i] - lr * h / bc1 / D)
            hist[i] = (hist[i] + [g])[-span:]
        w = new_w
        out.append(w)
    return out


def _mlp_grads(ws):
    W1, b1, W2 = [x.detach().requires_grad_() for x in ws]
    gen = torch.Generator().manual_seed(5)
    X = torch.randn(16, 3, generator=gen, dtype=F64)
    Y = torch.randn(16, 2, generator=gen, dtype=F64)
    loss = ((torch.tanh(X @ W1.T + b1) @ W2.T - Y) ** 2).mean()
    return torch.autograd.grad(loss, [W1, b1, W2])


def _start():
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(4, 3, generator=gen, dtype=F64), torch.randn(4, generator=gen, dtype=F64),
            torch.randn(2, 4, generator=gen, dtype=F64)]


@pytest.mark.parametrize("setting", [
    dict(hp={}, lrs=(1e-3,) * 3, groups=False),
    dict(hp=dict(lr=0.02, betas=(0.8, 0.95), span=3, reg=1e-2, weight_decay=0.1, decay_mode="decoupled"),
         lrs=(0.02, 0.02, 0.01), groups=True),
    dict(hp=dict(lr=0.01, span=1, eps=1e-6, weight_decay=0.05), lrs=(0.01,) * 3, groups=False),
], ids=["defaults", "two-groups-decoupled", "span1-coupled"])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_follows_the_papers_algorithm_every_step(setting, impl):
    hp, lrs = setting["hp"], setting["lrs"]
    params = [x.clone().requires_grad_() for x in _start()]
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": lrs[2]}] if setting["groups"] else params
    opt = OptimisticAMSGrad(groups, impl=impl, **hp)
    paper = paper_opt_amsgrad(_mlp_grads, _start(), 60, lrs, betas=hp.get("betas", (0.9, 0.99)),
                              eps=hp.get("eps", 1e-8), span=hp.get("span", 5), reg=hp.get("reg", 1e-3),
                              weight_decay=hp.get("weight_decay", 0.0), decoupled="decay_mode" in hp)
    for t, expected in enumerate(paper):
        for p, g in zip(params, _mlp_grads(params)):
            p.grad = g
        opt.step()
        for p, e in zip(params, expected):
            torch.testing.assert_close(p.detach(), e, rtol=1e-10, atol=1e-12, msg=f"step {t + 1}")


# ------------------------------------------------------------------------------------ hand-computed steps
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_first_three_steps_by_hand(impl):
    """Step 1: guess = g₁, so s = η(θ̂₁ + ĥ₂)/D₁ = 2η g₁/(|g₁| + ε). Step 2: one stored gradient, one column:
    c = [1], guess = g₁; the last offset u₂ = ĥ₂/D₁ is taken back. Step 3: two columns, c from the 2×2 system."""
    lr, (b1, b2), eps, reg = 0.1, (0.9, 0.99), 1e-8, 1e-3
    x = torch.tensor([0.5, -1.0, 2.0], dtype=F64, requires_grad=True)
    opt = OptimisticAMSGrad([x], lr=lr, betas=(b1, b2), eps=eps, span=2, reg=reg, impl=impl)
    g1 = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    g2 = torch.tensor([0.5, 1.0, 0.25], dtype=F64)
    g3 = torch.tensor([-1.0, 3.0, 0.5], dtype=F64)
    x0 = x.detach().clone()

    x.grad = g1
    opt.step()
    D1 = (1 - b2) ** 0.5 * g1.abs() / (1 - b2) ** 0.5 + eps
    x1 = x0 - lr * 2 * g1 / D1
    torch.testing.assert_close(x.detach(), x1, rtol=1e-14, atol=0)
    u2 = (1 - b1) * g1 / (1 - b1) / D1

    x.grad = g2
    opt.step()
    m1 = (1 - b1) * g1
    h3 = b1 * m1 + (1 - b1) * g1  # guess g₁
    m2 = b1 * m1 + (1 - b1) * g2
    v2 = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    vmax2 = torch.maximum((1 - b2) * g1**2, v2)
    D2 = vmax2.sqrt() / math.sqrt(1 - b2**2) + eps
    bc2 = 1 - b1**2
    x2 = x1 - lr * (m2 / bc2 / D2 + h3 / bc2 / D2 - u2)
    torch.testing.assert_close(x.detach(), x2, rtol=1e-13, atol=0)
    u3 = h3 / bc2 / D2

    x.grad = g3
    opt.step()
    d1, d2 = g2 - g1, g3 - g2
    G = torch.tensor([[d1 @ d1, d1 @ d2], [d2 @ d1, d2 @ d2]], dtype=F64)
    A = G / torch.linalg.matrix_norm(G) + reg * torch.eye(2, dtype=F64)
    det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
    z = torch.stack([A[1, 1] - A[0, 1], A[0, 0] - A[1, 0]]) / det  # A⁻¹·1 by Cramer's rule
    c = z / z.sum()
    guess = c[0] * g1 + c[1] * g2
    h4 = b1 * m2 + (1 - b1) * guess
    m3 = b1 * m2 + (1 - b1) * g3
    v3 = b2 * v2 + (1 - b2) * g3**2
    D3 = torch.maximum(vmax2, v3).sqrt() / math.sqrt(1 - b2**3) + eps
    bc3 = 1 - b1**3
    x3 = x2 - lr * (m3 / bc3 / D3 + h4 / bc3 / D3 - u3)
    torch.testing.assert_close(x.detach(), x3, rtol=1e-12, atol=0)
    torch.testing.assert_close(opt.state[x]["grad_history"], torch.stack([g2, g3]), rtol=0, atol=0)


def test_an_lr_change_rescales_the_pending_offset():
    """w_{t−½} is w_t + η_t u_t with the step's own lr (the paper's η_t indexing): at lr = 0 nothing moves, and
    when the lr comes back the offset is taken back at the new lr."""
    x = torch.tensor([1.0, -2.0], dtype=F64, requires_grad=True)
    opt = OptimisticAMSGrad([x], lr=0.1)
    x.grad = torch.tensor([0.3, 0.6], dtype=F64)
    opt.step()
    u = opt.state[x]["optimistic_step"].clone()
    opt.param_groups[0]["lr"] = 0.0
    frozen = x.detach().clone()
    x.grad = torch.tensor([0.1, -0.2], dtype=F64)
    opt.step()
    assert torch.equal(x.detach(), frozen)
    assert not torch.equal(opt.state[x]["optimistic_step"], u)  # the statistics still move


@pytest.mark.parametrize("bad", [{"span": 0}, {"reg": 0.0}, {"reg": -1.0}])
def test_invalid_hyperparameters(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        OptimisticAMSGrad([torch.zeros(2, requires_grad=True)], **bad)


def test_compiled_is_not_offered():
    with pytest.raises(ValueError, match="impl"):
        OptimisticAMSGrad([torch.zeros(2, requires_grad=True)], impl="compiled")
