"""AutoBound's quadratic enclosures (optfit.theory.autobound): every rule encloses the true y(t) on a dense grid of
t ∈ [0, R] for random float64 inputs whose own t-dependence is a cubic (so the input enclosure has a genuine
interval remainder), the slopes are the exact derivatives, the sharp rules are sharp, whole networks and losses are
enclosed, and modules without a rule raise naming themselves."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from optfit.theory import autobound as ab

DT = torch.float64
TOL = 1e-12  # rounding slack (the enclosures use plain floating point)
ACTIVATIONS = {
    "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "softplus": nn.Softplus(), "softplus-beta2": nn.Softplus(beta=2.0),
    "gelu": nn.GELU(), "silu": nn.SiLU(), "relu": nn.ReLU(), "leaky-relu": nn.LeakyReLU(0.1),
    "leaky-relu-steep": nn.LeakyReLU(1.7),
}


def _cubic(shape, radius, gen, scale=1.0):
    """A random y(t) = a + bt + ct² + dt³ and its enclosure on [0, R] (c + d·[0, R] holds the t² coefficient)."""
    a, b, c, d = (torch.randn(shape, generator=gen, dtype=DT) * s * scale for s in (1.5, 1.0, 0.7, 0.5))
    enc = ab.Enclosure(a, b, c + (d * radius).clamp(max=0), c + (d * radius).clamp(min=0))
    return enc, (lambda t: a + b * t + c * t * t + d * t ** 3)


def _grid(radius, n=301):
    return torch.linspace(0, radius, n, dtype=DT)[1:]


def _assert_encloses(enc, truth, radius):
    for t in _grid(radius):
        y = truth(t)
        assert float((enc.lower(t) - y).max()) <= TOL * (1 + float(y.abs().max())), f"lower bound fails at t={t}"
        assert float((y - enc.upper(t)).max()) <= TOL * (1 + float(y.abs().max())), f"upper bound fails at t={t}"


def _assert_slope(enc, truth):
    slope = torch.func.jacfwd(truth)(torch.tensor(0.0, dtype=DT))
    torch.testing.assert_close(enc.slope, slope.reshape(enc.slope.shape), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("radius", [0.05, 0.7, 3.0])
def test_activation_enclosure_contains_the_function(name, radius):
    module = ACTIVATIONS[name]
    gen = torch.Generator().manual_seed(hash((name, radius)) % 2**31)
    u, truth_u = _cubic((400,), radius, gen)
    u.value[:7] = 0.0  # exactly at ReLU's kink (and σ's centre)
    out = ab.module_enclosure(module, u, {}, radius)
    _assert_encloses(out, lambda t: module(truth_u(t)), radius)
    if name not in ("relu", "leaky-relu", "leaky-relu-steep"):  # kinks have one-sided slopes
        _assert_slope(out, lambda t: module(truth_u(t)))


def test_relu_is_exact_where_the_sign_cannot_change_and_sharp_where_it_does():
    radius = 1.0
    # linear inputs u(t) = u0 + u1 t: no interval in the input, so the ReLU rule alone is measured
    u0 = torch.tensor([2.0, -2.0, 0.5, -0.5, 0.3], dtype=DT)
    u1 = torch.tensor([1.0, -1.0, -2.0, 3.0, -0.45], dtype=DT)
    zero = torch.zeros_like(u0)
    out = ab.module_enclosure(nn.ReLU(), ab.Enclosure(u0, u1, zero, zero), {}, radius)
    assert torch.equal(out.lo[:2], zero[:2]) and torch.equal(out.hi[:2], zero[:2])  # never crosses 0: exact
    ts = _grid(radius, 20001)
    ratio = torch.stack([(torch.relu(u0 + u1 * t) - out.value - out.slope * t) / t ** 2 for t in ts]).amax(0)
    # the remainder bound is attained (at d = 2|u0| when reachable, else at the end of the region)
    torch.testing.assert_close(ratio[2:], out.hi[2:], rtol=1e-6, atol=0)


def test_linear_rule_contains_the_layer_and_is_exact_on_a_constant_input():
    radius = 0.8
    gen = torch.Generator().manual_seed(1)
    h, truth_h = _cubic((9, 6), radius, gen)
    W, V = torch.randn(4, 6, generator=gen, dtype=DT), torch.randn(4, 6, generator=gen, dtype=DT)
    b, v = torch.randn(4, generator=gen, dtype=DT), torch.randn(4, generator=gen, dtype=DT)
    out = ab.linear(h, W, V, b, v, radius)
    truth = lambda t: truth_h(t) @ (W + t * V).T + b + t * v  # noqa: E731
    _assert_encloses(out, truth, radius)
    _assert_slope(out, truth)
    x = torch.randn(9, 6, generator=gen, dtype=DT)
    exact = ab.linear(ab.constant(x), W, V, b, v, radius)
    assert torch.equal(exact.lo, torch.zeros_like(exact.lo)) and torch.equal(exact.hi, exact.lo)
    torch.testing.assert_close(exact.upper(0.3), x @ (W + 0.3 * V).T + b + 0.3 * v)


def _loss_truth(kind, z_of_t, target):
    if kind == "mse":
        return lambda t: F.mse_loss(z_of_t(t), target)
    return lambda t: F.cross_entropy(z_of_t(t), target)


@pytest.mark.parametrize("kind", ["mse", "cross_entropy"])
@pytest.mark.parametrize("radius", [0.1, 1.0, 4.0])
@pytest.mark.parametrize("scale", [0.3, 3.0])
def test_loss_enclosure_contains_the_loss(kind, radius, scale):
    gen = torch.Generator().manual_seed(7)
    z, truth_z = _cubic((32, 5), radius, gen, scale)
    target = torch.randn(32, 5, generator=gen, dtype=DT) if kind == "mse" else torch.randint(0, 5, (32,), generator=gen)
    bound = ab.LOSSES[kind](z, target, radius)
    truth = _loss_truth(kind, truth_z, target)
    assert float(bound.value) == pytest.approx(float(truth(torch.tensor(0.0, dtype=DT))), rel=1e-12)
    slope = torch.func.jacfwd(truth)(torch.tensor(0.0, dtype=DT))
    assert float(bound.slope) == pytest.approx(float(slope), rel=1e-10, abs=1e-12)
    for t in _grid(radius):
        f = float(truth(t))
        assert float(bound.value + bound.slope * t + bound.lo * t * t) <= f + TOL * (1 + abs(f))
        assert f <= bound.upper(float(t)) + TOL * (1 + abs(f))


def test_mse_bound_is_exact_for_a_linear_output():
    gen = torch.Generator().manual_seed(3)
    z0, z1 = torch.randn(8, 3, generator=gen, dtype=DT), torch.randn(8, 3, generator=gen, dtype=DT)
    y = torch.randn(8, 3, generator=gen, dtype=DT)
    zero = torch.zeros_like(z0)
    bound = ab.mse_enclosure(ab.Enclosure(z0, z1, zero, zero), y, 2.0)
    assert float(bound.lo) == pytest.approx(float(bound.hi)) == pytest.approx(float((z1 ** 2).mean()))


def test_cross_entropy_curvature_is_sharper_than_popoviciu_for_confident_logits():
    """Confident logits (p₀ near one-hot) make LSE nearly flat: the softmax-weighted bound sees it."""
    z0 = torch.tensor([[8.0, -8.0, -8.0]], dtype=DT)
    z1 = torch.tensor([[0.0, 1.0, -1.0]], dtype=DT)
    zero = torch.zeros_like(z0)
    bound = ab.cross_entropy_enclosure(ab.Enclosure(z0, z1, zero, zero), torch.tensor([0]), 1.0)
    popoviciu = (1.0 - (-1.0)) ** 2 / 4 / 2
    assert 0 < float(bound.hi) < 0.01 * popoviciu


@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu", "softplus", "gelu", "silu"])
@pytest.mark.parametrize("kind", ["mse", "cross_entropy"])
def test_network_loss_enclosure_contains_the_loss_along_the_direction(act, kind):
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    model = nn.Sequential(nn.Linear(4, 12), ACTIVATIONS[act], nn.Sequential(nn.Linear(12, 12), ACTIVATIONS[act]),
                          nn.Flatten(), nn.Linear(12, 3)).to(DT)
    x = torch.randn(40, 4, generator=gen, dtype=DT)
    y = torch.randn(40, 3, generator=gen, dtype=DT) if kind == "mse" else torch.randint(0, 3, (40,), generator=gen)
    params = list(model.parameters())
    directions = {id(p): torch.randn(p.shape, generator=gen, dtype=DT) for p in params}
    radius = 0.5
    bound = ab.loss_enclosure(model, x, y, kind, directions, radius)
    loss_fn = F.mse_loss if kind == "mse" else F.cross_entropy
    base = [p.detach().clone() for p in params]

    def loss_at(t):
        with torch.no_grad():
            for p, b in zip(params, base):
                p.copy_(b + t * directions[id(p)])
            return float(loss_fn(model(x), y))

    grads = torch.autograd.grad(loss_fn(model(x), y), params)
    assert float(bound.slope) == pytest.approx(sum(float((g * directions[id(p)]).sum()) for g, p in zip(grads, params)),
                                               rel=1e-10)
    for t in _grid(radius, 101):
        f = loss_at(float(t))
        assert float(bound.value + bound.slope * t + bound.lo * t * t) <= f + TOL * (1 + abs(f))
        assert f <= bound.upper(float(t)) + TOL * (1 + abs(f))


def test_minimiser_of_the_upper_bound():
    one = torch.tensor(1.0, dtype=DT)
    assert ab.LossBound(one, -one, one * 0, one, 10.0).minimiser() == pytest.approx(0.5)   # interior vertex
    assert ab.LossBound(one, -one, one * 0, one, 0.2).minimiser() == pytest.approx(0.2)    # clipped at R
    assert ab.LossBound(one, -one, one * 0, -one, 3.0).minimiser() == pytest.approx(3.0)   # concave: an end
    assert ab.LossBound(one, one, one * 0, one, 3.0).minimiser() == 0.0                     # ascent: stay
    assert ab.LossBound(one, -one, one * 0, torch.tensor(float("inf")), 3.0).minimiser() == 0.0


@pytest.mark.parametrize("module, name", [(nn.LayerNorm(4), "LayerNorm"), (nn.Dropout(0.1), "Dropout"),
                                          (nn.GELU(approximate="tanh"), "GELU"), (nn.Conv1d(1, 1, 1), "Conv1d")])
def test_module_without_a_rule_raises_naming_it(module, name):
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Tanh(), module))
    with pytest.raises(NotImplementedError, match=rf"'1\.1' \({name}"):
        ab.check_supported(model)
    with pytest.raises(NotImplementedError, match=name):
        ab.loss_enclosure(model, torch.randn(2, 4), torch.randn(2, 4), "mse", {}, 1.0)


def test_a_model_that_is_not_sequential_raises_naming_its_class():
    class Net(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(NotImplementedError, match="Net"):
        ab.check_supported(Net())


def test_unknown_loss_raises_naming_it():
    with pytest.raises(ValueError, match="loss"):
        ab.loss_enclosure(nn.Sequential(nn.Linear(2, 2)), torch.randn(3, 2), torch.randn(3, 2), "hinge", {}, 1.0)
