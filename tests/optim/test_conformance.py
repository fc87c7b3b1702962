"""The torch.optim contract, checked for every registry name (the list comes from the registry itself)."""

from __future__ import annotations

import copy
import io

import pytest
import torch

import optfit

from .problems import Quadratic, TinyNet, backward, build, closure_for, run

# names whose step needs the batch itself (Universal MM) have their own contract tests
NAMES = [n for n in optfit.list_optimizers() if not optfit.optimizer_info(n).needs_batch]


def _state_snapshot(opt):
    return copy.deepcopy(opt.state_dict())


def _assert_state_equal(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        assert sa.keys() == sb.keys()
        for key in sa:
            va, vb = sa[key], sb[key]
            if isinstance(va, torch.Tensor):
                assert torch.equal(va, vb), f"state[{k}][{key}] differs"
            else:
                assert va == vb


# ------------------------------------------------------------------------------------------ 1. it optimizes
@pytest.mark.parametrize("name", NAMES)
def test_converges_on_quadratic_with_known_optimum(name):
    model = Quadratic()
    opt = build(name, model, weight_decay=0.0) if "weight_decay" in optfit.optimizer_info(name).defaults \
        else build(name, model)
    d0 = model.distance()
    losses = run(model, opt, 300)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert model.distance() < 0.25 * d0, f"{name}: distance {d0:.3f} -> {model.distance():.3f}"


@pytest.mark.parametrize("name", NAMES)
def test_trains_small_model(name):
    model = TinyNet()
    opt = build(name, model)
    losses = run(model, opt, 60)
    assert losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------ 2. state_dict
@pytest.mark.parametrize("name", NAMES)
def test_state_dict_resume_is_bit_exact(name):
    model = TinyNet()
    opt = build(name, model)
    run(model, opt, 10)
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), _state_snapshot(opt)
    buf = io.BytesIO()
    torch.save(saved_opt, buf)
    run(model, opt, 5)

    model2 = TinyNet()
    model2.load_state_dict(saved_model)
    opt2 = build(name, model2)
    buf.seek(0)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    run(model2, opt2, 5)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    _assert_state_equal(opt.state_dict(), opt2.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_loads_onto_float64_params(name):
    model = TinyNet()
    opt = build(name, model)
    run(model, opt, 3)
    model64 = TinyNet().double()
    model64.load_state_dict(model.state_dict())
    opt64 = build(name, model64)
    opt64.load_state_dict(opt.state_dict())
    for st in opt64.state.values():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and key != "step":
                assert v.dtype == torch.float64, key
    run(model64, opt64, 3)
    assert all(p.dtype == torch.float64 and torch.isfinite(p).all() for p in model64.parameters())


# ----------------------------------------------------------------------- 3. closure, groups, None, scheduler
@pytest.mark.parametrize("name", NAMES)
def test_step_returns_closure_loss(name):
    model = TinyNet()
    opt = build(name, model)
    closure = closure_for(model, opt)
    expected = float(model())
    assert float(opt.step(closure).detach()) == pytest.approx(expected)


@pytest.mark.parametrize("name", NAMES)
def test_param_groups_take_their_own_hyperparameters(name):
    model = TinyNet()
    info = optfit.optimizer_info(name)
    kwargs = {**info.test_hparams}
    first, second = list(model.net[0].parameters()), list(model.net[3].parameters())
    opt = optfit.create_optimizer([{"params": first}, {"params": second, "lr": 0.0}], name, **kwargs)
    before = [p.detach().clone() for p in second]
    before_first = [p.detach().clone() for p in first]
    run(model, opt, 3)
    for p, b in zip(second, before):
        assert torch.equal(p, b), "a group with lr=0 must not move"
    assert any(not torch.equal(p, b) for p, b in zip(first, before_first))


@pytest.mark.parametrize("name", NAMES)
def test_params_without_grad_are_skipped(name):
    model = TinyNet()
    frozen = model.net[0].weight
    opt = build(name, model)
    before = frozen.detach().clone()

    def closure():
        opt.zero_grad()
        loss = model()
        backward(loss, opt)
        frozen.grad = None
        return loss

    for _ in range(3):
        opt.step(closure)
    assert torch.equal(frozen, before)
    assert frozen not in opt.state or not opt.state[frozen]


@pytest.mark.parametrize("name", NAMES)
def test_lr_scheduler_changes_the_step(name):
    model = TinyNet()
    opt = build(name, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else 0.0)
    closure = closure_for(model, opt)
    opt.step(closure)
    sched.step()
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    frozen = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.step(closure)
    for p, b in zip(model.parameters(), frozen):
        assert torch.equal(p, b), "with lr scheduled to 0 nothing may move"


# --------------------------------------------------------------------------------------- 4. bad arguments
def _bad_values(info):
    d = info.defaults
    yield "lr", -1.0
    if "betas" in d and d["betas"] is not None:
        bad = tuple(1.5 if i == 0 else b for i, b in enumerate(d["betas"]))
        yield "betas", bad
    for key in ("eps", "weight_decay", "momentum"):
        if key in d and isinstance(d[key], (int, float)) and not isinstance(d[key], bool) and key not in info.preset:
            yield key, -1.0
    yield "nonfinite", "sometimes"
    yield "impl", "cuda-graphs"


@pytest.mark.parametrize("name", NAMES)
def test_invalid_hyperparameters_raise_value_error_naming_them(name):
    info = optfit.optimizer_info(name)
    for key, value in _bad_values(info):
        with pytest.raises(ValueError, match=key):
            optfit.create_optimizer(TinyNet(), name, **{key: value})


@pytest.mark.parametrize("name", NAMES)
def test_impl_accepts_exactly_the_offered_values(name):
    model = TinyNet()
    opt = build(name, model)
    offered = set(opt._offered_impls())
    assert {"auto", "reference"} <= offered
    for impl in ("auto", "reference", "foreach", "compiled", "flat"):
        if impl in offered:
            optfit.create_optimizer(TinyNet(), name, impl=impl)
        else:
            with pytest.raises(ValueError, match="impl"):
                optfit.create_optimizer(TinyNet(), name, impl=impl)


@pytest.mark.parametrize("name", NAMES)
def test_unknown_hyperparameter_is_a_type_error_listing_accepted(name):
    with pytest.raises(TypeError, match="lr"):
        optfit.create_optimizer(TinyNet(), name, learning_rate=0.1)


@pytest.mark.parametrize("name", NAMES)
def test_defaults_work(name):
    model = TinyNet()
    opt = optfit.create_optimizer(model, name)
    run(model, opt, 2)


# --------------------------------------------------------------------------------------- 5. non-finite
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_raise_names_parameter_and_modifies_nothing(name, bad):
    model = TinyNet()
    opt = build(name, model)
    run(model, opt, 2)
    params = copy.deepcopy(model.state_dict())
    state = _state_snapshot(opt)

    def closure():
        opt.zero_grad()
        loss = model()
        backward(loss, opt)
        model.net[3].weight.grad[0, 0] = bad
        return loss

    flat = [q for g in opt.param_groups for q in g["params"]]
    index = next(i for i, q in enumerate(flat) if q is model.net[3].weight)
    with pytest.raises(FloatingPointError, match=rf"parameter {index} \('net\.3\.weight'\)"):
        opt.step(closure)
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    _assert_state_equal(opt.state_dict(), state)


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_skip_skips_whole_step_and_counts(name):
    model = TinyNet()
    opt = build(name, model, nonfinite="skip")
    run(model, opt, 2)
    params = copy.deepcopy(model.state_dict())

    def closure():
        opt.zero_grad()
        loss = model()
        backward(loss, opt)
        model.net[0].bias.grad[1] = float("nan")
        return loss

    opt.step(closure)
    assert opt.skipped_steps == 1
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    assert opt.state_dict()["optfit"]["skipped_steps"] == 1
    run(model, opt, 2)  # recovers


@pytest.mark.parametrize("name", NAMES)
def test_nonfinite_ignore_behaves_like_torch(name):
    model = TinyNet()
    opt = build(name, model, nonfinite="ignore")

    def closure():
        opt.zero_grad()
        loss = model()
        backward(loss, opt)
        model.net[0].bias.grad[1] = float("nan")
        return loss

    opt.step(closure)  # no exception
    assert opt.skipped_steps == 0


# ------------------------------------------------------------------------------------- 6. sparse, complex
@pytest.mark.parametrize("name", NAMES)
def test_sparse_gradients_are_rejected_clearly(name):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = optfit.create_optimizer(emb.parameters(), name, **optfit.optimizer_info(name).test_hparams)

    def closure():
        opt.zero_grad()
        loss = emb(torch.tensor([1, 2])).pow(2).sum()
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="sparse"):
        opt.step(closure)


@pytest.mark.parametrize("name", NAMES)
def test_complex_parameters_supported_or_rejected(name):
    """Supported means: a complex parameter moves exactly like its real view would."""
    info = optfit.optimizer_info(name)
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 4, dtype=torch.complex64, generator=gen).requires_grad_()
    target = torch.randn(3, 4, dtype=torch.complex64, generator=gen)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    opt_z = optfit.create_optimizer([z], name, **info.test_hparams)
    opt_r = optfit.create_optimizer([r], name, **info.test_hparams)

    def closure_z():
        opt_z.zero_grad()
        loss = (z - target).abs().pow(2).sum()
        loss.backward()
        return loss

    def closure_r():
        opt_r.zero_grad()
        loss = (r - torch.view_as_real(target)).pow(2).sum()
        loss.backward()
        return loss

    if not info.supports_complex:
        with pytest.raises(RuntimeError, match="complex"):
            opt_z.step(closure_z)
        return
    for _ in range(3):
        opt_z.step(closure_z)
        opt_r.step(closure_r)
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ 7. bf16
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("state_dtype", [None, "float32"])
def test_bf16_parameters(name, state_dtype):
    model = TinyNet().to(torch.bfloat16)
    opt = build(name, model, state_dtype=state_dtype)
    losses = run(model, opt, 20)
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert torch.isfinite(torch.tensor(losses)).all()
    want = torch.float32 if state_dtype == "float32" else torch.bfloat16
    for st in opt.state.values():
        for key, v in st.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim > 0 and not key.startswith(("grokfast", "gap_")):
                assert v.dtype == want, key
    # the fp32-state policy survives a save/load round trip
    if state_dtype == "float32":
        opt2 = build(name, model, state_dtype=state_dtype)
        opt2.load_state_dict(opt.state_dict())
        for p in model.parameters():
            for key, v in opt2.state[p].items():
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim > 0 and not key.startswith("gap_"):
                    assert v.dtype == torch.float32


# ------------------------------------------------------------------------------------- metadata is honest
@pytest.mark.parametrize("name", NAMES)
def test_state_tensor_count_matches_record(name):
    info = optfit.optimizer_info(name)
    W = torch.nn.Parameter(torch.randn(6, 7))
    opt = optfit.create_optimizer([W], name)  # the record counts state at the defaults

    def closure():
        opt.zero_grad()
        loss = (W ** 2).sum()
        backward(loss, opt)
        return loss

    opt.step(closure)
    # parameter-sized state, counted in units of W (a gap optimizer stacks its K buffers as (K, *W.shape))
    full = {k: v.numel() // W.numel() for k, v in opt.state[W].items()
            if isinstance(v, torch.Tensor) and v.ndim >= W.ndim and v.shape[v.ndim - W.ndim:] == W.shape}
    assert sum(full.values()) == info.state_tensors, full
    assert info.needs_closure == getattr(info.cls, "needs_closure", False)
