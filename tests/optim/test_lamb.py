"""LAMB and LARS: hand-computed first steps, every step of 60 against an independent loop of the papers' algorithms,
float64 trajectory parity with pytorch_optimizer where it computes the same formula, and the package's deviations."""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.optim import LARS, Lamb

D = torch.float64
SHAPES = [(5, 4), (4,), (2, 3, 3)]
TOL = dict(rtol=1e-10, atol=1e-12)


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen, dtype=D) for s in SHAPES]
    target = [2 * torch.randn(s, generator=gen, dtype=D) for s in SHAPES]
    curv = [0.5 + 4 * torch.rand(s, generator=gen, dtype=D) for s in SHAPES]
    return init, target, curv


ONE_GROUP = (((0, 1, 2), {}),)


def _trajectory(make, groups=ONE_GROUP, steps=60, noise=0.3):
    """Run ``make(param_groups)`` (``groups``: (tensor indices, group hyperparameters) pairs) on a noisy weighted
    quadratic; the parameters after every step."""
    init, target, curv = _problem()
    params = [x.clone().requires_grad_() for x in init]
    opt = make([{"params": [params[i] for i in idx], **hp} for idx, hp in groups])
    gen = torch.Generator().manual_seed(123)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        sum(0.5 * (c * (p - t) ** 2).sum() for p, t, c in zip(params, target, curv)).backward()
        for p in params:
            p.grad.add_(torch.randn(p.shape, generator=gen, dtype=D), alpha=noise)
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


def _oracle(step_fn, steps=60, noise=0.3):
    """The same problem and noise, each tensor moved by ``step_fn(i, θ, g, t) -> new θ`` (plain float64 maths)."""
    init, target, curv = _problem()
    thetas = [x.clone() for x in init]
    gen = torch.Generator().manual_seed(123)
    out = []
    for t in range(1, steps + 1):
        grads = [c * (x - tg) for x, tg, c in zip(thetas, target, curv)]
        grads = [g + noise * torch.randn(g.shape, generator=gen, dtype=D) for g in grads]
        thetas = [step_fn(i, x, g, t) for i, (x, g) in enumerate(zip(thetas, grads))]
        out.append([x.clone() for x in thetas])
    return out


def _assert_same(ours, theirs, only=None, **tol):
    tol = tol or TOL
    for step, (a, b) in enumerate(zip(ours, theirs)):
        for i, (x, y) in enumerate(zip(a, b)):
            if only is None or i in only:
                torch.testing.assert_close(x, y, **tol, msg=lambda m: f"step {step + 1}, tensor {i}: {m}")


# ------------------------------------------------------------------------------------------------------- LAMB
def _lamb_oracle(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, wd=0.0, bias_correction=True, phi=(0.0, math.inf),
                 coupled=False, adapt=lambda i: True, wd_of=lambda i, wd: wd):
    """Algorithm 2 of the paper, written out per tensor."""
    b1, b2 = betas
    m, v = {}, {}

    def step(i, x, g, t):
        lam = wd_of(i, wd)
        if coupled:
            g = g + lam * x
        m[i] = b1 * m.get(i, 0) + (1 - b1) * g
        v[i] = b2 * v.get(i, 0) + (1 - b2) * g * g
        mh, vh = (m[i] / (1 - b1**t), v[i] / (1 - b2**t)) if bias_correction else (m[i], v[i])
        u = mh / (vh.sqrt() + eps) + (0 if coupled else lam * x)
        w, un = float(x.norm()), float(u.norm())
        f = min(max(w, phi[0]), phi[1])
        ratio = f / un if adapt(i) and f > 0 and un > 0 else 1.0
        return x - lr * ratio * u

    return step


def test_lamb_first_step_by_hand():
    """t = 1: m̂ = g, v̂ = g², so with ε = 0 r = sign(g); u = r + λθ; Δθ = −η‖θ‖/‖u‖·u."""
    x = torch.tensor([3.0, 4.0], dtype=D, requires_grad=True)
    x.grad = torch.tensor([2.0, -0.5], dtype=D)
    Lamb([x], lr=0.1, eps=0.0, weight_decay=0.1).step()
    u = torch.tensor([1.0 + 0.3, -1.0 + 0.4], dtype=D)
    expected = torch.tensor([3.0, 4.0], dtype=D) - 0.1 * 5.0 / math.sqrt(1.3**2 + 0.6**2) * u
    torch.testing.assert_close(x.detach(), expected, rtol=1e-15, atol=0)
    # without decay: a step of length exactly η‖θ‖ along sign(g)
    y = torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=D, requires_grad=True)
    y.grad = torch.tensor([[1.0, -2.0], [3.0, -4.0]], dtype=D)
    Lamb([y], lr=0.1, eps=0.0).step()
    torch.testing.assert_close(y.detach(), torch.tensor([[3.0 - 0.25, 0.25], [-0.25, 4.25]], dtype=D),
                               rtol=1e-15, atol=0)


LAMB_CASES = {
    "defaults": ({}, {}),
    "lr-betas-eps-decay": (dict(lr=0.02, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1),
                           dict(lr=0.02, betas=(0.8, 0.99), eps=1e-8, wd=0.1)),
    "no-bias-correction-phi-coupled": (dict(lr=0.01, bias_correction=False, phi_bounds=(2.0, 4.0), weight_decay=0.05,
                                            decay_mode="coupled"),
                                       dict(lr=0.01, bias_correction=False, phi=(2.0, 4.0), wd=0.05, coupled=True)),
}


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("case", list(LAMB_CASES))
def test_lamb_every_step_matches_the_papers_algorithm(case, impl):
    ours_hp, oracle_hp = LAMB_CASES[case]
    ours = _trajectory(lambda g: Lamb(g, impl=impl, **ours_hp))
    _assert_same(ours, _oracle(_lamb_oracle(**oracle_hp)))


@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_lamb_two_groups_one_without_layer_adaptation(impl):
    groups = [((0, 2), {"weight_decay": 0.1}), ((1,), {"layer_adaptation": False, "lr": 0.05})]
    ours = _trajectory(lambda g: Lamb(g, lr=0.02, impl=impl), groups)
    lr_of = {0: 0.02, 1: 0.05, 2: 0.02}
    steps = {i: _lamb_oracle(lr=lr_of[i], wd=0.1 if i != 1 else 0.0, adapt=lambda j: j != 1) for i in range(3)}
    _assert_same(ours, _oracle(lambda i, x, g, t: steps[i](i, x, g, t)))


def test_lamb_without_layer_adaptation_is_adam():
    """Ratio 1 and no decay: the paper's r is exactly torch.optim.Adam's step."""
    hp = dict(lr=0.01, betas=(0.8, 0.95), eps=1e-7)
    ours = _trajectory(lambda g: Lamb(g, layer_adaptation=False, **hp))
    _assert_same(ours, _trajectory(lambda g: torch.optim.Adam(g, **hp)))


def test_lamb_zero_tensor_and_phi_bounds():
    """‖θ‖ = 0: ratio 1, so the step is η·r; φ clamps ‖θ‖ = 100 to γ_u = 10 (step length η·10)."""
    z = torch.zeros(3, dtype=D, requires_grad=True)
    z.grad = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    Lamb([z], lr=0.1, eps=0.0).step()
    torch.testing.assert_close(z.detach(), torch.tensor([-0.1, 0.1, -0.1], dtype=D), rtol=1e-15, atol=0)
    big = torch.tensor([60.0, 80.0], dtype=D, requires_grad=True)
    big.grad = torch.tensor([1.0, 1.0], dtype=D)
    Lamb([big], lr=0.1, eps=0.0, phi_bounds=(0.0, 10.0)).step()
    torch.testing.assert_close(big.detach(), torch.tensor([60.0, 80.0], dtype=D) - 1.0 / math.sqrt(2), rtol=1e-15,
                               atol=0)


PO_LAMB_CASES = {
    "betas-default": ({}, {}),
    "decay-lr": (dict(lr=0.02, weight_decay=0.1), dict(lr=0.02, weight_decay=0.1)),
    "betas": (dict(betas=(0.8, 0.99), lr=0.005), dict(betas=(0.8, 0.99), lr=0.005)),
}


@pytest.mark.parametrize("case", list(PO_LAMB_CASES))
def test_lamb_matches_pytorch_optimizer_where_it_computes_the_same_formula(case):
    """pytorch_optimizer.Lamb with adam_debias=True (no 1/(1−β₁ᵗ) outside the ratio), weight_decouple=False (λθ
    inside the ratio) and ε = 0 (so nothing is added to ‖u‖) is the paper's update without bias correction and with
    φ(z) = min(z, 10): ours with bias_correction=False, phi_bounds=(0, 10), every step of 60."""
    po = pytest.importorskip("pytorch_optimizer")
    ours_hp, theirs_hp = PO_LAMB_CASES[case]
    groups = [((0, 2), {}), ((1,), {"lr": 0.003})] if case == "betas" else ONE_GROUP
    ours = _trajectory(lambda g: Lamb(g, eps=0.0, bias_correction=False, phi_bounds=(0.0, 10.0), **ours_hp), groups)
    theirs = _trajectory(lambda g: po.Lamb(g, eps=0.0, adam_debias=True, weight_decouple=False, **theirs_hp), groups)
    _assert_same(ours, theirs)


def test_lamb_pytorch_optimizer_defaults_are_not_the_paper():
    """The package's default Lamb divides by 1−β₁ᵗ outside the trust ratio (first step 1/(1−β₁) = 10 times the
    paper's length η‖θ‖), leaves v uncorrected, clamps ‖θ‖ at 10, adds ε to ‖u‖ and decays θ(1 − ηλ) outside the
    ratio. Its trajectory is that formula, written out here, and not the paper's."""
    po = pytest.importorskip("pytorch_optimizer")
    x = torch.tensor([3.0, 4.0], dtype=D, requires_grad=True)
    x.grad = torch.tensor([2.0, -0.5], dtype=D)
    po.Lamb([x], lr=0.01, eps=0.0).step()
    assert float((x.detach() - torch.tensor([3.0, 4.0], dtype=D)).norm()) == pytest.approx(10 * 0.01 * 5.0, rel=1e-12)

    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-6, 0.1
    m, v = {}, {}

    def package_step(i, x, g, t):
        x = x * (1 - lr * wd)
        m[i] = b1 * m.get(i, 0) + (1 - b1) * g
        v[i] = b2 * v.get(i, 0) + (1 - b2) * g * g
        r = m[i] / (v[i].sqrt() + eps)
        return x - lr / (1 - b1**t) * min(float(x.norm()), 10.0) / (float(r.norm()) + eps) * r

    theirs = _trajectory(lambda g: po.Lamb(g, lr=lr, weight_decay=wd))
    _assert_same(theirs, _oracle(package_step))
    ours = _trajectory(lambda g: Lamb(g, lr=lr, weight_decay=wd))
    assert not torch.allclose(ours[-1][0], theirs[-1][0], rtol=1e-3)


# ------------------------------------------------------------------------------------------------------- LARS
def _lars_oracle(lr=1.0, momentum=0.9, wd=0.0, tc=1e-3, nesterov=False, adapt=lambda i: True, wd_of=None):
    """Algorithm 1 of the paper, with its momentum v ← μv + γλ(g + βθ), θ ← θ − v (the same as torch's form for a
    constant γ)."""
    buf = {}

    def step(i, x, g, t):
        beta = wd if wd_of is None else wd_of(i)
        w, gn = float(x.norm()), float(g.norm())
        local = tc * w / (gn + beta * w) if adapt(i) and w > 0 and gn + beta * w > 0 else 1.0
        u = lr * local * (g + beta * x)
        buf[i] = momentum * buf.get(i, 0) + u
        return x - (u + momentum * buf[i] if nesterov else buf[i])

    return step


def test_lars_first_step_by_hand():
    """‖θ‖ = 5, ‖g‖ = 1, β = 0.1: λ = η_tc·5/(1 + 0.5); Δθ = −γλ(g + βθ) (the buffer starts at zero)."""
    x = torch.tensor([3.0, 4.0], dtype=D, requires_grad=True)
    x.grad = torch.tensor([0.6, 0.8], dtype=D)
    LARS([x], lr=2.0, trust_coefficient=0.01, weight_decay=0.1).step()
    local = 0.01 * 5.0 / 1.5
    expected = torch.tensor([3.0, 4.0], dtype=D) - 2.0 * local * torch.tensor([0.9, 1.2], dtype=D)
    torch.testing.assert_close(x.detach(), expected, rtol=1e-15, atol=0)


LARS_CASES = {
    "defaults": ({}, {}),
    "decay-nesterov": (dict(lr=0.5, momentum=0.5, nesterov=True, weight_decay=0.01, trust_coefficient=0.02),
                       dict(lr=0.5, momentum=0.5, nesterov=True, wd=0.01, tc=0.02)),
    "no-momentum-decay": (dict(lr=2.0, momentum=0.0, weight_decay=0.1), dict(lr=2.0, momentum=0.0, wd=0.1)),
}


@pytest.mark.parametrize("impl", ["reference", "foreach"])
@pytest.mark.parametrize("case", list(LARS_CASES))
def test_lars_every_step_matches_the_papers_algorithm(case, impl):
    ours_hp, oracle_hp = LARS_CASES[case]
    ours = _trajectory(lambda g: LARS(g, impl=impl, **ours_hp))
    _assert_same(ours, _oracle(_lars_oracle(**oracle_hp)))


@pytest.mark.parametrize("case", list(LARS_CASES))
def test_lars_matches_pytorch_optimizer_with_vectors_in_an_unadapted_group(case):
    """The package adapts (and decays) only tensors with ≥ 2 dims: ours with the vector in a group with
    ``layer_adaptation=False, weight_decay=0`` is the package's single group, every step of 60. The ≥2-D tensors
    match at our defaults too (each tensor's step is its own); the vector does not (the paper adapts it)."""
    po = pytest.importorskip("pytorch_optimizer")
    ours_hp, _ = LARS_CASES[case]
    theirs_hp = {"lr": 1.0, **ours_hp}
    theirs = _trajectory(lambda g: po.LARS(g, **theirs_hp))
    split = [((0, 2), {}), ((1,), {"layer_adaptation": False, "weight_decay": 0.0})]
    _assert_same(_trajectory(lambda g: LARS(g, **ours_hp), split), theirs)
    plain = _trajectory(lambda g: LARS(g, **ours_hp))
    _assert_same(plain, theirs, only=(0, 2))
    assert not torch.allclose(plain[-1][1], theirs[-1][1], rtol=1e-3)


def test_lars_zero_tensor_takes_a_plain_sgd_step_and_lr_zero_freezes():
    z = torch.zeros(3, dtype=D, requires_grad=True)
    opt = LARS([z], lr=0.5)
    z.grad = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    opt.step()
    torch.testing.assert_close(z.detach(), torch.tensor([-0.5, 1.0, -0.25], dtype=D), rtol=1e-15, atol=0)
    # lr outside the buffer (torch's form): a scheduled lr of 0 stops the parameters despite the momentum
    opt.param_groups[0]["lr"] = 0.0
    before = z.detach().clone()
    z.grad = torch.tensor([1.0, 1.0, 1.0], dtype=D)
    opt.step()
    assert torch.equal(z.detach(), before)


# ------------------------------------------------------------------------------------------------ both records
@pytest.mark.parametrize("kwargs, name", [
    ({"phi_bounds": (1.0, 0.5)}, "phi_bounds"), ({"phi_bounds": (-1.0, 2.0)}, "phi_bounds"),
    ({"phi_bounds": (math.inf, math.inf)}, "phi_bounds"), ({"decay_mode": "independent"}, "decay_mode"),
    ({"bias_correction": 1}, "bias_correction"), ({"layer_adaptation": "yes"}, "layer_adaptation"),
])
def test_lamb_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Lamb([torch.zeros(2, requires_grad=True)], **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    ({"momentum": 1.0}, "momentum"), ({"trust_coefficient": 0.0}, "trust_coefficient"),
    ({"nesterov": True, "momentum": 0.0}, "nesterov"), ({"decay_mode": "decoupled"}, "decay_mode"),
])
def test_lars_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        LARS([torch.zeros(2, requires_grad=True)], **kwargs)


def test_records():
    lamb, lars = optfit.optimizer_info("lamb"), optfit.optimizer_info("lars")
    assert (lamb.cls, lamb.family, lamb.state_tensors, lamb.has_betas) == (Lamb, "adaptive", 2, True)
    assert (lars.cls, lars.family, lars.state_tensors, lars.has_momentum, lars.has_betas) == \
        (LARS, "first-order", 1, True, False)
    assert lamb.paper == "arXiv:1904.00962" and lars.paper == "arXiv:1708.03888"
