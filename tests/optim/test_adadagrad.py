"""AdAdaGrad / AdAdaGrad-Norm (arXiv 2402.11215): hand-computed steps, torch.optim.Adagrad parity, the global scalar
accumulator of AdaGrad-Norm (across tensors and groups), its checkpoint."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch

from optfit.optim import AdAdaGrad, AdAdaGradNorm

from .problems import updates_under_constant_gradient

F64 = torch.float64
IMPLS = pytest.mark.parametrize("impl", ["reference", "foreach"])
SHAPES = [(7, 5), (5,), (2, 3, 4)]


def _stream(steps, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-3, 1, steps, dtype=F64)
    return [[torch.randn(s, generator=gen, dtype=F64) * scale[t] for s in shapes] for t in range(steps)]


def _params(shapes=SHAPES, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=F64).requires_grad_() for s in shapes]


def _feed(opt, params, grads):
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()


# ------------------------------------------------------------------------------------------------ AdAdaGrad
@IMPLS
def test_adadagrad_two_steps_by_hand(impl):
    lr, b0, eps = 0.3, 0.5, 1e-3
    p = torch.tensor([1.0, -2.0, 0.5], dtype=F64, requires_grad=True)
    g1, g2 = torch.tensor([2.0, -0.3, 0.0], dtype=F64), torch.tensor([-1.0, 0.4, 3.0], dtype=F64)
    opt = AdAdaGrad([p], lr=lr, b0=b0, eps=eps, impl=impl)
    x = p.detach().clone()
    v = torch.full((3,), b0 * b0, dtype=F64)
    for g in (g1, g2):
        p.grad = g.clone()
        opt.step()
        v = v + g * g
        x = x - lr * g / (v.sqrt() + eps)
        torch.testing.assert_close(p.detach(), x, rtol=1e-15, atol=1e-15)
        torch.testing.assert_close(opt.state[p]["sum"], v, rtol=1e-15, atol=0)
    # the first step by hand, coordinate 0: v = 0.25 + 4, Δ = −0.3·2/(√4.25 + 1e-3)
    assert (x[0] - 1.0).item() == pytest.approx(-0.3 * 2.0 / (math.sqrt(4.25) + 1e-3) + 0.3 / (math.sqrt(5.25) + 1e-3),
                                                rel=1e-14)


@IMPLS
def test_adadagrad_constant_gradient_steps_shrink_like_one_over_sqrt_t(impl):
    # paper form (ε = 0, b₀ > 0): Δθ_t = −α g / √(b₀² + t g²)
    lr, b0 = 0.1, 0.25
    G = torch.tensor([2.0, -0.3, 7.0], dtype=F64)
    p = torch.zeros(3, dtype=F64, requires_grad=True)
    for t, d in enumerate(updates_under_constant_gradient(AdAdaGrad([p], lr=lr, b0=b0, eps=0.0, impl=impl), p, G, 20),
                          start=1):
        torch.testing.assert_close(d, -lr * G / (b0 * b0 + t * G * G).sqrt(), rtol=1e-13, atol=0)


SETTINGS = [  # (optfit kwargs, torch kwargs): torch's Adagrad at lr_decay 0 with initial_accumulator_value = b₀²
    ({}, {}),
    ({"lr": 0.1, "b0": 0.7, "weight_decay": 0.1}, {"lr": 0.1, "initial_accumulator_value": 0.49, "weight_decay": 0.1}),
    ({"lr": 0.05, "b0": 0.3, "eps": 1e-6}, {"lr": 0.05, "initial_accumulator_value": 0.09, "eps": 1e-6}),
]


@IMPLS
@pytest.mark.parametrize("ours_kw, torch_kw", SETTINGS)
@pytest.mark.parametrize("two_groups", [False, True])
def test_adadagrad_matches_torch_adagrad_every_step(ours_kw, torch_kw, two_groups, impl):
    """The maths coincide with torch.optim.Adagrad(lr_decay=0, initial_accumulator_value=b0², eps, weight_decay):
    v = b₀² + Σg², θ ← θ − α g/(√v + ε), L2 decay added to g. Compared after every one of 100 float64 steps."""
    ours_p, theirs_p = _params(), _params()

    def groups(ps, lr_key_value):
        if not two_groups:
            return ps
        return [{"params": ps[:2]}, {"params": ps[2:], "lr": lr_key_value}]

    ours = AdAdaGrad(groups(ours_p, 0.02), impl=impl, **ours_kw)
    theirs = torch.optim.Adagrad(groups(theirs_p, 0.02), foreach=False, **torch_kw)
    for grads in _stream(100):
        _feed(ours, ours_p, grads)
        _feed(theirs, theirs_p, grads)
        for a, b in zip(ours_p, theirs_p):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)


def test_adadagrad_validation():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="b0"):
        AdAdaGrad(p, b0=-1.0)
    with pytest.raises(ValueError, match="b0 and eps"):
        AdAdaGrad(p, b0=0.0, eps=0.0)
    AdAdaGrad(p, b0=0.1, eps=0.0)  # the paper's form


# ------------------------------------------------------------------------------------------- AdAdaGrad-Norm
def _adagrad_norm_reference(params0, stream, lrs, b0, groups):
    """An independent loop: b² ← b² + Σ over ALL tensors ‖g‖², θ ← θ − α_group g / b."""
    xs = [p.detach().clone() for p in params0]
    b2 = b0 * b0
    out = []
    for grads in stream:
        b2 += sum(float((g * g).sum()) for g in grads)
        xs = [x - lrs[groups[i]] * g / math.sqrt(b2) for i, (x, g) in enumerate(zip(xs, grads))]
        out.append([x.clone() for x in xs])
    return out


@pytest.mark.parametrize("lr, b0, wd", [(1.0, 0.1, 0.0), (0.3, 1.0, 0.0), (0.05, 0.01, 0.0)])
def test_adagrad_norm_matches_an_independent_loop_every_step(lr, b0, wd):
    params = _params()
    stream = _stream(60)
    opt = AdAdaGradNorm([{"params": params[:2]}, {"params": params[2:], "lr": lr / 3}], lr=lr, b0=b0,
                        weight_decay=wd)
    expected = _adagrad_norm_reference(params, stream, [lr, lr / 3], b0, [0, 0, 1])
    b2 = b0 * b0
    for grads, want in zip(stream, expected):
        _feed(opt, params, grads)
        b2 += sum(float((g * g).sum()) for g in grads)
        for a, b in zip(params, want):
            torch.testing.assert_close(a.detach(), b, rtol=1e-12, atol=1e-14)
    assert opt.b == pytest.approx(math.sqrt(b2), rel=1e-12)


def test_adagrad_norm_first_step_by_hand():
    # g = (3, 4) in one tensor and (12,) in another: ‖g‖² = 169, b₁ = √(b₀² + 169) = √(169.36) with b₀ = 0.6
    p, q = torch.zeros(2, dtype=F64, requires_grad=True), torch.zeros(1, dtype=F64, requires_grad=True)
    opt = AdAdaGradNorm([p, q], lr=2.0, b0=0.6)
    p.grad, q.grad = torch.tensor([3.0, 4.0], dtype=F64), torch.tensor([12.0], dtype=F64)
    opt.step()
    b1 = math.sqrt(0.36 + 169.0)
    torch.testing.assert_close(p.detach(), torch.tensor([-6.0 / b1, -8.0 / b1], dtype=F64), rtol=1e-15, atol=0)
    torch.testing.assert_close(q.detach(), torch.tensor([-24.0 / b1], dtype=F64), rtol=1e-15, atol=0)
    assert float(opt.accumulator) == pytest.approx(169.36, rel=1e-15)


def test_adagrad_norm_is_global_splitting_a_tensor_changes_nothing():
    """One scalar b over every tensor of every group: splitting θ into pieces (and groups) gives the same path."""
    stream = _stream(50, shapes=[(12,)])
    whole = torch.linspace(-1, 1, 12, dtype=F64).requires_grad_()
    pieces = [whole.detach()[:5].clone().requires_grad_(), whole.detach()[5:].clone().requires_grad_()]
    o1 = AdAdaGradNorm([whole], lr=0.5)
    o2 = AdAdaGradNorm([{"params": [pieces[0]]}, {"params": [pieces[1]]}], lr=0.5)
    for (g,) in stream:
        _feed(o1, [whole], [g])
        _feed(o2, pieces, [g[:5], g[5:]])
        torch.testing.assert_close(torch.cat([x.detach() for x in pieces]), whole.detach(), rtol=1e-13, atol=1e-15)


def test_adagrad_norm_on_one_coordinate_is_adagrad_with_eps_zero():
    stream = _stream(50, shapes=[(1,)])
    a, b = torch.ones(1, dtype=F64, requires_grad=True), torch.ones(1, dtype=F64, requires_grad=True)
    oa, ob = AdAdaGradNorm([a], lr=0.2, b0=0.3), AdAdaGrad([b], lr=0.2, b0=0.3, eps=0.0)
    for grads in stream:
        _feed(oa, [a], grads)
        _feed(ob, [b], grads)
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-14, atol=0)


def test_adagrad_norm_constant_gradient():
    lr, b0 = 0.5, 0.2
    G = torch.tensor([1.0, -2.0, 2.0], dtype=F64)  # ‖G‖² = 9
    p = torch.zeros(3, dtype=F64, requires_grad=True)
    for t, d in enumerate(updates_under_constant_gradient(AdAdaGradNorm([p], lr=lr, b0=b0), p, G, 10), start=1):
        torch.testing.assert_close(d, -lr * G / math.sqrt(b0 * b0 + 9.0 * t), rtol=1e-14, atol=0)


def test_adagrad_norm_skips_missing_grads_and_nonfinite_steps():
    p, q = torch.zeros(2, dtype=F64, requires_grad=True), torch.zeros(2, dtype=F64, requires_grad=True)
    opt = AdAdaGradNorm([p, q], lr=1.0, b0=1.0, nonfinite="skip")
    p.grad, q.grad = torch.tensor([3.0, 4.0], dtype=F64), None
    opt.step()
    assert float(opt.accumulator) == 26.0 and torch.equal(q.detach(), torch.zeros(2, dtype=F64))
    p.grad, q.grad = torch.tensor([float("nan"), 1.0], dtype=F64), torch.ones(2, dtype=F64)
    opt.step()
    assert float(opt.accumulator) == 26.0 and opt.skipped_steps == 1


def test_adagrad_norm_state_dict_carries_the_accumulator():
    params = _params()
    stream = _stream(20)
    opt = AdAdaGradNorm(params, lr=0.7)
    for grads in stream[:10]:
        _feed(opt, params, grads)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    saved = [p.detach().clone() for p in params]
    for grads in stream[10:]:
        _feed(opt, params, grads)

    params2 = [s.clone().requires_grad_() for s in saved]
    opt2 = AdAdaGradNorm(params2, lr=0.7)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    for grads in stream[10:]:
        _feed(opt2, params2, grads)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    assert torch.equal(opt.accumulator, opt2.accumulator)
    # a fresh optimizer (no accumulator loaded) would differ: the test can fail
    params3 = [s.clone().requires_grad_() for s in saved]
    opt3 = AdAdaGradNorm(params3, lr=0.7)
    sd = copy.deepcopy(opt2.state_dict())
    del sd["optfit"]["adagrad_norm"]
    opt3.load_state_dict(sd)
    _feed(opt3, params3, stream[10])
    assert not torch.equal(params3[0], params2[0])


def test_adagrad_norm_validation():
    p = [torch.zeros(2, requires_grad=True)]
    for bad in (0.0, -1.0):
        with pytest.raises(ValueError, match="b0"):
            AdAdaGradNorm(p, b0=bad)
    with pytest.raises(ValueError, match="cautious"):
        AdAdaGradNorm(p, cautious=True)
