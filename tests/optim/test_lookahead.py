"""Lookahead: k = 1, α = 1 is the base; a hand-computed cycle; float64 trajectories against pytorch_optimizer;
slow weights and the counter in the state dict (bit-exact resume mid-cycle); skipped steps; closure bases."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import optfit
from optfit.optim import AdamW, Lookahead

from .problems import TinyNet, closure_for, run

SHAPES = [(4, 3), (3,), (2, 2, 2)]


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in SHAPES]


def _stream(steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES] for _ in range(steps)]


def _feed(opt, ps, grads):
    for p, g in zip(ps, grads):
        p.grad = g.clone()
    opt.step()


def test_k1_alpha1_is_exactly_the_base():
    a, b = TinyNet(), TinyNet()
    base = optfit.create_optimizer(a, "adamw", lr=0.01)
    wrapped = optfit.create_optimizer(b, "lookahead", k=1, alpha=1.0, lr=0.01)
    run(a, base, 20)
    run(b, wrapped, 20)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_one_cycle_by_hand():
    """SGD (η = 0.1) on a constant g, k = 2, α = 0.25: fast θ₀ − ηg, θ₀ − 2ηg; then φ = θ₀ − 0.5ηg = θ."""
    x = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([0.5, 3.0], dtype=torch.float64)
    opt = Lookahead([x], base="sgd", k=2, alpha=0.25, lr=0.1)
    _feed(opt, [x], [g])
    torch.testing.assert_close(x.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64) - 0.1 * g)
    assert torch.equal(opt.state[x]["lookahead_slow"], torch.tensor([1.0, -2.0], dtype=torch.float64))
    _feed(opt, [x], [g])
    expected = torch.tensor([1.0, -2.0], dtype=torch.float64) - 0.25 * 0.2 * g
    torch.testing.assert_close(x.detach(), expected, rtol=1e-15, atol=1e-15)
    assert torch.equal(opt.state[x]["lookahead_slow"], x.detach())
    _feed(opt, [x], [g])
    torch.testing.assert_close(x.detach(), expected - 0.1 * g, rtol=1e-15, atol=1e-15)


SETTINGS = [
    ("defaults", {}, [{}]),
    ("sgd-momentum", {"base": torch.optim.SGD, "k": 3, "alpha": 0.8, "lr": 0.05, "momentum": 0.9}, [{}]),
    ("two-groups", {"k": 7, "alpha": 0.3, "lr": 0.01, "weight_decay": 0.1}, [{}, {"lr": 0.002}]),
]


@pytest.mark.parametrize("setting, kwargs, group_extras", SETTINGS, ids=[s[0] for s in SETTINGS])
def test_matches_pytorch_optimizer_in_float64(setting, kwargs, group_extras):
    """Same base class on both sides, 60 steps of a gradient stream, every step's parameters."""
    po = pytest.importorskip("pytorch_optimizer")
    kwargs = dict(kwargs)
    base = kwargs.pop("base", AdamW)
    k, alpha = kwargs.pop("k", 5), kwargs.pop("alpha", 0.5)

    def groups(ps):
        if len(group_extras) == 1:
            return [{"params": ps, **group_extras[0]}]
        return [{"params": ps[:2], **group_extras[0]}, {"params": ps[2:], **group_extras[1]}]

    ours_p, theirs_p = _params(), _params()
    ours = Lookahead(groups(ours_p), base=base, k=k, alpha=alpha, **kwargs)
    theirs = po.Lookahead(base(groups(theirs_p), **kwargs), k=k, alpha=alpha)
    for t, grads in enumerate(_stream(60)):
        _feed(ours, ours_p, grads)
        _feed(theirs, theirs_p, grads)
        for p, q in zip(ours_p, theirs_p):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-13, atol=1e-14, msg=f"step {t + 1}")


def test_per_group_k_and_alpha():
    ps = _params()
    opt = Lookahead([{"params": ps[:2], "k": 2}, {"params": ps[2:], "alpha": 1.0}], base="sgd", k=3, alpha=0.5,
                    lr=0.1)
    assert [(g["lookahead_k"], g["lookahead_alpha"]) for g in opt.param_groups] == [(2, 0.5), (3, 1.0)]
    plain = [p.detach().clone().requires_grad_() for p in ps]
    sgd = optfit.optim.SGD(plain, lr=0.1)
    for grads in _stream(3):
        _feed(opt, ps, grads)
        _feed(sgd, plain, grads)
    assert not torch.equal(opt.state[ps[0]]["lookahead_slow"], ps[0].detach())  # synchronised at step 2, not 3
    assert torch.equal(opt.state[ps[2]]["lookahead_slow"], ps[2].detach())  # k = 3, α = 1: φ = θ at step 3
    assert torch.equal(ps[2], plain[2]) and not torch.equal(ps[0], plain[0])


def test_resume_mid_cycle_is_bit_exact_and_the_state_holds_the_slow_weights():
    model = TinyNet()
    opt = optfit.create_optimizer(model, "lookahead", lr=0.01, k=5)
    run(model, opt, 7)
    sd = opt.state_dict()
    assert sd["optfit"]["lookahead_steps"] == 7 and sd["optfit"]["base"] == "AdamW"
    assert all("lookahead_slow" in st for st in sd["state"].values())
    buf = io.BytesIO()
    torch.save(sd, buf)
    twin = TinyNet()
    twin.load_state_dict(model.state_dict())
    opt2 = optfit.create_optimizer(twin, "lookahead", lr=0.01, k=5)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    assert opt2.lookahead_steps == 7
    run(model, opt, 6)  # crosses the synchronisation at step 10
    run(twin, opt2, 6)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_skipped_step_is_not_counted():
    model = TinyNet()
    opt = optfit.create_optimizer(model, "lookahead", lr=0.01, k=2, nonfinite="skip")
    run(model, opt, 1)

    def bad():
        opt.zero_grad()
        loss = model()
        loss.backward()
        model.net[0].bias.grad[0] = float("nan")
        return loss

    before = copy.deepcopy(model.state_dict())
    opt.step(bad)
    assert opt.skipped_steps == 1 and opt.lookahead_steps == 1
    for key, v in model.state_dict().items():
        assert torch.equal(v, before[key])


def test_needs_closure_follows_the_base():
    model = TinyNet()
    opt = Lookahead(model.parameters(), base="sam", lr=0.01)
    assert opt.needs_closure and not Lookahead.needs_closure
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    losses = [float(opt.step(closure_for(model, opt)).detach()) for _ in range(12)]
    assert losses[-1] < losses[0]
    assert all("lookahead_slow" in opt.state[p] for p in model.parameters())


def test_a_parameter_without_gradient_gets_no_slow_weights():
    used, unused = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = Lookahead([used, unused], base="sgd", lr=0.1, k=1)
    used.grad = torch.ones(2)
    opt.step()
    assert "lookahead_slow" in opt.state[used] and unused not in opt.state


def test_invalid_k_and_alpha_name_themselves():
    with pytest.raises(ValueError, match="k"):
        Lookahead(TinyNet().parameters(), k=0)
    with pytest.raises(ValueError, match="alpha"):
        Lookahead(TinyNet().parameters(), alpha=1.5)
