"""Celo / Celo-Adam beyond the oracle: weight resolution and its errors, the loss hook, non-finite losses,
bit-exact resume of the global scheduler state, the lr multiplier, shapes the oracle does not cover, chunking."""

from __future__ import annotations

import copy
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import optfit
from optfit.learned import Celo, CeloAdam
from optfit.learned._celo_kernel import factored_dims
from optfit.learned.flax_state import FlaxStateError

CELO_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "celo").resolve()
pytestmark = pytest.mark.skipif(not CELO_DIR.is_dir(), reason=f"Celo weights folder {CELO_DIR} not found")
ENV = ("OPTFIT_CELO_DIR", "OPTFIT_CELO_WEIGHTS", "OPTFIT_CELO_ADAM_WEIGHTS")
KINDS = [("celo", Celo), ("celo-adam", CeloAdam)]


@pytest.fixture
def no_env(monkeypatch):
    for key in ENV:
        monkeypatch.delenv(key, raising=False)


def _params(seed=0, shapes=((6, 5), (5,), (2, 3, 4))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.5) for s in shapes]


def _loss(params, targets):
    return sum(((p - t) ** 2).sum() for p, t in zip(params, targets))


def _train(opt, params, steps, seed=1, use_closure=True):
    gen = torch.Generator().manual_seed(seed)
    targets = [torch.randn(p.shape, generator=gen) for p in params]
    for _ in range(steps):
        if use_closure:
            def closure():
                opt.zero_grad()
                loss = _loss(params, targets)
                loss.backward()
                return loss
            opt.step(closure)
        else:
            opt.zero_grad()
            loss = _loss(params, targets)
            loss.backward()
            opt.step(loss=loss.detach())


# --------------------------------------------------------------------------------------------- weights
@pytest.mark.parametrize("name, cls", KINDS)
def test_missing_weights_error_names_the_argument_and_the_variables(no_env, name, cls):
    specific = "OPTFIT_CELO_WEIGHTS" if name == "celo" else "OPTFIT_CELO_ADAM_WEIGHTS"
    with pytest.raises(ValueError, match=rf"weights=PATH.*\${specific}.*\$OPTFIT_CELO_DIR"):
        optfit.create_optimizer(_params(), name)
    assert "weights=PATH" in cls.unavailable_reason()


@pytest.mark.parametrize("name, cls", KINDS)
def test_weights_come_from_argument_file_folder_or_environment(no_env, monkeypatch, name, cls):
    file = CELO_DIR / ("celo_theta.state" if name == "celo" else "celo_adam_theta.state")
    assert cls(_params(), weights=file).weights.path == str(file)
    assert cls(_params(), weights=str(CELO_DIR)).weights.path == str(file)
    monkeypatch.setenv("OPTFIT_CELO_DIR", str(CELO_DIR))
    assert cls.unavailable_reason() is None
    assert optfit.create_optimizer(_params(), name).weights.path == str(file)
    monkeypatch.delenv("OPTFIT_CELO_DIR")
    monkeypatch.setenv("OPTFIT_CELO_WEIGHTS" if name == "celo" else "OPTFIT_CELO_ADAM_WEIGHTS", str(file))
    assert optfit.create_optimizer(_params(), name).weights.path == str(file)


def test_wrong_missing_truncated_or_mistyped_weights_are_clear(tmp_path):
    with pytest.raises(FlaxStateError, match=r"not a valid celo weight file.*missing 21 array.*use the registry "
                                             r"name 'celo-adam'"):
        Celo(_params(), weights=CELO_DIR / "celo_adam_theta.state")
    with pytest.raises(FileNotFoundError, match=r"nowhere\.state.*from weights"):
        Celo(_params(), weights=tmp_path / "nowhere.state")
    with pytest.raises(FileNotFoundError, match="celo_theta.state"):
        Celo(_params(), weights=tmp_path)  # a folder without the file
    cut = tmp_path / "cut.state"
    cut.write_bytes((CELO_DIR / "celo_theta.state").read_bytes()[:-50])
    with pytest.raises(FlaxStateError, match="truncated"):
        Celo(_params(), weights=cut)
    with pytest.raises(TypeError, match="weights must be a path"):
        Celo(_params(), weights=123)


# ------------------------------------------------------------------------------------------ hyperparameters
@pytest.mark.parametrize("name, cls", KINDS)
def test_bad_hyperparameters_raise_naming_them(name, cls):
    for bad in (0, -5, 2.5, True, "100"):
        with pytest.raises(ValueError, match="total_steps"):
            cls(_params(), weights=CELO_DIR, total_steps=bad)
    with pytest.raises(ValueError, match="lr"):
        cls(_params(), weights=CELO_DIR, lr=-1.0)
    with pytest.raises(ValueError, match="impl"):
        cls(_params(), weights=CELO_DIR, impl="foreach")
    with pytest.raises(TypeError, match="cautious"):
        cls(_params(), weights=CELO_DIR, cautious=True)
    info = optfit.optimizer_info(name)
    assert info.family == "learned" and info.needs_closure and not info.supports_cautious
    assert info.defaults["total_steps"] == 10_000 and info.defaults["lr"] == 1.0


# --------------------------------------------------------------------------------------------- the loss
@pytest.mark.parametrize("name, cls", KINDS)
def test_step_needs_exactly_one_source_of_loss(name, cls):
    params = _params()
    opt = cls(params, weights=CELO_DIR)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match=r"needs the training loss.*step\(loss=l\)"):
        opt.step()
    with pytest.raises(TypeError, match="not both"):
        opt.step(lambda: 1.0, loss=1.0)
    with pytest.raises(ValueError, match="scalar"):
        opt.step(loss=torch.ones(3))
    with pytest.raises(TypeError, match="loss must be a number"):
        opt.step(loss="low")
    with pytest.raises(TypeError, match="closure .* returned None"):
        opt.step(lambda: None)
    assert not opt.state and int(opt.scheduler_state()["iteration"]) == 0


@pytest.mark.parametrize("name, cls", KINDS)
def test_loss_keyword_equals_closure_bit_for_bit(name, cls):
    pa, pb = _params(), _params()
    oa, ob = cls(pa, weights=CELO_DIR, total_steps=20), cls(pb, weights=CELO_DIR, total_steps=20)
    _train(oa, pa, 6, use_closure=True)
    _train(ob, pb, 6, use_closure=False)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))
    assert oa.last_lr_mult == ob.last_lr_mult


@pytest.mark.parametrize("name, cls", KINDS)
def test_nonfinite_loss_follows_the_policy(name, cls):
    params = _params()
    opt = cls(params, weights=CELO_DIR, total_steps=20)
    _train(opt, params, 2)
    before = [p.detach().clone() for p in params]
    sd = copy.deepcopy(opt.state_dict())
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        opt.step(loss=float("nan"))
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(v, sd["optfit"]["celo"][k]) for k, v in opt.scheduler_state().items())
    opt.param_groups[0]["nonfinite"] = "skip"
    assert opt.step(loss=float("inf")) == float("inf") and opt.skipped_steps == 1
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    opt.param_groups[0]["nonfinite"] = "ignore"
    opt.step(loss=float("nan"))  # passed on like the original would: the loss buffer becomes NaN
    assert torch.isnan(opt.scheduler_state()["loss_means"]).all()


# ------------------------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("name, cls", KINDS)
def test_resume_is_bit_exact_including_the_scheduler_state(name, cls):
    pa = _params()
    oa = cls(pa, weights=CELO_DIR, total_steps=40)
    _train(oa, pa, 5)
    buf = io.BytesIO()
    torch.save(oa.state_dict(), buf)
    saved = [p.detach().clone() for p in pa]
    _train(oa, pa, 5, seed=2)

    pb = [torch.nn.Parameter(s.clone()) for s in saved]
    ob = cls(pb, weights=CELO_DIR, total_steps=999)  # the checkpoint's horizon wins
    buf.seek(0)
    ob.load_state_dict(torch.load(buf, weights_only=True))
    assert ob.total_steps == 40
    _train(ob, pb, 5, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(pa, pb))
    sa, sb = oa.scheduler_state(), ob.scheduler_state()
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and int(sa["iteration"]) == 10
    assert oa.last_lr_mult == ob.last_lr_mult


@pytest.mark.parametrize("name, cls", KINDS)
def test_copies_and_pickles_keep_the_scheduler(name, cls):
    pa = _params()
    oa = cls(pa, weights=CELO_DIR, total_steps=30)
    _train(oa, pa, 3)
    for clone in (copy.deepcopy(oa), pickle.loads(pickle.dumps(oa))):
        assert clone.total_steps == 30 and torch.equal(clone.scheduler_state()["lstm_hidden"],
                                                       oa.scheduler_state()["lstm_hidden"])


def test_checkpoint_from_other_weights_or_without_scheduler_is_refused():
    params = _params()
    opt = Celo(params, weights=CELO_DIR)
    _train(opt, params, 1)
    sd = opt.state_dict()
    sd["optfit"]["celo"]["weights_sha256"] = "0" * 64
    with pytest.raises(ValueError, match="other weights"):
        Celo(_params(), weights=CELO_DIR).load_state_dict(sd)
    del sd["optfit"]["celo"]
    with pytest.raises(ValueError, match="no 'optfit'/'celo' scheduler state"):
        Celo(_params(), weights=CELO_DIR).load_state_dict(sd)


# ------------------------------------------------------------------------------------------------ lr, groups
@pytest.mark.parametrize("name, cls", KINDS)
def test_lr_multiplies_the_learned_step(name, cls):
    steps = []
    for lr in (1.0, 2.5):
        params = [torch.nn.Parameter(p.detach().double()) for p in _params()]  # Δθ exact: float32 maths
        opt = cls(params, weights=CELO_DIR, lr=lr, total_steps=20)
        before = [p.detach().clone() for p in params]
        _train(opt, params, 1)
        steps.append([p.detach() - b for p, b in zip(params, before)])
    for one, scaled in zip(*steps):
        assert float(one.abs().min()) > 0
        torch.testing.assert_close(scaled, 2.5 * one, rtol=1e-6, atol=0)


def test_a_group_lr_leaves_the_schedule_global():
    params = _params()
    opt = Celo([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], weights=CELO_DIR, total_steps=20)
    ref = _params()
    ref_opt = Celo(ref, weights=CELO_DIR, total_steps=20)
    _train(opt, params, 3)
    _train(ref_opt, ref, 3)
    assert opt.last_lr_mult == ref_opt.last_lr_mult  # the scheduler sees no per-group input
    assert torch.equal(params[0], ref[0]) and not torch.equal(params[1], ref[1])


# -------------------------------------------------------------------------------------- shapes and layout
@pytest.mark.parametrize("shape", [(5, 5), (3, 1), (4, 2, 3), (2, 3, 3, 2), (1,), ()])
def test_factored_axes_follow_numpy_argsort(shape):
    if len(shape) >= 2:
        order = np.argsort(shape)
        assert factored_dims(shape) == (int(order[-2]), int(order[-1]))


@pytest.mark.parametrize("shape", [(5, 5), (4, 2, 3), (2, 3, 3, 2)])
def test_factored_accumulators_of_square_and_higher_rank_tensors(shape):
    """One step from zero: v_row = (1 − β)·mean(g² + 1e-30) over the largest axis d0, v_col over the other
    factored axis d1 (the original's rule, applied to shapes the oracle does not cover)."""
    p = torch.nn.Parameter(torch.randn(shape))
    start = p.detach().clone()
    opt = Celo([p], weights=CELO_DIR, total_steps=10)
    g = torch.randn(shape)
    p.grad = g.clone()
    opt.step(loss=1.0)
    d1, d0 = factored_dims(shape)
    beta = np.array([0.9, 0.99, 0.999], np.float32)
    gsq = g.double().numpy() ** 2 + 1e-30
    for key, axis in (("factored_row", d0), ("factored_col", d1)):
        want = (1 - beta).reshape(3, *[1] * (len(shape) - 1)) * gsq.mean(axis)[None]
        np.testing.assert_allclose(opt.state[p][key].numpy(), want, rtol=1e-5)
    assert torch.isfinite(p).all() and not torch.equal(p.detach(), start)


def test_scalars_and_zero_tensors_step_finitely():
    params = [torch.nn.Parameter(torch.tensor(0.7)), torch.nn.Parameter(torch.zeros(4, 3)),
              torch.nn.Parameter(torch.zeros(3))]
    opt = Celo(params, weights=CELO_DIR, total_steps=10)
    _train(opt, params, 3)
    assert all(torch.isfinite(p).all() for p in params)
    assert 0 < float(params[1].detach().abs().max()) < 1e-4  # the step is relative to RMS(θ), floored at √1e-9
    assert opt.state[params[0]]["factored_diag"].shape == (3,)


def test_chunking_does_not_change_the_result():
    pa, pb = _params(shapes=((40, 30), (30,), (7, 3, 5), (2,))), _params(shapes=((40, 30), (30,), (7, 3, 5), (2,)))
    oa, ob = Celo(pa, weights=CELO_DIR, total_steps=20), Celo(pb, weights=CELO_DIR, total_steps=20)
    ob.chunk_size = 1  # one tensor per chunk
    _train(oa, pa, 4)
    _train(ob, pb, 4)
    for a, b in zip(pa, pb):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name, cls", KINDS)
def test_float64_and_bf16_parameters_use_float32_maths(name, cls):
    p32 = _params()
    p64 = [torch.nn.Parameter(p.detach().double()) for p in p32]
    o32, o64 = cls(p32, weights=CELO_DIR, total_steps=20), cls(p64, weights=CELO_DIR, total_steps=20)
    _train(o32, p32, 3)
    _train(o64, p64, 3)
    for a, b in zip(p32, p64):
        assert b.dtype == torch.float64
        torch.testing.assert_close(a.double(), b.detach(), rtol=0, atol=1e-6)
    pb = [torch.nn.Parameter(p.detach().bfloat16()) for p in _params()]
    ob = cls(pb, weights=CELO_DIR, total_steps=20, state_dtype="float32")
    _train(ob, pb, 2)
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in pb)
    assert all(v.dtype == torch.float32 for st in ob.state.values() for k, v in st.items() if k != "step")


def test_weights_files_are_not_in_the_package():
    assert not list(Path(optfit.__file__).resolve().parent.rglob("*.state"))


@pytest.mark.compiled
@pytest.mark.parametrize("name, cls", KINDS)
def test_compiled_step_is_the_eager_step(name, cls):
    """``torch.compile(opt.step)`` must not change the maths (traced, the step drifted from eager by up to 0.24)."""
    runs = []
    for compile_it in (False, True):
        params = _params()
        opt = cls(params, total_steps=100, weights=CELO_DIR)
        step = torch.compile(opt.step) if compile_it else opt.step
        gen = torch.Generator().manual_seed(1)
        targets = [torch.randn(p.shape, generator=gen) for p in params]
        for _ in range(3):
            opt.zero_grad()
            loss = _loss(params, targets)
            loss.backward()
            step(loss=loss.detach())
        runs.append(params)
    for p, q in zip(*runs):
        assert torch.equal(p, q)
