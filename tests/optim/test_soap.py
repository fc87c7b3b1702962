"""SOAP (catalogue C5): Adam in the eigenbasis on a diagonal problem, the basis refresh against a direct computation,
identity basis = torch AdamW, rotation equivariance, batched = loop, one-sided factors, first step."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import SOAP

from .problems import step_updates

F64 = torch.float64


def _orthogonal(n, gen):
    return torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q


def _grads(shape, n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen, dtype=F64) for _ in range(n)]


# ------------------------------------------------------------------------------------------ the first step
def test_first_step_builds_the_basis_and_moves_nothing():
    g = _grads((5, 3), 1)[0]
    p = torch.randn(5, 3, dtype=F64).requires_grad_()
    before = p.detach().clone()
    opt = SOAP([p], lr=0.1, weight_decay=0.5, betas=(0.9, 0.8), shampoo_beta=0.7)
    step_updates(opt, p, [g])
    assert torch.equal(p.detach(), before), "the first step must not move θ (not even by weight decay)"
    st = opt.state[p]
    assert st["step"].item() == 1.0 and not st["exp_avg"].any() and not st["exp_avg_sq"].any()
    torch.testing.assert_close(st["L"], 0.3 * g @ g.T, rtol=1e-14, atol=0)
    torch.testing.assert_close(st["R"], 0.3 * g.T @ g, rtol=1e-14, atol=0)
    for side in ("L", "R"):
        Q, F = st["Q_" + side], st[side]
        torch.testing.assert_close(Q.T @ Q, torch.eye(len(Q), dtype=F64), rtol=0, atol=1e-12)
        D = Q.T @ F @ Q  # eigenvectors: diagonal, eigenvalues descending
        torch.testing.assert_close(D, torch.diag(torch.diagonal(D)), rtol=0, atol=1e-12)
        assert (torch.diagonal(D).diff() <= 1e-12).all()


# ----------------------------------------------------------- frequency 1 on a diagonal problem = Adam there
def test_frequency_one_on_a_diagonal_problem_is_adam_in_the_eigenbasis():
    """f(W) = ½Σᵢ hᵢ(uᵢᵀWvᵢ − cᵢ)² with orthogonal U, V: every gradient is U diag(d) Vᵀ, so L, R have the eigenvectors
    U, V and SOAP (refreshing every step) is Adam on the coordinates xᵢ = uᵢᵀWvᵢ, started after the first gradient."""
    # ε = 1e-6: coordinates whose gradient is 0 carry float64 rounding noise (~1e-14) in m, which Adam divides by ε
    rows, cols, lr, b1, b2, eps, steps = 5, 7, 0.05, 0.9, 0.99, 1e-6, 40
    gen = torch.Generator().manual_seed(3)
    U, Vfull = _orthogonal(rows, gen), _orthogonal(cols, gen)
    V = Vfull[:, :rows]
    h = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=F64)
    c = torch.randn(rows, generator=gen, dtype=F64)
    W = torch.randn(rows, cols, generator=gen, dtype=F64).requires_grad_()
    W0 = W.detach().clone()
    opt = SOAP([W], lr=lr, betas=(b1, b2), eps=eps, weight_decay=0.0, precondition_frequency=1)
    for _ in range(steps):
        x = torch.diagonal(U.T @ W.detach() @ V)
        W.grad = U @ torch.diag(h * (x - c)) @ V.T
        opt.step()

    x = torch.diagonal(U.T @ W0 @ V).clone()  # the oracle: Adam (SOAP's ε convention) on x from the 2nd gradient
    m, v = torch.zeros_like(x), torch.zeros_like(x)
    for k in range(1, steps):
        d = h * (x - c)
        m = b1 * m + (1 - b1) * d
        v = b2 * v + (1 - b2) * d * d
        x = x - lr * math.sqrt(1 - b2**k) / (1 - b1**k) * m / (v.sqrt() + eps)
    assert (x - c).abs().max() < 0.5 * (torch.diagonal(U.T @ W0 @ V) - c).abs().max()  # it did move
    after, before = U.T @ W.detach() @ Vfull, U.T @ W0 @ Vfull
    torch.testing.assert_close(torch.diagonal(after), x, rtol=0, atol=1e-9)
    off = ~torch.eye(rows, cols, dtype=torch.bool)
    torch.testing.assert_close(after[off], before[off], rtol=0, atol=1e-7)  # nothing moves off the eigen-directions
    # the bases really are U and V (up to order and signs; R also has a 2-D null space)
    for Q, E in ((opt.state[W]["Q_L"], U), (opt.state[W]["Q_R"], V)):
        P = (Q.T @ E).abs()
        torch.testing.assert_close(P, (P > 0.5).to(F64), rtol=0, atol=1e-9)
        assert (P > 0.5).sum(0).eq(1).all()


# ------------------------------------------------------------------ identity basis: SOAP = torch AdamW
@pytest.mark.parametrize("case", ["no_factors", "diagonal_gradients"])
def test_identity_basis_is_torch_adamw_on_the_later_gradients(case):
    """``max_precond_dim=0`` (no factor), or diagonal gradients (GGᵀ, GᵀG diagonal: the basis is a signed
    permutation): SOAP = AdamW run on g₂, g₃, … (ε = 1e-12, so its placement before the bias correction is moot)."""
    lr, betas, wd, eps = 0.03, (0.9, 0.99), 0.1, 1e-12
    if case == "no_factors":
        shape, kw, grads = (4, 6), {"max_precond_dim": 0}, _grads((4, 6), 8, seed=1)
    else:
        scale = torch.tensor([1.0, 3.0, 0.3, 10.0, 0.1], dtype=F64)
        shape, kw = (5, 5), {"precondition_frequency": 1}
        grads = [torch.diag(scale * (1.5 + g)) for g in _grads((5,), 8, seed=2)]
    init = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    p = init.clone().requires_grad_()
    opt = SOAP([p], lr=lr, betas=betas, eps=eps, weight_decay=wd, **kw)
    q = init.clone().requires_grad_()
    ref = torch.optim.AdamW([q], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    step_updates(opt, p, grads[:1])
    for g in grads[1:]:
        step_updates(opt, p, [g])
        step_updates(ref, q, [g])
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------- the refresh (power iteration + QR), directly computed
def _direct_step(st, G, k, hp):
    """One SOAP step from the state ``st`` (dict of plain 2-D tensors, None for a side without factor), written
    out for a single matrix: returns (direction Δθ/−η without decay, new state, column orders at a refresh)."""
    b1, b2 = hp["betas"]
    QL, QR = st["Q_L"], st["Q_R"]
    I_r, I_c = torch.eye(G.shape[0], dtype=F64), torch.eye(G.shape[1], dtype=F64)
    ql, qr = (QL if QL is not None else I_r), (QR if QR is not None else I_c)
    Gp = ql.T @ G @ qr
    m = b1 * st["exp_avg"] + (1 - b1) * Gp
    v = b2 * st["exp_avg_sq"] + (1 - b2) * Gp**2
    N = ql @ (m / (v.sqrt() + hp["eps"])) @ qr.T
    if hp["normalize_grads"]:
        N = N / N.pow(2).mean().sqrt()
    if hp["correct_bias"]:
        N = N * math.sqrt(1 - b2**k) / (1 - b1**k)
    new = {"L": None, "R": None, "Q_L": QL, "Q_R": QR}
    if QL is not None:
        new["L"] = b2 * st["L"] + (1 - b2) * G @ G.T
    if QR is not None:
        new["R"] = b2 * st["R"] + (1 - b2) * G.T @ G
    orders = {}
    if k % hp["precondition_frequency"] == 0:
        M = ql @ m @ qr.T  # m in the original basis
        for side in ("L", "R"):
            Q = st["Q_" + side]
            if Q is None:
                continue
            est = torch.diag(Q.T @ new[side] @ Q)
            order = torch.argsort(est, descending=True)
            orders[side] = order
            new["Q_" + side] = torch.linalg.qr(new[side] @ Q[:, order]).Q
            v = v[order, :] if side == "L" else v[:, order]
        ql = new["Q_L"] if new["Q_L"] is not None else I_r
        qr = new["Q_R"] if new["Q_R"] is not None else I_c
        m = ql.T @ M @ qr
    new.update(exp_avg=m, exp_avg_sq=v)
    return N, new, orders


@pytest.mark.parametrize("max_dim, normalize, correct", [(100, False, True), (5, False, True), (3, True, False)])
def test_refresh_rotates_m_permutes_v_against_a_direct_computation(max_dim, normalize, correct):
    """Frequency 3: after steps 3 and 6 the basis is refreshed (sort by diag(QᵀLQ), QR(L·Q)), m rotated from the old
    basis into the new one and v permuted; between refreshes nothing is rotated. max_dim 5: only R (4×4) exists;
    max_dim 3: no factor at all."""
    shape, lr, wd = (6, 4), 0.05, 0.1
    hp = dict(betas=(0.9, 0.95), eps=1e-8, precondition_frequency=3, normalize_grads=normalize, correct_bias=correct)
    gen = torch.Generator().manual_seed(5)
    # the later gradients favour other directions than the first one, so the eigenvalue order changes
    u = torch.randn(6, 1, generator=gen, dtype=F64)
    grads = [torch.randn(shape, generator=gen, dtype=F64) * (0.2 if t else 3.0) + (t > 0) * 2.0 * u @ u[:4].T
             for t in range(8)]
    p = torch.randn(shape, generator=gen, dtype=F64).requires_grad_()
    opt = SOAP([p], lr=lr, weight_decay=wd, max_precond_dim=max_dim, **hp)
    step_updates(opt, p, grads[:1])
    st = {k: (v.clone() if v.ndim == 2 else None) for k, v in opt.state[p].items() if k != "step"}
    permuted = False
    for t, G in enumerate(grads[1:], start=1):
        before = p.detach().clone()
        step_updates(opt, p, [G])
        N, st, orders = _direct_step(st, G, t, hp)
        torch.testing.assert_close(p.detach(), before * (1 - lr * wd) - lr * N, rtol=0, atol=1e-12)
        for key, want in st.items():
            got = opt.state[p][key]
            if want is None:
                assert got.numel() == 0, key
            else:
                torch.testing.assert_close(got, want, rtol=0, atol=1e-10, msg=f"step {t + 1}: {key}")
        assert bool(orders) == (t % 3 == 0 and max_dim >= 4)
        permuted |= any(not torch.equal(o, torch.arange(len(o))) for o in orders.values())
    assert permuted or max_dim < 4, "the test should exercise a non-trivial eigenvalue reordering"


# --------------------------------------------------------------------------------------- equivariance
@pytest.mark.parametrize("one_sided", [False, True])
def test_rotation_equivariance(one_sided):
    """Training W′ = P₁WP₂ on the rotated gradients moves W′ by P₁ΔWP₂ (catalogue sanity test). One-sided (cols >
    max_precond_dim): only left rotations, since the right side is plain Adam."""
    rows, cols = (4, 6) if one_sided else (5, 5)  # no null space in the first basis (its rotation would be arbitrary)
    gen = torch.Generator().manual_seed(7)
    P1 = _orthogonal(rows, gen)
    P2 = torch.eye(cols, dtype=F64) if one_sided else _orthogonal(cols, gen)
    kw = dict(lr=0.02, weight_decay=0.1, precondition_frequency=2, max_precond_dim=5 if one_sided else 100)
    grads = _grads((rows, cols), 9, seed=8)
    W = torch.randn(rows, cols, generator=gen, dtype=F64).requires_grad_()
    Wr = (P1 @ W.detach() @ P2).requires_grad_()
    d = step_updates(SOAP([W], **kw), W, grads)
    dr = step_updates(SOAP([Wr], **kw), Wr, [P1 @ g @ P2 for g in grads])
    for a, b in zip(d, dr):
        torch.testing.assert_close(b, P1 @ a @ P2, rtol=0, atol=1e-11)
    assert d[-1].abs().max() > 1e-3


# -------------------------------------------------------------------------------- batched = per-matrix loop
def test_foreach_matches_reference_with_mixed_steps_and_shapes():
    """Stacks of same-shape matrices at different step counts (one skips steps), a conv kernel, a one-sided shape
    and a vector (internal AdamW): the batched path equals the loop."""
    shapes = [(6, 4)] * 3 + [(6, 2, 2), (3, 12), (12, 3), (5,)]
    out = {}
    for impl in ("reference", "foreach"):
        params = [torch.zeros(s, dtype=F64, requires_grad=True) for s in shapes]
        opt = SOAP(params, lr=0.05, precondition_frequency=2, max_precond_dim=10, impl=impl)
        gen = torch.Generator().manual_seed(0)
        for t in range(7):
            for i, p in enumerate(params):
                g = torch.randn(p.shape, generator=gen, dtype=F64)
                p.grad = None if (i == 1 and t in (0, 3)) else g
            opt.step()
        out[impl] = (params, opt)
    (ref, oref), (fast, ofast) = out["reference"], out["foreach"]
    assert oref.state[ref[1]]["step"].item() == 5 and oref.state[ref[0]]["step"].item() == 7
    assert oref.state[ref[4]]["Q_R"].numel() == 0 and oref.state[ref[4]]["Q_L"].shape == (3, 3)
    for a, b in zip(ref, fast):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
        for key, va in oref.state[a].items():
            torch.testing.assert_close(ofast.state[b][key], va, rtol=1e-10, atol=1e-11, msg=key)


# ------------------------------------------------------------------------------------------- edge cases
def test_float32_zero_gradients_and_bf16_state_stay_finite():
    for dtype, state_dtype in ((torch.float32, None), (torch.bfloat16, "float32"), (torch.bfloat16, None)):
        p = torch.zeros(8, 5, dtype=dtype, requires_grad=True)
        opt = SOAP([p], lr=0.01, precondition_frequency=1, state_dtype=state_dtype)
        grads = [torch.zeros(8, 5)] * 2 + [g.float() for g in _grads((8, 5), 3)]
        step_updates(opt, p, [g.to(dtype) for g in grads])
        assert torch.isfinite(p).all() and p.abs().max() > 0
        Q = opt.state[p]["Q_L"].double()
        assert opt.state[p]["Q_L"].dtype == (torch.float32 if state_dtype else dtype)
        tol = 1e-5 if Q.dtype == torch.float32 or state_dtype else 2e-2
        torch.testing.assert_close(Q.T @ Q, torch.eye(8, dtype=F64), rtol=0, atol=tol * 10)


def test_registry_record_and_bad_arguments():
    info = optfit.optimizer_info("soap")
    assert info.cls is SOAP and info.family == "matrix" and not info.supports_cautious
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = optfit.create_optimizer(model, "soap")
    kinds = {id(p): g["kind"] for g in opt.param_groups for p in g["params"]}
    assert kinds[id(model[0].weight)] == "matrix" and kinds[id(model[1].weight)] == "adamw"  # the head: AdamW
    for key, value in (("precondition_frequency", 0), ("max_precond_dim", -1), ("shampoo_beta", 1.0),
                       ("normalize_grads", 1), ("betas", (0.9, 1.0)), ("eps", -1.0)):
        with pytest.raises(ValueError, match=key):
            SOAP(model.parameters(), **{key: value})
