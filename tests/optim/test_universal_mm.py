"""Universal MM (optfit.optim.universal_mm): the loss after every step is at most the bound's prediction on random
MLPs (float64, both losses, every activation), full-batch training decreases the loss monotonically and far, the
step is the bound's minimiser, and the optimizer contract (registry record, factory, state_dict resume, bad
hyperparameters, unsupported modules, per-group lr, non-finite gradients, API misuse) holds."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import optfit
import optfit.optim.universal_mm  # noqa: F401  (registers "universal-mm")
from optfit.optim.universal_mm import UniversalMM

DT = torch.float64
ACTS = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU, "softplus": nn.Softplus, "gelu": nn.GELU,
        "silu": nn.SiLU}
LOSS_FNS = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy}


def _problem(act="tanh", loss="mse", seed=0, width=16, n=64, dtype=DT):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, width), ACTS[act](), nn.Sequential(nn.Linear(width, width), ACTS[act]()),
                          nn.Linear(width, 3)).to(dtype)
    gen = torch.Generator().manual_seed(seed + 100)
    x = torch.randn(n, 5, generator=gen, dtype=dtype)
    y = torch.randn(n, 3, generator=gen, dtype=dtype) if loss == "mse" else torch.randint(0, 3, (n,), generator=gen)
    return model, x, y


def _closure(model, opt, x, y, loss):
    def closure():
        opt.zero_grad()
        value = LOSS_FNS[loss](model(x), y)
        value.backward()
        return value
    return closure


def _train(model, opt, x, y, loss, steps):
    opt.set_batch(x, y)
    closure = _closure(model, opt, x, y, loss)
    return [float(opt.step(closure).detach()) for _ in range(steps)]


def _loss(model, x, y, loss):
    with torch.no_grad():
        return float(LOSS_FNS[loss](model(x), y))


# ------------------------------------------------------------------------------------------- the bound holds
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
@pytest.mark.parametrize("direction", ["gradient", "rmsprop"])
def test_loss_after_each_step_is_at_most_the_predicted_bound(act, loss, direction):
    for seed in range(2):
        model, x, y = _problem(act, loss, seed)
        opt = UniversalMM(model.parameters(), model=model, loss=loss, direction=direction,
                          trust_radius=[0.01, 10.0][seed])
        opt.set_batch(x, y)
        closure = _closure(model, opt, x, y, loss)
        moved = 0
        for _ in range(15):
            before = float(opt.step(closure).detach())
            rec = opt.last_bound
            after = _loss(model, x, y, loss)
            assert rec.loss == pytest.approx(before, rel=1e-12)
            assert after <= rec.predicted + 1e-12 * (1 + abs(after)), (act, loss, rec)
            assert rec.predicted <= before + 1e-12
            moved += rec.step_size > 0
        assert moved >= 10


def test_step_is_the_minimiser_of_the_upper_bound_and_the_radius_follows_it():
    model, x, y = _problem("tanh", "mse")
    opt = UniversalMM(model.parameters(), model=model, trust_radius=1e-3)
    opt.set_batch(x, y)
    closure = _closure(model, opt, x, y, "mse")
    grads_sq = None
    for k in range(12):
        radius = opt.trust_radius
        before = [p.detach().clone() for p in model.parameters()]
        opt.step(closure)
        rec = opt.last_bound
        grads_sq = sum(float((p.grad ** 2).sum()) for p in model.parameters())
        assert rec.slope == pytest.approx(-grads_sq, rel=1e-10)  # L₁ = ⟨∇L, Δ⟩ with Δ = −g
        vertex = -rec.slope / (2 * rec.curvature_hi)
        assert rec.step_size == pytest.approx(min(vertex, radius), rel=1e-12)
        for p, b in zip(model.parameters(), before):
            torch.testing.assert_close(p.detach(), b - rec.step_size * p.grad, rtol=0, atol=1e-15)
        assert opt.trust_radius == pytest.approx(2 * rec.step_size)
        if k == 0:
            assert rec.step_size == radius  # a tiny first radius is hit and doubled


# --------------------------------------------------------------------------------------- it trains, monotonely
@pytest.mark.parametrize("act, loss, fraction", [("tanh", "mse", 0.65), ("tanh", "cross_entropy", 0.55),
                                                 ("gelu", "cross_entropy", 0.4), ("relu", "mse", 0.9),
                                                 ("silu", "mse", 0.75)])
def test_full_batch_training_decreases_monotonically(act, loss, fraction):
    model, x, y = _problem(act, loss)
    opt = UniversalMM(model.parameters(), model=model, loss=loss)
    losses = _train(model, opt, x, y, loss, 80)
    losses.append(_loss(model, x, y, loss))
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    assert losses[-1] < fraction * losses[0], (losses[0], losses[-1])


def test_rmsprop_direction_trains_monotonically():
    model, x, y = _problem("tanh", "cross_entropy")
    opt = UniversalMM(model.parameters(), model=model, loss="cross_entropy", direction="rmsprop")
    losses = _train(model, opt, x, y, "cross_entropy", 60)
    assert all(b <= a + 1e-12 for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.7 * losses[0]
    assert all(set(opt.state[p]) == {"step", "exp_avg_sq"} for p in model.parameters())


def test_float32_model_trains():
    model, x, y = _problem("tanh", "mse", dtype=torch.float32)
    opt = optfit.create_optimizer(model, "universal-mm")
    losses = _train(model, opt, x, y, "mse", 40)
    assert losses[-1] < 0.8 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


# ------------------------------------------------------------------------------------------------ contract
def test_registry_record_and_factory():
    info = optfit.optimizer_info("universal-mm")
    assert info.cls is UniversalMM and info.family == "learning-rate-free" and info.needs_closure
    assert info.needs_closure == UniversalMM.needs_closure
    model, x, y = _problem("relu", "cross_entropy")
    opt = optfit.create_optimizer(model, "universal_mm", loss="cross_entropy")
    assert opt.model is model and opt.loss == "cross_entropy"
    losses = _train(model, opt, x, y, "cross_entropy", 5)
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("direction", ["gradient", "rmsprop"])
def test_state_dict_resume_is_exact(direction):
    model, x, y = _problem("tanh", "mse")
    opt = UniversalMM(model.parameters(), model=model, direction=direction)
    _train(model, opt, x, y, "mse", 7)
    saved_model = copy.deepcopy(model.state_dict())
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    _train(model, opt, x, y, "mse", 5)

    model2, _, _ = _problem("tanh", "mse", seed=5)
    model2.load_state_dict(saved_model)
    opt2 = UniversalMM(model2.parameters(), model=model2, direction=direction)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    _train(model2, opt2, x, y, "mse", 5)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt.trust_radius == opt2.trust_radius
    for p, q in zip(model.parameters(), model2.parameters()):
        for key, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][key]), key


@pytest.mark.parametrize("kwargs, name", [({"lr": -1.0}, "lr"), ({"loss": "hinge"}, "loss"),
                                          ({"direction": "adam"}, "direction"), ({"trust_radius": 0.0}, "trust_radius"),
                                          ({"trust_radius": float("nan")}, "trust_radius"), ({"beta2": 1.0}, "beta2"),
                                          ({"eps": -1.0}, "eps"), ({"nonfinite": "sometimes"}, "nonfinite"),
                                          ({"maximize": True}, "maximize")])
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs, name):
    model, _, _ = _problem()
    with pytest.raises(ValueError, match=name):
        UniversalMM(model.parameters(), model=model, **kwargs)
    with pytest.raises(ValueError, match=name):
        optfit.create_optimizer(model, "universal-mm", **kwargs)


def test_unsupported_module_raises_naming_it():
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 3))
    with pytest.raises(NotImplementedError, match=r"'1' \(LayerNorm"):
        UniversalMM(model.parameters(), model=model)
    with pytest.raises(NotImplementedError, match="LayerNorm"):
        optfit.create_optimizer(model, "universal-mm")


def test_missing_model_and_foreign_parameters_are_refused():
    model, _, _ = _problem()
    with pytest.raises(TypeError, match="model"):
        UniversalMM(model.parameters())
    stranger = nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="does not belong to the model"):
        UniversalMM([*model.parameters(), stranger], model=model)


def test_api_misuse_raises_clearly():
    model, x, y = _problem()
    opt = UniversalMM(model.parameters(), model=model)
    closure = _closure(model, opt, x, y, "mse")
    with pytest.raises(RuntimeError, match="set_batch"):
        opt.step(closure)
    opt.set_batch(x, y)
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()

    def regularised():
        opt.zero_grad()
        value = F.mse_loss(model(x), y) + 0.1 * sum((p ** 2).sum() for p in model.parameters())
        value.backward()
        return value

    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="differs"):
        opt.step(regularised)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_group_at_lr_zero_does_not_move_and_the_bound_still_holds():
    model, x, y = _problem("tanh", "mse")
    first, rest = list(model[0].parameters()), [p for m in (model[2], model[3]) for p in m.parameters()]
    opt = UniversalMM([{"params": first, "lr": 0.0}, {"params": rest, "lr": 3.0}], model=model)
    frozen = [p.detach().clone() for p in first]
    start = [p.detach().clone() for p in rest]
    opt.set_batch(x, y)
    closure = _closure(model, opt, x, y, "mse")
    for _ in range(5):
        opt.step(closure)
        assert _loss(model, x, y, "mse") <= opt.last_bound.predicted + 1e-12
    assert all(torch.equal(p, b) for p, b in zip(first, frozen))
    assert all(not torch.equal(p, b) for p, b in zip(rest, start))


def test_nonfinite_gradient_raises_or_skips():
    model, x, y = _problem()
    for policy in ("raise", "skip"):
        opt = UniversalMM(model.parameters(), model=model, nonfinite=policy)
        opt.set_batch(x, y)

        def closure():
            opt.zero_grad()
            value = F.mse_loss(model(x), y)
            value.backward()
            model[3].weight.grad[0, 0] = float("nan")
            return value

        before = [p.detach().clone() for p in model.parameters()]
        if policy == "raise":
            with pytest.raises(FloatingPointError, match="parameter 4"):
                opt.step(closure)
        else:
            opt.step(closure)
            assert opt.skipped_steps == 1
        assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
