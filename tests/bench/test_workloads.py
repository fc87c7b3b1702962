from __future__ import annotations

import importlib.util
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from optfit.bench import data
from optfit.bench.workload import DataMissing, Workload
from optfit.bench.workloads import BUILTIN, SUITES, get_workload, list_workloads
from optfit.bench.workloads._common import TARGETS_PATH, TARGETS_VERSION, index_batches
from optfit.bench.workloads.charlm import CharGPT

from .data_fakes import make_all

NEEDS_DATA = {"w2-softmax": "mnist", "w3-mlp": "fashion-mnist", "w4-cnn": "fashion-mnist", "w5-cnn1d": "mnist1d",
              "w6-charlm": "shakespeare", "w7-lstm": "sunspots", "w8-autoencoder": "mnist"}
NEEDS_SKLEARN = {"w1-logreg", "w1-logreg-smoke", "w10-digits"}
# hand-counted parameter numbers of the protocol's models
PARAMS = {"w1-logreg": 31, "w2-softmax": 7850, "w3-mlp": 269_322, "w4-cnn": 52_138, "w5-cnn1d": 5_210,
          "w7-lstm": 4_513, "w8-autoencoder": 419_120, "w9-noisy-quadratic": 1000, "w10-digits": 9_610}


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory):
    return make_all(tmp_path_factory.mktemp("fake-data"))


def make(name: str, root) -> Workload:
    if name in NEEDS_SKLEARN and not (importlib.util.find_spec("sklearn") and importlib.util.find_spec("scipy")):
        pytest.skip("needs scikit-learn's bundled data and scipy")
    workload = BUILTIN[name](data_root=root)
    workload.prepare()
    return workload


# ------------------------------------------------------------------------------------------ registry
def test_registry_suites_and_targets():
    assert {f"w{i}" for i in range(1, 11)} == {n.split("-")[0] for n in list_workloads()}
    assert len(SUITES["full"]) == 10 and set(SUITES["smoke"]) <= set(BUILTIN)
    assert set(SUITES["quick"]) >= {"w10-digits", "w9-noisy-quadratic", "w2-softmax", "w5-cnn1d", "w7-lstm"}
    assert not any(n in NEEDS_DATA for n in SUITES["smoke"])  # smoke runs without `optfit data prepare`
    doc = json.loads(TARGETS_PATH.read_text())
    assert doc["version"] == TARGETS_VERSION and set(doc["workloads"]) == set(BUILTIN)
    for name, cls in BUILTIN.items():
        entry = doc["workloads"][name]
        assert (cls.name, cls.metric, cls.target, cls.higher_is_better) == \
            (name, entry["metric"], entry["target"], entry["higher_is_better"])
        assert cls.max_steps == pytest.approx(4 / 3 * cls.step_hint, rel=0.03)
        assert 20 <= cls.max_steps / cls.eval_every <= 40, name


def test_get_workload_builtin_and_path():
    assert isinstance(get_workload("w9-noisy-quadratic"), BUILTIN["w9-noisy-quadratic"])
    w = get_workload("optfit.bench.workloads.quadratic:NoisyQuadraticWorkload")
    assert w.name == "w9-noisy-quadratic"
    with pytest.raises(ValueError, match="w10-digits"):
        get_workload("w11-nope")


# ------------------------------------------------------------------------------------------ every workload
@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_workload_contract(name, fake_root):
    w = make(name, fake_root)
    m0, m0b, m1 = w.build_model(0), w.build_model(0), w.build_model(1)
    p0 = torch.nn.utils.parameters_to_vector(m0.parameters())
    assert torch.equal(p0, torch.nn.utils.parameters_to_vector(m0b.parameters()))
    assert not torch.equal(p0, torch.nn.utils.parameters_to_vector(m1.parameters()))
    assert all(p.dtype == w.dtype for p in m0.parameters())
    if name in PARAMS:
        assert p0.numel() == PARAMS[name]
    # the batch stream is deterministic in the seed, and another seed gives another stream
    b0 = list(itertools.islice(w.train_batches(0), 3))
    b0b = list(itertools.islice(w.train_batches(0), 3))
    b1 = list(itertools.islice(w.train_batches(1), 3))
    flat = lambda bs: torch.cat([t.double().flatten() for b in bs for t in (b if isinstance(b, tuple) else (b,))])
    assert torch.equal(flat(b0), flat(b0b))
    if not name.startswith("w1-"):  # W1 is full batch
        assert not torch.equal(flat(b0), flat(b1))
    # a few AdamW steps on one batch lower its loss; gradients reach every parameter
    before = float(w.loss(m0, b0[0]).detach())
    opt = torch.optim.AdamW(m0.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(5):
        opt.zero_grad()
        loss = w.loss(m0, b0[0])
        assert loss.dim() == 0 and math.isfinite(loss.item())
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m0.parameters())
        opt.step()
    assert float(w.loss(m0, b0[0]).detach()) < before
    metrics = w.evaluate(m0)
    assert w.metric in metrics and all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert w.reached(w.target) and not w.reached(w.target + (-1 if w.higher_is_better else 1))


@pytest.mark.parametrize("name", sorted(NEEDS_DATA))
def test_missing_data_names_the_prepare_command(name, tmp_path):
    w = BUILTIN[name](data_root=tmp_path)
    with pytest.raises(DataMissing, match=rf"optfit data prepare --only {NEEDS_DATA[name]}"):
        w.prepare()


@pytest.mark.parametrize("name", sorted(BUILTIN))
def test_check_data_is_cheap_and_names_the_prepare_command(name, tmp_path, fake_root, monkeypatch):
    """``check_data`` (what a run calls before starting trials) fails exactly where ``prepare`` would, without
    loading anything."""
    if name in NEEDS_DATA:
        with pytest.raises(DataMissing, match=rf"optfit data prepare --only {NEEDS_DATA[name]}"):
            BUILTIN[name](data_root=tmp_path).check_data()
        assert BUILTIN[name].datasets == (NEEDS_DATA[name],)
    w = BUILTIN[name](data_root=fake_root)
    loads = []
    for loader in ("load_mnist", "load_fashion_mnist", "load_shakespeare", "load_sunspots", "load_mnist1d"):
        monkeypatch.setattr(data, loader, lambda *a, _n=loader, **k: loads.append(_n))
    if name in NEEDS_SKLEARN and not importlib.util.find_spec("sklearn"):
        with pytest.raises(DataMissing, match="scikit-learn"):
            w.check_data()
    else:
        w.check_data()
    assert loads == []


def test_building_models_leaves_the_global_rng_alone(fake_root):
    w = make("w3-mlp", fake_root)
    state = torch.random.get_rng_state()
    w.build_model(3)
    list(itertools.islice(w.train_batches(3), 2))
    assert torch.equal(state, torch.random.get_rng_state())


def test_index_batches_is_an_epoch_permutation():
    it = index_batches(10, 3, seed=0)
    epoch = torch.cat([next(it) for _ in range(3)])  # 3 batches of 3, the 10th index dropped
    assert len(set(epoch.tolist())) == 9
    with pytest.raises(ValueError, match="batch_size 11"):
        next(index_batches(10, 11, 0))
    with pytest.raises(ValueError, match="seed"):
        next(index_batches(10, 2, -1))


# ------------------------------------------------------------------------------------------ oracles
def test_classification_evaluate_matches_a_direct_computation(fake_root):
    w = make("w2-softmax", fake_root)
    model = w.build_model(0)
    xe, ye = w.tensors[2:]
    logits = model(xe).detach()
    metrics = w.evaluate(model)
    assert metrics["accuracy"] == pytest.approx(float((logits.argmax(1) == ye).float().mean()))
    assert metrics["loss"] == pytest.approx(float(F.cross_entropy(logits, ye)), rel=1e-5)


def test_bundled_tables_match_sklearn_loaders():
    datasets = pytest.importorskip("sklearn.datasets")
    from optfit.bench.workloads._common import sklearn_table

    for filename, loader in (("breast_cancer.csv", datasets.load_breast_cancer), ("digits.csv.gz", datasets.load_digits)):
        x, y = sklearn_table(filename)
        ref = loader()
        assert np.array_equal(x, ref.data) and np.array_equal(y, ref.target)


def test_logreg_optimum_is_stationary_and_gap_is_relative():
    w = make("w1-logreg", None)
    x, y = w._xy

    def f(t):
        z = x @ t[:30] + t[30]
        return F.binary_cross_entropy_with_logits(z, y) + 0.5 * w.lam * t[:30].pow(2).sum()

    from optfit.bench.workloads.linear import logreg_optimum

    f_star, w_star = logreg_optimum(x.numpy(), y.numpy(), w.lam)
    t = torch.tensor(w_star, requires_grad=True)
    (g,) = torch.autograd.grad(f(t), t)  # independent gradient (autograd) at the optimum
    assert float(g.norm()) < 1e-10 and f_star == pytest.approx(w.f_star, rel=1e-12)
    f_zero = float(f(torch.zeros(31, dtype=torch.float64)))
    assert f_zero == pytest.approx(np.log(2)) and 0.2 < f_star < f_zero
    model = w.build_model(0)
    with torch.no_grad():
        model.weight.copy_(t[:30])
        model.bias.copy_(t[30:])
    assert abs(w.evaluate(model)["relative_gap"]) < 1e-12
    with torch.no_grad():
        model.bias.add_(0.1)
    m = w.evaluate(model)
    assert m["relative_gap"] == pytest.approx((m["loss"] - f_star) / f_star) and m["relative_gap"] > 0


def test_noisy_quadratic_gradient_is_curvature_plus_shaped_noise():
    w = get_workload("w9-noisy-quadratic")
    model = w.build_model(0)
    eps = next(w.train_batches(0))
    model.zero_grad()
    w.loss(model, eps).backward()
    assert torch.allclose(model.theta.grad, w.h * model.theta.detach() + eps, atol=1e-6)
    noise = torch.stack(list(itertools.islice(w.train_batches(5), 2000)))
    var = noise.var(0)  # should be h / B per coordinate
    ratio = (var / (w.h / w.noise_batch))
    assert abs(float(ratio.mean()) - 1) < 0.02 and abs(float(noise.mean())) < 0.01
    assert w.evaluate(model)["relative_loss"] == pytest.approx(1.0)
    theta0 = model.theta.detach()
    assert float(model.loss0) == pytest.approx(float(0.5 * (w.h * theta0 ** 2).sum()), rel=1e-6)


def test_lstm_relative_mse_uses_the_persistence_forecast(fake_root):
    w = make("w7-lstm", fake_root)
    series = torch.from_numpy(data.load_sunspots(fake_root)).float()
    n_train = int(len(series) * 0.8)
    s = (series - series[:n_train].mean()) / series[:n_train].std()
    expected = float(((s[n_train:] - s[n_train - 1:-1]) ** 2).mean())
    assert w.persistence_mse == pytest.approx(expected, rel=1e-5)
    x, y, xt, yt = w._arrays
    assert x.shape == (n_train - 64, 64) and xt.shape == (len(series) - n_train, 64)
    assert torch.equal(xt[0, -1], s[n_train - 1]) and torch.equal(yt[0], s[n_train])
    model = w.build_model(0)
    m = w.evaluate(model)
    assert m["relative_mse"] == pytest.approx(m["mse"] / expected, rel=1e-5)


def test_charlm_split_vocab_and_model_size(fake_root):
    w = make("w6-charlm", fake_root)
    text = "".join(t for _, t in data.load_shakespeare(fake_root))
    assert w.vocab == sorted(set(text))
    train, val = w._streams
    assert val.shape[1] == w.ctx + 1 and len(train) > len(text) // 2
    gpt = CharGPT(80)  # the protocol's 115k for the real 80-character vocabulary
    assert sum(p.numel() for p in gpt.parameters()) == 114_512
    batch = next(w.train_batches(0))
    assert batch.shape == (w.batch_size, w.ctx + 1)
    # causal: changing a later character does not change earlier logits
    model = w.build_model(0)
    a = batch[:1, :-1].clone()
    b = a.clone()
    b[0, -1] = (b[0, -1] + 1) % len(w.vocab)
    assert torch.allclose(model(a)[0, :-1], model(b)[0, :-1], atol=1e-6)
    assert not torch.allclose(model(a)[0, -1], model(b)[0, -1])
