"""impl="flat" against the ground truth impl="reference": the same choices, parameters and state, step for step,
in every mode and option; state_dict round trips across impls; the buckets the flat path must handle (grads
that are None on some steps, groups added later, mixed dtypes, complex, bf16) and its bookkeeping."""

from __future__ import annotations

import copy
import io
import random
from functools import partial

import pytest
import torch

import optfit
from optfit.gap import GapAdam, GapAdamW, GapSGD, flat, selector

from . import trajectories

SHAPES = [(6, 4), (5,), (3, 2, 2), (17,), (1,), (33, 9), (), (4, 6), (5,), (65, 64), (64, 65), (4097,)]
# sizes 24, 5, 1 repeat; the last three are above flat.SUM_MAX (a matrix–vector product per tensor)


_params = partial(trajectories._params, shapes=SHAPES)


def _grad_stream(params, steps, seed=1, skip=None):
    """Per step a list of gradients (None where ``skip(step, i)``): scaled noise plus a pull towards 0, so that
    the scores differ between tensors and the choices switch."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for t in range(steps):
        row = []
        for i, p in enumerate(params):
            g = torch.randn(p.shape, generator=gen, dtype=p.dtype) * (1 + 0.5 * i) * (1 + (t // 7) % 3)
            row.append(None if skip and skip(t, i) else g)
        out.append(row)
    return out


def _drive(opt, params, stream, pull=0.3):
    history = []
    for row in stream:
        for p, g in zip(params, row):
            p.grad = None if g is None else g + pull * p.detach()
        opt.step()
        history.append(opt.selection())
    return history


def _pair(make, steps=40, dtype=torch.float64, skip=None, shapes=SHAPES):
    """Run reference and flat on the same stream; return (params, opt, history) for each."""
    out = []
    for impl in ("reference", "flat"):
        params = _params(dtype, shapes=shapes)
        opt = make(params, impl)
        out.append((params, opt, _drive(opt, params, _grad_stream(params, steps, skip=skip))))
    return out


def _assert_same_state(opt_a, opt_b, exact=True):
    sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        assert list(sa[i]) == list(sb[i]), f"state[{i}] keys differ"
        for key in sa[i]:
            a, b = sa[i][key], sb[i][key]
            assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, (i, key)
            if exact:
                assert torch.equal(a, b), f"state[{i}][{key!r}] differs"
            else:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def _assert_same_run(ref, fl, exact=True):
    (pa, oa, ha), (pb, ob, hb) = ref, fl
    assert ha == hb, "the choices differ"
    for a, b in zip(pa, pb):
        if exact:
            assert torch.equal(a.detach(), b.detach())
        else:
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-6, atol=1e-9)
    _assert_same_state(oa, ob, exact)
    assert oa.gap_stats() == ob.gap_stats()


def _uses_flat(opt):
    """Every state's buffer is a view into a flat layout."""
    return all(st[k]._base is not None for st in opt.state.values() for k in ("exp_avgs", "momentum_buffers")
               if k in st)


CASES = [(cls, kw) for cls, kw in [
    (GapAdamW, {}), (GapAdam, {"weight_decay": 0.1}), (GapSGD, {"lr": 0.01}), (GapSGD, {"lr": 0.01, "nesterov": True}),
]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("cls,kw", CASES, ids=["gap-adamw", "gap-adam-l2", "gap-sgd", "gap-sgd-nesterov"])
@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_flat_equals_reference_bit_for_bit(cls, kw, mode, dtype):
    """Same choices, parameters and state (every key, shape and dtype) as the reference, bit for bit: segments
    start 64-byte aligned, so the per-tensor mean and matrix-vector product read what the reference reads."""
    combos = [("current", 0.0, 0), ("current", 0.5, 3), ("next", 0.5, 1)]
    seen = set()
    for score, ema, hyst in combos[:2] if kw.get("nesterov") else combos:
        runs = _pair(lambda ps, impl: cls(ps, impl=impl, mode=mode, score=score, score_ema=ema, hysteresis=hyst, **kw),
                     steps=25, dtype=dtype)
        _assert_same_run(*runs)
        assert _uses_flat(runs[1][1]) and not _uses_flat(runs[0][1])
        seen |= {str(h) for h in runs[1][2]}
    assert len(seen) > 1, "the stream should make the choices switch"


@pytest.mark.parametrize("decay_mode", ["decoupled", "independent", "coupled"])
def test_weight_decay_modes_and_a_changing_lr(decay_mode):
    def make(ps, impl):
        opt = GapAdamW(ps, lr=0.02, weight_decay=0.05, decay_mode=decay_mode, impl=impl, hysteresis=2)
        opt.sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
        return opt

    runs = []
    for impl in ("reference", "flat"):
        params = _params()
        opt = make(params, impl)
        hist = []
        for row in _grad_stream(params, 25):
            for p, g in zip(params, row):
                p.grad = g
            opt.step()
            opt.sched.step()
            hist.append(opt.selection())
        runs.append((params, opt, hist))
    _assert_same_run(*runs)


@pytest.mark.parametrize("cls", [GapAdamW, GapSGD])
def test_cautious(cls):
    runs = _pair(lambda ps, impl: cls(ps, lr=0.01, cautious=True, mode="per_param", hysteresis=1, impl=impl))
    _assert_same_run(*runs)


@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_grads_that_are_none_on_some_steps(mode):
    """Tensor 1 has no gradient on some steps (its step count falls behind: a bucket of its own), tensor 3 never
    has one; the flat path rebuilds its buckets and matches the reference."""
    skip = lambda t, i: i == 3 or (i == 1 and t in (2, 3, 9))  # noqa: E731
    runs = _pair(lambda ps, impl: GapAdamW(ps, lr=0.01, mode=mode, hysteresis=2, impl=impl), steps=30, skip=skip)
    _assert_same_run(*runs)
    opt = runs[1][1]
    assert int(opt.state[runs[1][0][1]]["step"]) == 27 and runs[1][0][3] not in opt.state


def test_param_group_added_later_and_several_global_groups():
    runs = []
    for impl in ("reference", "flat"):
        params = _params()
        opt = GapAdamW([{"params": params[:3]}, {"params": params[3:5], "weight_decay": 0.0}], lr=0.01, impl=impl,
                       hysteresis=2)
        stream = _grad_stream(params, 30)
        hist = _drive(opt, params[:5], [row[:5] for row in stream[:10]])
        opt.add_param_group({"params": params[5:], "mode": "per_param"})
        hist += _drive(opt, params, stream[10:])
        runs.append((params, opt, hist))
    _assert_same_run(*runs)


def test_mixed_dtypes_fall_back_and_bf16_with_fp32_state_runs_flat():
    mixed = [torch.randn(4, dtype=torch.float32, requires_grad=True), torch.randn(3, dtype=torch.float64,
                                                                                   requires_grad=True)]
    opt = GapAdamW(mixed, impl="flat")
    for _ in range(3):
        for p in mixed:
            p.grad = torch.randn_like(p)
        opt.step()
    assert not _uses_flat(opt)  # one bucket, two dtypes: the reference path

    def make(ps, impl):
        return GapAdamW(ps, lr=0.01, impl=impl, state_dtype="float32", hysteresis=2)

    runs = []
    for impl in ("reference", "flat"):
        params = [p.detach().to(torch.bfloat16).requires_grad_() for p in _params(torch.float32)]
        opt = make(params, impl)
        runs.append((params, opt, _drive(opt, params, _grad_stream(params, 20))))
    _assert_same_run(*runs)
    assert _uses_flat(runs[1][1])


def test_bf16_state_runs_the_reference_path():
    params = [p.detach().to(torch.bfloat16).requires_grad_() for p in _params(torch.float32)]
    opt = GapAdamW(params, impl="flat")
    _drive(opt, params, _grad_stream(params, 5))
    assert not _uses_flat(opt) and all(torch.isfinite(p.float()).all() for p in params)


def test_complex_parameters():
    shapes = [(4, 3), (5,)]
    runs = []
    for impl in ("reference", "flat"):
        gen = torch.Generator().manual_seed(0)
        params = [torch.randn(s, generator=gen, dtype=torch.complex128).requires_grad_() for s in shapes]
        opt = GapAdamW(params, lr=0.01, impl=impl, mode="per_param", hysteresis=1)
        hist = []
        for _ in range(20):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.3 * p.detach()
            opt.step()
            hist.append(opt.selection())
        runs.append((params, opt, hist))
    _assert_same_run(*runs)
    assert _uses_flat(runs[1][1])


@pytest.mark.parametrize("mode", ["global", "per_param"])
@pytest.mark.parametrize("save_impl,load_impl", [("flat", "reference"), ("reference", "flat"), ("flat", "flat")])
def test_state_dict_round_trip_across_impls(save_impl, load_impl, mode):
    """Save mid-hysteresis with one impl, load (through torch.save/torch.load) into the other, continue: the
    result equals an uninterrupted run bit for bit, and the loaded state does not alias the saved one."""
    make = lambda ps, impl: GapAdamW(ps, lr=0.01, mode=mode, hysteresis=5, score_ema=0.5, impl=impl)  # noqa: E731
    params = _params(torch.float32)
    stream = _grad_stream(params, 40)
    full = make(params, "flat")
    full_hist = _drive(full, params, stream)

    first = _params(torch.float32)
    opt = make(first, save_impl)
    _drive(opt, first, stream[:17])
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    second = [p.detach().clone().requires_grad_() for p in first]
    opt2 = make(second, load_impl)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    opt2.load_state_dict(loaded)
    for group in opt2.param_groups:  # like torch, loading restores the saved group options, impl included
        assert group["impl"] == save_impl
        group["impl"] = load_impl
    storages = {v.untyped_storage().data_ptr() for st in loaded["state"].values() for v in st.values()}
    hist = _drive(opt2, second, stream[17:])
    assert hist == full_hist[17:]
    for a, b in zip(params, second):
        assert torch.equal(a.detach(), b.detach())
    _assert_same_state(full, opt2)
    assert full.gap_stats() == opt2.gap_stats()
    if load_impl == "flat":  # the loaded tensors were copied into fresh flat buffers, not adopted
        assert _uses_flat(opt2)
        assert not storages & {v.untyped_storage().data_ptr() for st in opt2.state.values() for v in st.values()
                               if v.ndim > 0}


def test_state_dict_of_flat_has_the_reference_format():
    runs = _pair(lambda ps, impl: GapSGD(ps, impl=impl, mode="per_param"), steps=3)
    sa, sb = runs[0][1].state_dict(), runs[1][1].state_dict()
    assert sa["param_groups"][0]["impl"] == "reference" and sb["param_groups"][0]["impl"] == "flat"
    for i, st in sb["state"].items():
        assert st["momentum_buffers"].shape == (3, *SHAPES[i])
        assert st["gap_score"].dtype == torch.float64 and st["gap_counts"].dtype == torch.int64
        assert st["gap_index"].shape == () and st["gap_index"].device.type == "cpu"
    _assert_same_state(runs[0][1], runs[1][1])


@pytest.mark.parametrize("policy", ["raise", "skip"])
def test_nonfinite_gradient_names_the_parameter_and_changes_nothing(policy):
    params = _params(torch.float32)
    opt = GapAdamW(params, impl="flat", nonfinite=policy)
    opt.set_param_names({p: f"w{i}" for i, p in enumerate(params)})
    _drive(opt, params, _grad_stream(params, 3))
    before_params = [p.detach().clone() for p in params]
    before_state = copy.deepcopy(opt.state_dict())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, float("nan")) if i == 2 else torch.ones_like(p)
    if policy == "raise":
        with pytest.raises(FloatingPointError, match="'w2'"):
            opt.step()
    else:
        opt.step()
        assert opt.skipped_steps == 1
    for a, b in zip(before_params, params):
        assert torch.equal(a, b.detach())
    _assert_same_state_dicts(before_state, opt.state_dict())


def _assert_same_state_dicts(a, b):
    for i in a["state"]:
        for key, v in a["state"][i].items():
            assert torch.equal(v, b["state"][i][key]), (i, key)


def test_load_state_dict_rebuilds_the_layout():
    params = _params(torch.float32)
    opt = GapAdamW(params, impl="flat")
    _drive(opt, params, _grad_stream(params, 4))
    layout = next(iter(opt._flat_layouts.values()))
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert not layout.valid_for(params, [opt.state[p] for p in params])
    _drive(opt, params, _grad_stream(params, 2))
    assert len(opt._flat_layouts) == 1 and next(iter(opt._flat_layouts.values())) is not layout
    assert _uses_flat(opt)


def test_auto_uses_flat_and_a_subclass_with_other_maths_falls_back():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    for name in ("gap-adamw", "gap-adam", "gap-sgd"):
        opt = optfit.create_optimizer(model, name)
        model(torch.randn(5, 4)).pow(2).mean().backward()
        opt.step()
        assert _uses_flat(opt), name

    class Other(GapAdamW):
        def _first_pass(self, p, g, st, c, group, scratch):
            return super()._first_pass(p, g, st, c, group, scratch)

    p = torch.zeros(3, requires_grad=True)
    opt = Other([p])
    p.grad = torch.ones(3)
    opt.step()
    assert not _uses_flat(opt)
    with pytest.raises(ValueError, match="impl"):
        Other([p], impl="flat")
    with pytest.raises(ValueError, match="impl"):
        optfit.create_optimizer([p], "gap-mix", impl="flat")


def test_decide_all_is_selector_decide_for_every_row():
    """The vectorised choice against the per-unit reference on random and tied scores, with EMA and hysteresis."""
    rng = random.Random(0)
    for ema, hyst in [(0.0, 0), (0.0, 3), (0.7, 2)]:
        t, k = 6, 3
        units = [selector.new_state(k, rng.randrange(k)) for _ in range(t)]
        params = [torch.zeros(2) for _ in range(t)]
        states = [{"exp_avgs": torch.zeros(k, 2), "exp_avg_sq": torch.zeros(2), **copy.deepcopy(u)} for u in units]
        layout = flat.Layout("adam", params, states, k)
        for _ in range(60):
            rows = [[float(rng.choice([0.0, 1.0, 2.0])) if rng.random() < 0.5 else rng.gauss(0, 1) for _ in range(k)]
                    for _ in range(t)]
            want = [selector.decide(u, r, ema, hyst) for u, r in zip(units, rows)]
            assert flat.decide_all(layout, rows, ema, hyst) == want
            for u, st in zip(units, states):
                for key in flat.SELECTOR_KEYS:
                    assert torch.equal(u[key], st[key]), key


def _spy_first_pass(monkeypatch):
    """Record the ``copied`` flag of every flat first pass."""
    seen, real = [], flat.first_pass

    def spy(*args, **kwargs):
        seen.append(args[6] if len(args) > 6 else kwargs.get("copied", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(flat, "first_pass", spy)
    return seen


def test_the_nonfinite_check_fills_the_flat_gradient_buffer(monkeypatch):
    """After the first step (which builds the layout) the check copies the gradients and first_pass does not;
    gradients replaced before the kernel (coupled L2 adds λθ) or a check that is off make it copy itself."""
    seen = _spy_first_pass(monkeypatch)
    params = _params(torch.float32)
    opt = GapAdamW(params, impl="flat")
    _drive(opt, params, _grad_stream(params, 4))
    assert seen == [False, True, True, True]
    seen.clear()
    params = _params(torch.float32)
    opt = GapAdam(params, impl="flat", weight_decay=0.1)
    _drive(opt, params, _grad_stream(params, 3))
    assert seen == [False, False, False]
    seen.clear()
    params = _params(torch.float32)
    opt = GapAdamW(params, impl="flat", nonfinite="ignore")
    _drive(opt, params, _grad_stream(params, 3))
    assert seen == [False, False, False]


def test_gradients_updated_in_place_between_steps():
    """The same .grad tensors, overwritten in place each step; a step skipped for a NaN leaves its gradients in the
    flat buffer, and with the check switched off next (no copy during the check from then on) nothing copied at
    an earlier step is reused."""
    runs = []
    for impl in ("reference", "flat"):
        params = _params(torch.float32)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt = GapAdamW(params, impl=impl, hysteresis=1)
        hist = []
        for t, row in enumerate(_grad_stream(params, 12)):
            opt.param_groups[0]["nonfinite"] = "skip" if t < 6 else "ignore"
            for p, g in zip(params, row):
                p.grad.copy_(g + 0.3 * p.detach())
            if t == 5:
                params[0].grad[0, 0] = float("nan")
            opt.step()
            hist.append(opt.selection())
        assert opt.skipped_steps == 1
        runs.append((params, opt, hist))
    _assert_same_run(*runs)


def test_a_finite_gradient_whose_sum_overflows_still_steps():
    """The flat check's one sum overflows to inf on huge finite gradients: the per-tensor check then finds them
    finite and the step runs, as in the reference (the second moment overflows too: every d is inf, every score
    0, the choice stays)."""
    runs = []
    for impl in ("reference", "flat"):
        params = _params(torch.float32)
        opt = GapAdamW(params, impl=impl)
        stream = _grad_stream(params, 4)
        stream[2] = [torch.full(g.shape, 3e38) for g in stream[2]]
        runs.append((params, opt, _drive(opt, params, stream, pull=0.0)))
    _assert_same_run(*runs)
    assert runs[1][1].skipped_steps == 0 and int(runs[1][1].state[runs[1][0][0]]["step"]) == 4


def test_deepcopy_and_pickle_mid_run_carry_the_global_choice():
    """The global selector and the lazily written per-tensor copies of its choice survive copy.deepcopy and
    pickling (torch.optim pickles only defaults, state and param_groups; the copy has no layout to flush)."""
    params = _params(torch.float32)
    opt = GapAdamW(params, impl="flat", hysteresis=2)
    stream = _grad_stream(params, 20)
    _drive(opt, params, stream[:8])
    _raw_steps(opt, params, stream[8:10])
    assert opt._flat_layouts[next(iter(opt._flat_layouts))].lazy_index is not None
    for clone in (copy.deepcopy(opt), torch.load(io.BytesIO(_pickled(opt)), weights_only=False)):
        assert not clone._flat_layouts and clone._global.counts == opt._global.counts == [8, 2, 0]
        _assert_same_state(opt, clone)
    twin_params, twin = copy.deepcopy((params, opt))
    assert _drive(opt, params, stream[10:]) == _drive(twin, twin_params, stream[10:])
    _assert_same_state(opt, twin)
    assert opt.gap_stats() == twin.gap_stats()


def _raw_steps(opt, params, stream):
    """Steps without ``selection()`` (which would flush the lazily written per-tensor state)."""
    for row in stream:
        for p, g in zip(params, row):
            p.grad = g + 0.3 * p.detach()
        opt.step()


def _pickled(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize("switch", ["mode", "impl"])
def test_switching_mode_or_impl_mid_run(switch):
    """Global for 10 steps, then per_param (or the reference impl): the lazily written per-tensor state is
    flushed first, so the run equals the reference doing the same."""
    runs, counts = [], []
    for impl in ("reference", "flat"):
        params = _params(torch.float32)
        opt = GapAdamW(params, impl=impl, hysteresis=1)
        stream = _grad_stream(params, 20)
        hist = _drive(opt, params, stream[:8])
        _raw_steps(opt, params, stream[8:10])
        key, value = ("mode", "per_param") if switch == "mode" else ("impl", "reference")
        opt.param_groups[0][key] = value
        _raw_steps(opt, params, stream[10:11])
        counts.append([opt.state[p]["gap_counts"].clone() for p in params])  # read directly: nothing flushes here
        hist += _drive(opt, params, stream[11:])
        runs.append((params, opt, hist))
    assert all(map(torch.equal, *counts))
    _assert_same_run(*runs)


def test_compatible_groups_run_as_one_batch(monkeypatch):
    """Groups that differ only in what the step uses (lr, weight decay, caution) share one layout and one first
    pass, prefetched gradients included; a different β₂ makes a second batch. Both equal the reference."""
    seen = _spy_first_pass(monkeypatch)

    def make(ps, impl, beta2=0.999):
        return GapAdamW([{"params": ps[:4]}, {"params": ps[4:8], "lr": 0.003, "weight_decay": 0.0},
                         {"params": ps[8:], "cautious": True, "beta2": beta2}], lr=0.01, impl=impl, hysteresis=1)

    for beta2, layouts in [(0.999, 1), (0.99, 2)]:
        seen.clear()
        runs = _pair(lambda ps, impl: make(ps, impl, beta2), steps=12, dtype=torch.float32)
        _assert_same_run(*runs)
        assert len(runs[1][1]._flat_layouts) == layouts and _uses_flat(runs[1][1])
        assert seen == [False] * layouts + [True] * (11 * layouts)
