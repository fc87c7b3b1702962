"""torch's fused kernels as the default path of adam/adamw/amsgrad/sgd/adagrad (optfit.optim._fused): parity
with the reference kernel (parameters and state, every step, float32 and float64, every option the kernels
express), checkpoints across impls, the non-finite policy on the fused path, the exact fast finiteness check,
and which groups "auto" sends to the fused kernels (a spy on the torch op)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

import optfit
from optfit.optim import _fused

OPS = ("_fused_adam_", "_fused_adamw_", "_fused_sgd_", "_fused_adagrad_")
SHAPES = [(6, 4), (5,), (3, 2, 2), (1,)]
# a few ulps of O(1) values: the kernels order a few multiplications differently from the reference
TOL = {torch.float32: dict(rtol=1e-6, atol=1e-6), torch.float64: dict(rtol=1e-13, atol=1e-14)}

# (registry name, hyperparameters): every option combination the fused kernels express
ADAM_CASES = [(name, dict(weight_decay=wd, decay_mode=mode, amsgrad=ams, maximize=mx))
              for name in ("adam", "adamw")
              for wd, mode in ((0.0, "coupled"), (0.1, "coupled"), (0.1, "decoupled"), (0.0, "independent"))
              for ams, mx in ((False, False), (True, False), (False, True), (True, True))]
ADAM_CASES += [("amsgrad", dict(betas=(0.5, 0.9), eps=1e-6)), ("adamw", dict(betas=(0.0, 0.99)))]
SGD_CASES = [("sgd", dict(momentum=mom, nesterov=nest, dampening=damp, weight_decay=wd, maximize=mx))
             for mom, nest, damp in ((0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, False, 0.3))
             for wd, mx in ((0.0, False), (0.01, False), (0.01, True))]
ADAGRAD_CASES = [("adagrad", dict(lr_decay=ld, weight_decay=wd, initial_accumulator_value=iav, eps=eps, maximize=mx))
                 for ld, wd, iav, eps, mx in ((0.0, 0.0, 0.0, 1e-10, False), (0.05, 0.1, 0.0, 1e-10, False),
                                              (0.0, 0.0, 0.5, 1e-6, True), (0.01, 0.1, 0.1, 1e-8, True))]
ADAGRAD_CASES += [("adadagrad", dict(b0=0.3, weight_decay=0.1))]
CASES = ADAM_CASES + SGD_CASES + ADAGRAD_CASES
LR = {"adam": 0.01, "adamw": 0.01, "amsgrad": 0.01, "sgd": 0.05, "adagrad": 0.1, "adadagrad": 0.1}


class Spy:
    """Counts the calls of torch's fused ops (they are looked up on ``torch`` per call)."""

    def __init__(self, monkeypatch):
        self.calls = {op: 0 for op in OPS}
        for op in OPS:
            real = getattr(torch, op)

            def wrapper(*args, _real=real, _op=op, **kwargs):
                self.calls[_op] += 1
                return _real(*args, **kwargs)

            monkeypatch.setattr(torch, op, wrapper)

    @property
    def total(self):
        return sum(self.calls.values())


@pytest.fixture
def spy(monkeypatch):
    return Spy(monkeypatch)


def _params(dtype, seed=1, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).to(dtype).requires_grad_() for s in shapes]


def _stream(dtype, steps, seed=0, shapes=SHAPES):
    gen = torch.Generator().manual_seed(seed)
    scale = torch.logspace(-2, 0.5, steps, dtype=torch.float64)
    return [[(torch.randn(s, generator=gen, dtype=torch.float64) * scale[t]).to(dtype) for s in shapes]
            for t in range(steps)]


def _groups(params, name, lr_tensor=False):
    """Two param groups with different learning rates (the second a CPU 0-d tensor when ``lr_tensor``)."""
    lr = LR[name]
    second = torch.tensor(lr / 3, dtype=torch.float64) if lr_tensor else lr / 3
    return [{"params": params[:2]}, {"params": params[2:], "lr": second}]


def _build(name, params, impl, hp, lr_tensor=False):
    return optfit.create_optimizer(_groups(params, name, lr_tensor), name, lr=LR[name], impl=impl, **hp)


def _assert_same_run(a, b, tol, where):
    (pa, oa), (pb, ob) = a, b
    for i, (x, y) in enumerate(zip(pa, pb)):
        torch.testing.assert_close(x.detach(), y.detach(), **tol, msg=lambda m: f"{where}, param {i}: {m}")
    for x, y in zip(pa, pb):
        sa, sb = oa.state[x], ob.state[y]
        assert sa.keys() == sb.keys(), where
        for key in sa:
            if key == "step":
                assert torch.equal(sa[key], sb[key]), where
            else:
                torch.testing.assert_close(sa[key], sb[key], **tol, msg=lambda m: f"{where}, state {key}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name,hp", CASES, ids=[n + "".join(f"-{k}={v}" for k, v in hp.items()) for n, hp in CASES])
def test_fused_matches_reference_every_step(name, hp, dtype, spy):
    """25 steps, two groups with different lr, lr scheduled (×0.5 every 5 steps), one parameter whose gradient
    appears only from step 4 (its own step counter, first-step momentum); parameters and state every step."""
    runs = {}
    stream = _stream(dtype, 25)
    for impl in ("reference", "fused"):
        params = _params(dtype)
        opt = _build(name, params, impl, hp)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        runs[impl] = (params, opt, sched)
    for t, grads in enumerate(stream):
        before = spy.total
        for impl, (params, opt, sched) in runs.items():
            for i, (p, g) in enumerate(zip(params, grads)):
                p.grad = None if (i == 3 and t < 3) else g.clone()
            opt.step()
            sched.step()
        assert spy.total > before, "the fused run must call torch's fused kernel"
        _assert_same_run(runs["reference"][:2], runs["fused"][:2], TOL[dtype], f"step {t + 1}")


@pytest.mark.parametrize("name,hp", [("adamw", {}), ("adam", {"amsgrad": True, "weight_decay": 0.1}),
                                     ("sgd", {"momentum": 0.9, "nesterov": True}), ("adagrad", {"lr_decay": 0.01})])
def test_tensor_lr_matches_reference(name, hp, spy):
    runs = {}
    for impl in ("reference", "fused"):
        params = _params(torch.float32)
        runs[impl] = (params, _build(name, params, impl, hp, lr_tensor=True))
    for t, grads in enumerate(_stream(torch.float32, 20)):
        for params, opt in runs.values():
            for p, g in zip(params, grads):
                p.grad = g.clone()
            if t == 10:
                opt.param_groups[1]["lr"] = torch.tensor(LR[name] / 7)  # a new tensor lr mid-run
            opt.step()
    assert spy.total >= 20
    _assert_same_run(runs["reference"], runs["fused"], TOL[torch.float32], "end")


# ------------------------------------------------------------------------------------------ checkpoints
@pytest.mark.parametrize("name,hp", [("adamw", {"amsgrad": True}), ("sgd", {"momentum": 0.9}),
                                     ("adagrad", {"lr_decay": 0.01})])
def test_resume_is_bitwise_and_checkpoints_cross_impls(name, hp):
    stream = _stream(torch.float32, 16)

    def feed(opt, params, grads):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()

    # a fused run resumed from its checkpoint continues bit for bit
    params = _params(torch.float32)
    opt = _build(name, params, "auto", hp)
    for grads in stream[:8]:
        feed(opt, params, grads)
    saved_params, saved = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
    for grads in stream[8:]:
        feed(opt, params, grads)
    for impl in ("auto", "fused", "reference", "foreach"):
        params2 = [p.clone().requires_grad_() for p in saved_params]
        opt2 = _build(name, params2, impl, hp)
        opt2.load_state_dict(copy.deepcopy(saved))  # load_state_dict may alias the tensors it is given
        sd2 = opt2.state_dict()
        for k, st in saved["state"].items():  # the checkpoint loads unchanged into every impl
            assert st.keys() == sd2["state"][k].keys()
            for key, v in st.items():
                assert torch.equal(v, sd2["state"][k][key]) and v.dtype == sd2["state"][k][key].dtype
        for grads in stream[8:]:
            feed(opt2, params2, grads)
        if impl in ("auto", "fused"):
            for p, q in zip(params, params2):
                assert torch.equal(p, q), impl
        else:  # another kernel: the same maths up to float rounding
            _assert_same_run((params, opt), (params2, opt2), TOL[torch.float32], impl)
    # and the fused path keeps exactly the reference path's state layout
    ref_params = _params(torch.float32)
    ref = _build(name, ref_params, "reference", hp)
    for grads in stream[:8]:
        feed(ref, ref_params, grads)
    sd_ref = ref.state_dict()
    for k, st in saved["state"].items():
        assert {key: (v.dtype, v.shape) for key, v in st.items()} == \
               {key: (v.dtype, v.shape) for key, v in sd_ref["state"][k].items()}
    assert saved["param_groups"] == [{**g, "impl": "auto"} for g in sd_ref["param_groups"]]


def test_checkpoint_with_strided_state_is_stepped_correctly():
    """A checkpoint may bring state of another layout (torch keeps strides on load): the kernel reads memory
    in order, so such state must not reach it."""
    stream = _stream(torch.float32, 6)
    runs = []
    for impl in ("reference", "auto"):
        params = _params(torch.float32)
        opt = _build("adamw", params, impl, {})
        for p, g in zip(params, stream[0]):
            p.grad = g.clone()
        opt.step()
        sd = copy.deepcopy(opt.state_dict())
        for st in sd["state"].values():
            for key in ("exp_avg", "exp_avg_sq"):
                if st[key].dim() == 2:  # same values, column-major
                    st[key] = st[key].t().contiguous().t()
        opt.load_state_dict(sd)
        assert any(not t.is_contiguous() for st in opt.state.values() for t in st.values())
        for grads in stream[1:]:
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        runs.append((params, opt))
    _assert_same_run(*runs, TOL[torch.float32], "strided state")


def test_step_counters_are_views_of_one_buffer_in_torch_format():
    params = _params(torch.float32)
    opt = optfit.optim.AdamW(params, lr=0.01)
    for t in range(3):
        for i, p in enumerate(params):
            p.grad = None if (i == 0 and t == 0) else torch.ones_like(p)
        opt.step()
    steps = [opt.state[p]["step"] for p in params]
    assert [s.item() for s in steps] == [2.0, 3.0, 3.0, 3.0]
    assert all(s.dtype == torch.float32 and s.dim() == 0 and s.device.type == "cpu" for s in steps)
    assert len({s.untyped_storage().data_ptr() for s in steps}) == 1  # one buffer, advanced by one add
    opt.state[params[1]]["step"].fill_(99.0)  # a write to an entry is a write to the buffer
    sd = copy.deepcopy(opt.state_dict())
    clone = copy.deepcopy(opt)
    for o in (opt, clone):
        for p in o.param_groups[0]["params"]:
            p.grad = torch.ones_like(p)
        o.step()
    assert [opt.state[p]["step"].item() for p in params] == [3.0, 100.0, 4.0, 4.0]
    assert [clone.state[p]["step"].item() for p in clone.param_groups[0]["params"]] == [3.0, 100.0, 4.0, 4.0]
    opt.load_state_dict(sd)  # new tensors: the buffer is rebuilt from them
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert [opt.state[p]["step"].item() for p in params] == [3.0, 100.0, 4.0, 4.0]
    group = opt.param_groups[0]
    for _ in range(20):  # wrappers may step a copy of the group dict: no entry per copy
        opt._step_group({**group}, opt._gather()[0][1], None)
    assert len(opt._fused_step_buffers) <= 2 * len(opt.param_groups)


# ------------------------------------------------------------------------------------------- non-finite
@pytest.mark.parametrize("name", ["adamw", "amsgrad", "sgd", "adagrad"])
@pytest.mark.parametrize("where", [0, 3])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_raise_and_skip_on_the_fused_path(name, where, bad, spy):
    hp = {"momentum": 0.9} if name == "sgd" else {}
    for policy in ("raise", "skip"):
        params = _params(torch.float32)
        opt = _build(name, params, "auto", {**hp, "nonfinite": policy})
        for grads in _stream(torch.float32, 3):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
        assert spy.total > 0
        calls = spy.total
        snapshot = [p.detach().clone() for p in params], copy.deepcopy(opt.state_dict())
        grads = _stream(torch.float32, 1, seed=5)[0]
        grads[where].view(-1)[-1] = bad
        for p, g in zip(params, grads):
            p.grad = g.clone()
        if policy == "raise":
            with pytest.raises(FloatingPointError, match=f"parameter {where}"):
                opt.step()
        else:
            opt.step()
            assert opt.skipped_steps == 1
        assert spy.total == calls, "the fused kernel must not run on a non-finite step"
        for p, q in zip(params, snapshot[0]):
            assert torch.equal(p, q)
        for k, st in snapshot[1]["state"].items():
            for key, v in st.items():
                assert torch.equal(v, opt.state_dict()["state"][k][key]), (k, key)
        for p, g in zip(params, grads):  # p.grad untouched
            assert torch.equal(p.grad.nan_to_num(), g.nan_to_num()) and torch.equal(p.grad.isnan(), g.isnan())


def _grad_sets():
    """(label, factory of a fresh gradient list): small ones take the foreach check, big ones the sums."""
    big = _fused.SMALL_GRAD + 5
    yield "small", lambda: [torch.randn(7), torch.randn(3, 4)]
    yield "big", lambda: [torch.randn(big), torch.randn(2)]
    yield "float64", lambda: [torch.randn(5, dtype=torch.float64), torch.randn(big, dtype=torch.float64),
                              torch.randn(3)]
    yield "float16", lambda: [torch.randn(big).half(), torch.randn(9).half()]
    yield "bfloat16", lambda: [torch.randn(big).bfloat16(), torch.randn(9).bfloat16()]
    yield "non-contiguous", lambda: [torch.randn(6, 8).t(), torch.randn(4)[::2], torch.randn(3)]
    yield "empty", lambda: [torch.zeros(0), torch.randn(3)]


@pytest.mark.parametrize("label,make", list(_grad_sets()), ids=[lbl for lbl, _ in _grad_sets()])
def test_all_finite_finds_every_nan_and_inf_and_leaves_gradients_unchanged(label, make):
    assert _fused.all_finite(make())
    for i, bad in itertools.product(range(len(make())), (float("nan"), float("inf"), -float("inf"))):
        gs = make()
        if not gs[i].numel():
            continue
        gs[i][tuple(d - 1 for d in gs[i].shape)] = bad  # the last element, through the view
        copies = [g.clone() for g in gs]
        assert not _fused.all_finite(gs), (label, i, bad)
        for g, c in zip(gs, copies):  # the foreach check writes the values back: unchanged, NaN included
            assert torch.equal(g.isnan(), c.isnan()) and torch.equal(g.nan_to_num(), c.nan_to_num())


def test_all_finite_overflow_is_a_false_alarm_that_the_exact_check_clears():
    grads = [torch.full((_fused.SMALL_GRAD * 2,), 3e38), torch.full((5,), 65504.0, dtype=torch.float16)]
    assert optfit.optim._features.first_nonfinite(grads) is None
    p = torch.zeros(_fused.SMALL_GRAD * 2, requires_grad=True)
    opt = optfit.optim.SGD([p], lr=1e-40)
    p.grad = grads[0].clone()
    opt.step()  # the sum overflows; the exact check clears it and the step runs
    assert opt.skipped_steps == 0 and not torch.equal(p, torch.zeros_like(p))


def test_all_finite_writes_only_to_dense_gradients_without_a_graph(monkeypatch):
    """The foreach check writes each value back (unchanged); gradients carrying an autograd graph
    (``create_graph=True``) and non-dense ones are summed instead."""
    seen = []
    real = torch._amp_foreach_non_finite_check_and_unscale_
    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_",
                        lambda gs, *a: (seen.extend(gs), real(gs, *a))[1])
    with_graph = torch.randn(5, requires_grad=True) * 2
    strided, plain = torch.randn(8)[::2], torch.randn(3)
    assert _fused.all_finite([with_graph, strided, plain])
    assert len(seen) == 1 and seen[0] is plain


# ------------------------------------------------------------------------------------------- dispatch
def _one_step(opt, params):
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()


@pytest.mark.parametrize("name,hp,op", [
    ("adamw", {}, "_fused_adamw_"), ("adam", {}, "_fused_adam_"), ("adam", {"weight_decay": 0.1}, "_fused_adam_"),
    ("amsgrad", {}, "_fused_adam_"), ("adamw", {"weight_decay": 0.0, "decay_mode": "independent"}, "_fused_adam_"),
    ("adam", {"decay_mode": "decoupled", "weight_decay": 0.1}, "_fused_adamw_"),
    ("sgd", {}, "_fused_sgd_"), ("sgd", {"momentum": 0.9, "dampening": 0.1}, "_fused_sgd_"),
    ("adagrad", {}, "_fused_adagrad_"), ("adadagrad", {}, "_fused_adagrad_"),
    ("adamw", {"state_dtype": "float32"}, "_fused_adamw_"), ("adamw", {"nonfinite": "ignore"}, "_fused_adamw_"),
    ("adamw", {"impl": "fused"}, "_fused_adamw_"),
])
def test_auto_dispatches_to_the_fused_kernel(name, hp, op, spy):
    params = _params(torch.float32)
    opt = optfit.create_optimizer(params, name, **hp)
    _one_step(opt, params)
    assert spy.calls[op] == 1 and spy.total == 1, spy.calls
    assert "fused" in opt._offered_impls()


@pytest.mark.parametrize("name,hp,dtype", [
    ("adamw", {"cautious": True}, torch.float32), ("cadamw", {}, torch.float32),
    ("adamw", {"grad_filter": "ema"}, torch.float32),
    ("adamw", {"decay_mode": "independent", "weight_decay": 0.1}, torch.float32),
    ("sgd", {"decay_mode": "decoupled", "weight_decay": 0.1}, torch.float32),
    ("adagrad", {"decay_mode": "independent", "weight_decay": 0.1}, torch.float32),
    ("adamw", {}, torch.bfloat16), ("adamw", {"state_dtype": "float32"}, torch.bfloat16),
    ("sgd", {"momentum": 0.9}, torch.float16), ("adamw", {}, torch.complex64),
    ("adamw", {"impl": "foreach"}, torch.float32), ("adamw", {"impl": "reference"}, torch.float32),
    ("adagrad", {"impl": "foreach"}, torch.float32),
])
def test_auto_keeps_the_existing_path_where_the_kernel_cannot_express_the_step(name, hp, dtype, spy):
    params = [torch.randn(4, 3, dtype=dtype, requires_grad=True), torch.randn(3, dtype=dtype, requires_grad=True)]
    opt = optfit.create_optimizer(params, name, **hp)
    _one_step(opt, params)
    assert spy.total == 0, spy.calls


def test_fused_impl_falls_back_per_group_and_per_layout(spy):
    a = torch.randn(5, 4, requires_grad=True)
    b = torch.randn(4, 5).t().requires_grad_()  # non-contiguous parameter: that group keeps foreach
    c = torch.randn(3, requires_grad=True)
    opt = optfit.optim.AdamW([{"params": [a]}, {"params": [b]}, {"params": [c], "cautious": True}], impl="fused")
    for p in (a, b, c):
        p.grad = torch.ones_like(p)
    opt.step()
    assert spy.calls["_fused_adamw_"] == 1
    with pytest.raises(ValueError, match="impl"):
        optfit.create_optimizer([torch.zeros(2, requires_grad=True)], "lion", impl="fused")


def test_subclass_that_changes_the_maths_loses_the_fused_path(spy):
    class ScaledAdam(optfit.optim.Adam):
        @staticmethod
        def _update(p, g, st, c, flags):
            return 2 * optfit.optim.Adam._update(p, g, st, c, flags)

    assert "fused" not in ScaledAdam._offered_impls() and ScaledAdam._fused_kind() is None
    p = torch.randn(3, requires_grad=True)
    opt = ScaledAdam([p])
    _one_step(opt, [p])
    assert spy.total == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name,hp", [("adamw", {"amsgrad": True}), ("adam", {"weight_decay": 0.1}),
                                     ("sgd", {"momentum": 0.9, "nesterov": True})])
def test_fused_on_cuda_matches_reference(name, hp):
    shapes = [(64, 33), (33,), (7,)]
    runs = {}
    for impl in ("reference", "fused"):
        params = [p.detach().cuda().requires_grad_() for p in _params(torch.float32, shapes=shapes)]
        runs[impl] = (params, _build(name, params, impl, hp))
    for grads in _stream(torch.float32, 20, shapes=shapes):
        for params, opt in runs.values():
            for p, g in zip(params, grads):
                p.grad = g.cuda()
            opt.step()
    _assert_same_run(runs["reference"], runs["fused"], TOL[torch.float32], "cuda")
