"""AdaFisher without the model's modules: it still runs a correct update (bias-corrected momentum SGD, F̃ = 1, what
it does for any parameter outside a supported layer), so it warns rather than errs; it says so once, when built."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import optfit
from optfit.optim import AdaFisher, AdaFisherW, AdaFisherWithoutModelWarning


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2))


@pytest.mark.parametrize("build", [
    lambda m: AdaFisher(m.parameters()),
    lambda m: AdaFisherW(list(m.parameters()), lr=0.1),
    lambda m: AdaFisher([{"params": list(m.parameters())}]),
    lambda m: optfit.create_optimizer(m.parameters(), "adafisher"),
    lambda m: optfit.create_optimizer(list(m.parameters()), "adafisherw"),
], ids=["params", "adafisherw", "groups", "factory-params", "factory-list"])
def test_bare_parameters_warn(build):
    with pytest.warns(AdaFisherWithoutModelWarning, match="no model.*momentum SGD.*model="):
        opt = build(mlp())
    assert opt.supported_modules == []


def test_a_model_none_of_whose_layers_is_supported_warns():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Conv1d(4, 4, 1))
    with pytest.warns(AdaFisherWithoutModelWarning, match="hooks no layer of the given model.*momentum SGD"):
        AdaFisher(model.parameters(), model=model)


@pytest.mark.parametrize("build", [
    lambda m: AdaFisher(m.parameters(), model=m),
    lambda m: AdaFisher(m),
    lambda m: optfit.create_optimizer(m, "adafisher"),
    lambda m: optfit.create_optimizer(m.parameters(), "adafisherw", model=m),
], ids=["model=", "module-as-params", "factory-module", "factory-model="])
def test_with_the_model_there_is_no_warning(build):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt = build(mlp())
    assert opt.supported_modules == ["0", "1", "3"]


def test_the_warning_describes_what_runs_and_is_given_once():
    """The update is the bias-corrected EMA momentum step θ ← θ − η/(1−βᵗ)·m, m ← βm + (1−β)g; the steps
    do not warn again."""
    model = mlp()
    with pytest.warns(AdaFisherWithoutModelWarning):
        opt = AdaFisher(model.parameters(), lr=0.1, beta=0.8)
    theta = [p.detach().clone() for p in model.parameters()]
    m = [torch.zeros_like(p) for p in theta]
    gen = torch.Generator().manual_seed(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for t in range(1, 4):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            for i, p in enumerate(model.parameters()):
                m[i] = 0.8 * m[i] + 0.2 * p.grad
                theta[i] = theta[i] - 0.1 / (1 - 0.8**t) * m[i]
            opt.step()
    for p, want in zip(model.parameters(), theta):
        torch.testing.assert_close(p.detach(), want)
