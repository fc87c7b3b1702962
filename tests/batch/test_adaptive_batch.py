"""optfit.batch: the variance estimators, the (coordinate-wise) norm test and its batch-size rule, the resumable
sampler, and an oracle: on noisy linear regression the batch grows as ‖∇F‖ shrinks (and stays put without noise)."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from optfit.batch import (AdaptiveBatchSampler, AdaptiveBatchSize, GradientStatistics, microbatch_statistics,
                          per_sample_gradients, per_sample_statistics)
from optfit.optim import AdAdaGradNorm

F64 = torch.float64


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def _data(n=10, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=gen, dtype=F64), torch.randn(n, 2, generator=gen, dtype=F64)


def _mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def _loop_grads(model, loss_fn, batches):
    """Per-sample gradients the slow way: one backward per one-sample batch."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {n: [] for n, _ in named}
    for b in batches:
        model.zero_grad()
        loss_fn(model, b).backward()
        for n, p in named:
            out[n].append(p.grad.detach().clone())
    return {n: torch.stack(v) for n, v in out.items()}


# --------------------------------------------------------------------------------------- per-sample gradients
def test_vmap_per_sample_gradients_equal_a_loop_of_backward_passes():
    model, (x, y) = _net(), _data()
    vm = per_sample_gradients(model, _mse, (x, y))
    loop = _loop_grads(model, _mse, [(x[i:i + 1], y[i:i + 1]) for i in range(10)])
    assert vm.keys() == loop.keys()
    for k in vm:
        assert vm[k].shape == (10, *dict(model.named_parameters())[k].shape)
        torch.testing.assert_close(vm[k], loop[k], rtol=1e-12, atol=1e-14)


def test_per_sample_gradients_accept_a_dict_batch_and_frozen_parameters():
    model, (x, y) = _net(), _data(6)
    model[0].bias.requires_grad_(False)

    def loss(m, b):
        return ((m(b["x"]) - b["y"]) ** 2).mean() * b["scale"]

    vm = per_sample_gradients(model, loss, {"x": x, "y": y, "scale": 2.0})
    assert "0.bias" not in vm
    loop = _loop_grads(model, lambda m, b: loss(m, {"x": b[0], "y": b[1], "scale": 2.0}),
                       [(x[i:i + 1], y[i:i + 1]) for i in range(6)])
    for k in vm:
        torch.testing.assert_close(vm[k], loop[k], rtol=1e-12, atol=1e-14)


def test_batch_tensors_must_share_the_sample_dimension():
    with pytest.raises(ValueError, match="leading"):
        per_sample_gradients(_net(), _mse, (torch.zeros(4, 3, dtype=F64), torch.zeros(5, 2, dtype=F64)))


def test_batch_norm_in_training_mode_points_to_the_microbatch_estimator():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).double()
    with pytest.raises(RuntimeError, match="microbatch"):
        per_sample_statistics(model, _mse, _data(8))
    assert microbatch_statistics(model, _mse, _data(8), 2).variance_sum > 0  # any model


# ------------------------------------------------------------------------------------------ the estimators
@pytest.mark.parametrize("chunk_size", [None, 1, 3, 10])
def test_variance_is_the_unbiased_sample_variance_computed_independently(chunk_size):
    model, (x, y) = _net(), _data()
    stats = per_sample_statistics(model, _mse, (x, y), chunk_size=chunk_size)
    loop = _loop_grads(model, _mse, [(x[i:i + 1], y[i:i + 1]) for i in range(10)])
    assert stats.num_samples == 10
    var_sum = 0.0
    for k, g in loop.items():
        flat = g.reshape(10, -1).tolist()
        for j in range(len(flat[0])):  # plain Python: Σ(gᵢ − ḡ)²/(n − 1)
            col = [row[j] for row in flat]
            mean = sum(col) / 10
            var = sum((c - mean) ** 2 for c in col) / 9
            assert stats.mean[k].reshape(-1)[j].item() == pytest.approx(mean, rel=1e-11, abs=1e-14)
            assert stats.variance[k].reshape(-1)[j].item() == pytest.approx(var, rel=1e-10, abs=1e-14)
            var_sum += var
    assert stats.variance_sum == pytest.approx(var_sum, rel=1e-10)
    model.zero_grad()
    _mse(model, (x, y)).backward()  # ḡ is the mini-batch gradient
    assert stats.grad_norm_sq == pytest.approx(sum(float((p.grad ** 2).sum()) for p in model.parameters()), rel=1e-12)


def test_microbatch_estimator_matches_its_formula():
    model, (x, y) = _net(), _data(10)
    stats = microbatch_statistics(model, _mse, (x, y), 4)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad: .grad untouched
    parts = [(0, 2), (2, 5), (5, 8), (8, 10)]  # round(i·10/4): slices of 2, 3, 3, 2
    mg = _loop_grads(model, _mse, [(x[a:b], y[a:b]) for a, b in parts])
    sizes = torch.tensor([b - a for a, b in parts], dtype=F64)
    assert stats.num_samples == 10
    for k, g in mg.items():
        w = sizes.reshape(-1, *([1] * (g.ndim - 1)))
        mean = (w * g).sum(0) / 10
        var = (w * (g - mean) ** 2).sum(0) / 3  # Σ nₘ(ḡₘ − ḡ)² / (k − 1)
        torch.testing.assert_close(stats.mean[k], mean, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(stats.variance[k], var, rtol=1e-12, atol=1e-14)


def test_microbatch_estimator_is_unbiased_for_unequal_sizes():
    """Synthetic iid per-sample gradients with σ² = (1, 4, 9): the mean of the micro-batch estimates over many
    batches is σ² (unequal micro-batch sizes 1, 3, 4, 8), while the naive (n/k)·var(ḡₘ) is biased here."""
    gen = torch.Generator().manual_seed(0)
    sd = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    sizes = [1, 3, 4, 8]
    total = torch.zeros(3, dtype=F64)
    trials = 4000
    for _ in range(trials):
        grads = [(torch.randn(n, 3, generator=gen, dtype=F64) * sd + 5.0).mean(0) for n in sizes]
        total += GradientStatistics.from_microbatches([[g] for g in grads], sizes).variance["0"]
    torch.testing.assert_close(total / trials, sd ** 2, rtol=0.06, atol=0)


def test_from_samples_and_from_microbatches_agree_when_each_microbatch_is_one_sample():
    g = torch.randn(7, 2, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    a = GradientStatistics.from_samples({"w": g})
    b = GradientStatistics.from_microbatches([{"w": gi} for gi in g], [1] * 7)
    torch.testing.assert_close(a.variance["w"], b.variance["w"], rtol=1e-12, atol=0)
    torch.testing.assert_close(a.variance["w"], g.var(0), rtol=1e-12, atol=0)


def test_assign_grads_writes_the_mean():
    model, (x, y) = _net(), _data()
    stats = per_sample_statistics(model, _mse, (x, y))
    model.zero_grad()
    _mse(model, (x, y)).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    stats.assign_grads(model)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-12, atol=1e-15)


# ------------------------------------------------------------------------------------------------ the tests
# per-sample gradients (x, y): ḡ = (2, 1), σ̂² = (4/3, 4/3), Σσ̂² = 8/3, ‖ḡ‖² = 5
HAND = torch.tensor([[1.0, 0.0], [3.0, 0.0], [1.0, 2.0], [3.0, 2.0]], dtype=F64)
HAND_STATS = GradientStatistics.from_samples({"w": HAND})


def test_hand_built_statistics():
    assert HAND_STATS.grad_norm_sq == 5.0
    assert HAND_STATS.variance_sum == pytest.approx(8 / 3, rel=1e-15)


@pytest.mark.parametrize("eta, b, grows", [(0.2, 4, True), (0.5, 4, False), (0.2, 14, False), (0.2, 13, True)])
def test_norm_test_triggers_exactly_when_the_inequality_holds(eta, b, grows):
    ctl = AdaptiveBatchSize(b, eta=eta)
    assert ctl.should_grow(HAND_STATS) == ((8 / 3) / b > eta ** 2 * 5.0) == grows
    result = ctl.observe(HAND_STATS)
    assert result.passed is not grows
    want = math.ceil(Fraction(8, 3) / (Fraction(eta).limit_denominator(100) ** 2 * 5)) if grows else b
    assert ctl.batch_size == result.batch_size == want  # η = 0.2: ⌈(8/3)/(0.04·5)⌉ = ⌈13.33⌉ = 14
    assert result.required_batch_size == pytest.approx((8 / 3) / (eta ** 2 * 5), rel=1e-12)


def test_norm_test_boundary_on_both_sides():
    b = 4
    eta_star = math.sqrt((8 / 3) / b / 5.0)  # Σσ̂²/b = η²‖ḡ‖² exactly at η*
    assert AdaptiveBatchSize(b, eta=eta_star * (1 - 1e-9)).should_grow(HAND_STATS)
    assert not AdaptiveBatchSize(b, eta=eta_star * (1 + 1e-9)).should_grow(HAND_STATS)


def test_coordinate_test_is_stronger_than_the_norm_test():
    # ḡ = (2, 0.1): coordinate 2 has a small mean and a large spread; the norm test passes, the coordinate one not
    g = torch.tensor([[1.0, 1.1], [3.0, -0.9], [1.0, 1.1], [3.0, -0.9]], dtype=F64)
    stats = GradientStatistics.from_samples({"w": g})
    var = [sum((r[j] - m) ** 2 for r in g.tolist()) / 3 for j, m in enumerate([2.0, 0.1])]
    eta = 1.0
    assert not AdaptiveBatchSize(4, eta=eta, test="norm").should_grow(stats)
    ctl = AdaptiveBatchSize(4, eta=eta, test="coordinate")
    assert ctl.should_grow(stats)
    required = max(var[0] / (eta * 2.0) ** 2, var[1] / (eta * 0.1) ** 2)
    assert ctl.required_batch_size(stats) == pytest.approx(required, rel=1e-9)
    ctl.observe(stats)
    assert ctl.batch_size == math.ceil(required)  # ⌈(16/12)/0.01⌉ = ⌈133.3⌉ = 134
    assert not ctl.should_grow(stats)


def test_batch_size_never_shrinks_is_capped_and_a_zero_gradient_goes_to_the_cap():
    ctl = AdaptiveBatchSize(100, eta=0.2)
    ctl.observe(HAND_STATS)  # would need 14 < 100: passes, stays
    assert ctl.batch_size == 100 and ctl.last.passed
    capped = AdaptiveBatchSize(4, eta=0.01, max_batch_size=50)
    capped.observe(HAND_STATS)  # would need ⌈26667⌉
    assert capped.batch_size == 50 and capped.at_max
    zero = GradientStatistics.from_samples({"w": torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)})
    z = AdaptiveBatchSize(4, eta=0.5, max_batch_size=64)
    assert z.required_batch_size(zero) == math.inf
    z.observe(zero)
    assert z.batch_size == 64
    flat = GradientStatistics.from_samples({"w": torch.zeros(3, 2, dtype=F64)})  # 0/0: nothing to fix
    f = AdaptiveBatchSize(4, test="coordinate")
    assert f.required_batch_size(flat) == 0.0 and not f.should_grow(flat)


def test_update_runs_every_test_every_calls_and_stops_at_the_cap():
    model, (x, y) = _net(), _data()
    ctl = AdaptiveBatchSize(2, eta=0.01, test_every=2, max_batch_size=1000)
    r1 = ctl.update(model, _mse, (x, y))
    assert r1 is not None and r1.grew and ctl.batch_size == 1000
    assert ctl.update(model, _mse, (x, y)) is None  # off call
    assert ctl.update(model, _mse, (x, y)) is None  # at the cap: nothing to test
    assert (ctl.calls, ctl.num_tests, ctl.num_grows) == (3, 1, 1)


@pytest.mark.parametrize("estimator", ["per_sample", "microbatch"])
def test_update_uses_the_configured_estimator(estimator):
    model, (x, y) = _net(), _data(12)
    ctl = AdaptiveBatchSize(2, eta=0.3, estimator=estimator, microbatches=3)
    result = ctl.update(model, _mse, (x, y))
    stats = (per_sample_statistics(model, _mse, (x, y)) if estimator == "per_sample"
             else microbatch_statistics(model, _mse, (x, y), 3))
    assert result.variance_sum == pytest.approx(stats.variance_sum, rel=1e-12)


def test_controller_state_dict_round_trip():
    ctl = AdaptiveBatchSize(4, eta=0.2)
    ctl.observe(HAND_STATS)
    ctl2 = AdaptiveBatchSize(4, eta=0.2)
    ctl2.load_state_dict(ctl.state_dict())
    assert ctl2.batch_size == 14 and ctl2.last == ctl.last and ctl2.num_grows == 1


@pytest.mark.parametrize("kwargs, name", [({"eta": 0.0}, "eta"), ({"test": "inner"}, "test"),
                                          ({"max_batch_size": 2}, "max_batch_size"),
                                          ({"estimator": "exact"}, "estimator"), ({"microbatches": 1}, "microbatches"),
                                          ({"test_every": 0}, "test_every")])
def test_invalid_arguments_name_themselves(kwargs, name):
    with pytest.raises(ValueError, match=name):
        AdaptiveBatchSize(4, **kwargs)


# ---------------------------------------------------------------------------------------------- the sampler
def _epoch(batches, limit=200):
    """The batches of one pass, failing (not hanging) if a broken sampler never ends its epoch."""
    out = []
    for batch in batches:
        out.append(batch)
        assert len(out) <= limit, "the sampler does not end its epoch"
    return out


class _Sizes:
    """A stand-in for the controller: a batch size the test changes by hand."""

    def __init__(self, b):
        self.batch_size = b


@pytest.mark.parametrize("shuffle", [True, False])
def test_sampler_follows_the_batch_size_and_covers_the_epoch_without_repeats(shuffle):
    sizes = _Sizes(3)
    sampler = AdaptiveBatchSampler(50, sizes, shuffle=shuffle, seed=7)
    seen, lengths = [], []
    for i, batch in enumerate(sampler):
        assert i < 200
        lengths.append(len(batch))
        seen.extend(batch)
        if i == 2:
            sizes.batch_size = 10  # the controller grew: the next batch is drawn at the new size
    assert lengths == [3, 3, 3, 10, 10, 10, 10, 1]
    assert sorted(seen) == list(range(50))
    assert (seen != list(range(50))) == shuffle


def test_sampler_drop_last_and_next_epoch_is_a_new_permutation():
    sampler = AdaptiveBatchSampler(20, _Sizes(6), seed=0, drop_last=True)
    first = _epoch(sampler)
    assert [len(b) for b in first] == [6, 6, 6] and len({i for b in first for i in b}) == 18
    assert sampler.epoch == 1
    second = _epoch(sampler)
    assert second != first and len(second) == 3


def test_sampler_resumes_mid_epoch_from_state_dict():
    sizes = _Sizes(4)
    a = AdaptiveBatchSampler(37, sizes, seed=3)
    it = iter(a)
    head = [next(it) for _ in range(3)]
    state = a.state_dict()
    sizes.batch_size = 5
    rest = _epoch(it)

    b = AdaptiveBatchSampler(37, _Sizes(5), seed=99)  # the seed comes from the state
    b.load_state_dict(state)
    assert _epoch(b) == rest
    assert sorted(i for batch in head + rest for i in batch) == list(range(37))
    assert b.epoch == 1 and _epoch(b) == _epoch(a)  # both continue with epoch 1


def test_sampler_in_a_dataloader_with_the_controller():
    x = torch.arange(30, dtype=F64).reshape(30, 1)
    ds = TensorDataset(x, x * 2)
    ctl = AdaptiveBatchSize(4, eta=0.2)
    loader = DataLoader(ds, batch_sampler=AdaptiveBatchSampler(ds, ctl, seed=1))
    lengths = []
    for i, (xb, yb) in enumerate(loader):
        assert i < 200
        lengths.append(len(xb))
        torch.testing.assert_close(yb, 2 * xb)
        if i == 0:
            ctl.observe(HAND_STATS)  # grows to 14
    assert lengths == [4, 14, 12]
    assert len(loader) == 3  # a new epoch at 14: ⌈30/14⌉


# ------------------------------------------------------------------------------------------------- oracle
def _regression(noise, steps=120, eta=0.5, seed=0):
    """AdAdaGrad-Norm on ½(xᵀw − y)² with the norm test; per step: (batch size before, after, ‖∇F(w)‖, the
    population batch size tr Σ(w) / (η²‖∇F(w)‖²) from the full data)."""
    gen = torch.Generator().manual_seed(seed)
    n, d = 4096, 5
    X = torch.randn(n, d, generator=gen, dtype=F64)
    Y = X @ torch.randn(d, 1, generator=gen, dtype=F64) + noise * torch.randn(n, 1, generator=gen, dtype=F64)
    ds = TensorDataset(X, Y)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.fill_(3.0)
    ctl = AdaptiveBatchSize(2, eta=eta, max_batch_size=n)
    loader = DataLoader(ds, batch_sampler=AdaptiveBatchSampler(ds, ctl, seed=seed))
    opt = AdAdaGradNorm(model.parameters(), lr=1.0)

    def loss_fn(m, b):
        return 0.5 * ((m(b[0]) - b[1]) ** 2).mean()

    record = []
    while len(record) < steps and not ctl.at_max:
        for batch in loader:
            with torch.no_grad():
                per_sample = X * (X @ model.weight.T - Y)
                full = per_sample.mean(0)
                population = float(per_sample.var(0).sum() / (eta ** 2 * (full ** 2).sum()))
            stats = per_sample_statistics(model, loss_fn, batch)
            before = ctl.batch_size
            ctl.observe(stats)
            record.append((before, ctl.batch_size, float(full.norm()), population))
            opt.zero_grad()
            stats.assign_grads(model)
            opt.step()
            if len(record) >= steps or ctl.at_max:
                break
    return record


def test_oracle_batch_grows_as_the_gradient_norm_shrinks_under_noise():
    noisy = _regression(noise=1.0)
    sizes = [r[1] for r in noisy]
    assert all(a <= b for a, b in zip(sizes, sizes[1:]))  # never shrinks
    assert sizes[0] <= 16 and sizes[-1] >= 500  # from 2 to hundreds
    assert noisy[-1][2] < 0.05 * noisy[0][2]  # while ‖∇F‖ fell 20×
    # each growth (once past the first noisy handful) lands near the population's tr Σ/(η²‖∇F‖²)
    grown = [r for r in noisy if r[1] > r[0] and r[0] >= 20]
    assert len(grown) >= 5
    for before, after, _, population in grown:
        assert 0.5 <= after / population <= 4.0, (before, after, population)
    # the smaller the gradient, the bigger the batch: compare the first and last growth events
    assert grown[-1][2] < grown[0][2] and grown[-1][1] > 10 * grown[0][1]


def test_oracle_without_noise_the_batch_stays_bounded():
    """Noise-free regression: per-sample gradients xᵢxᵢᵀ(w − w*) shrink with ∇F, so tr Σ/‖∇F‖² stays bounded and
    the test stops asking for more samples while ‖∇F‖ falls 100×."""
    clean = _regression(noise=0.0, steps=300)
    assert clean[-1][2] < 0.01 * clean[0][2]
    assert clean[-1][1] <= 100
    assert max(r[3] for r in clean) < 50  # the population size it tracks is bounded too
