"""Real-data tier: runs only where `optfit data prepare` has filled the cache ($OPTFIT_DATA or
~/.cache/optfit/data); each test skips with the command to run when its dataset is absent."""

from __future__ import annotations

import collections
import itertools

import numpy as np
import pytest
import torch

from optfit.bench import data
from optfit.bench.workloads import BUILTIN

pytestmark = pytest.mark.realdata


def need(name: str) -> None:
    if not data.is_ready(data.MANIFEST[name]):
        pytest.skip(f"dataset {name!r} not in {data.data_dir()}: run `optfit data prepare --only {name}`")


def test_mnist_real():
    need("mnist")
    m = data.load_mnist()
    assert {k: v[0].shape for k, v in m.items()} == {"train": (50000, 784), "val": (10000, 784), "test": (10000, 784)}
    x, y = m["train"]
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) == set(range(10))
    assert 0.12 < x.mean() < 0.14  # MNIST's mean intensity is about 0.13


def test_fashion_mnist_real():
    need("fashion-mnist")
    fm = data.load_fashion_mnist()
    assert fm["train"][0].shape == (60000, 28, 28) and fm["test"][0].shape == (10000, 28, 28)
    assert np.bincount(fm["train"][1]).tolist() == [6000] * 10
    assert np.bincount(fm["test"][1]).tolist() == [1000] * 10


def test_shakespeare_real():
    need("shakespeare")
    plays = data.load_shakespeare()
    text = "".join(t for _, t in plays)
    assert len(plays) == 38 and 4.7e6 < len(text) < 5.1e6
    assert len(set(text)) == 80
    assert "hamlet" in " ".join(p for p, _ in plays) and "HAMLET:\nTo be, or not to be" in text


def test_sunspots_real():
    need("sunspots")
    s = data.load_sunspots()
    assert s.shape == (3177,) and s[:3].tolist() == [58.0, 62.6, 70.0] and s.min() >= 0


def test_mnist1d_real():
    need("mnist1d")
    d = data.load_mnist1d()
    assert d["x"].shape == (4000, 40) and d["x_test"].shape == (1000, 40)
    assert collections.Counter(d["y"].tolist()).keys() == set(range(10))


def test_markers_record_the_protocol_checksums():
    for art in data.MANIFEST.values():
        if data.is_ready(art) and art.payload_sha256:
            assert data.payload_digest(data.data_dir() / art.name) == art.payload_sha256, art.name


LR = {"w1-logreg": 3e-2, "w2-softmax": 3e-3, "w3-mlp": 1e-3, "w4-cnn": 3e-3, "w5-cnn1d": 1e-2, "w6-charlm": 3e-3,
      "w7-lstm": 1e-2, "w8-autoencoder": 1e-3, "w9-noisy-quadratic": 1e-2, "w10-digits": 1e-3}


@pytest.mark.parametrize("name", sorted(LR))
def test_real_workload_trains(name):
    for art in data.MANIFEST.values():
        if name in art.used_by:
            need(art.name)
    torch.manual_seed(0)
    w = BUILTIN[name]()
    w.prepare()
    model = w.build_model(0)
    batches = list(itertools.islice(w.train_batches(0), 30))
    with torch.no_grad():
        before = float(np.mean([float(w.loss(model, b)) for b in batches[:5]]))
        first = w.evaluate(model)[w.metric]
    opt = torch.optim.AdamW(model.parameters(), lr=LR[name], weight_decay=0.0)
    for b in batches:
        opt.zero_grad()
        w.loss(model, b).backward()
        opt.step()
    with torch.no_grad():
        after = float(np.mean([float(w.loss(model, b)) for b in batches[:5]]))
        last = w.evaluate(model)[w.metric]
    assert after < before
    assert (last > first) if w.higher_is_better else (last < first)


def test_logreg_real_f_star():
    w = BUILTIN["w1-logreg"]()
    w.prepare()
    x, y = w._xy
    assert x.shape == (569, 30) and float(x.max()) == 1.0
    gram = torch.linalg.eigvalsh(x.T @ x / len(x))
    assert 1e12 < float(gram.max() / gram.min()) < 1e13  # the protocol's cond ≈ 2e12
    theta = torch.zeros(31, dtype=torch.float64)
    for _ in range(30):  # independent check: Newton's method in torch, from zero
        theta.requires_grad_(True)
        z = x @ theta[:30] + theta[30]
        f = torch.nn.functional.binary_cross_entropy_with_logits(z, y) + 0.5 * w.lam * theta[:30].pow(2).sum()
        g = torch.autograd.grad(f, theta)[0]
        hess = torch.autograd.functional.hessian(
            lambda t: torch.nn.functional.binary_cross_entropy_with_logits(x @ t[:30] + t[30], y)
            + 0.5 * w.lam * t[:30].pow(2).sum(), theta.detach())
        theta = (theta - torch.linalg.solve(hess, g)).detach()
    assert float(f.detach()) == pytest.approx(w.f_star, rel=1e-10)
