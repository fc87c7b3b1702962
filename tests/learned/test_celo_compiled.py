"""Celo(impl="compiled") against the eager kernel (impl="reference"): parameters and every state tensor over
several steps on 1-D, 2-D and 4-D parameters in groups of different lr (one at 0), with an lr change that must
not recompile and a step where one parameter has no gradient; resume across impls, impl validation, and the
compile-friendly factored_dims.

One compiled run (module fixture) serves the parity, recompilation and resume tests: a cold compile of the
two graphs costs tens of seconds on a loaded 2-core machine (inductor's on-disk cache makes reruns faster)."""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import optfit
from optfit.learned import Celo, CeloAdam
from optfit.learned import _celo_compiled as C
from optfit.learned import _celo_kernel as K

CELO_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "celo").resolve()
pytestmark = pytest.mark.skipif(not CELO_DIR.is_dir(), reason=f"Celo weights folder {CELO_DIR} not found")
# a 2-D weight whose largest axis is the second, a conv kernel (out, in, kh, kw), a vector; one group each
SHAPES = ((3, 7), (4, 3, 2, 2), (7,))
GROUP_LRS = (1.0, 3.0, 0.0)  # the vector is frozen by lr = 0 (its accumulators still advance)
STEPS, LR_CHANGE_AT, NEW_LR = 5, 2, 0.5  # group 1's lr becomes 0.5 before step index 2
NO_GRAD_AT = 3  # the conv kernel gets no gradient at step index 3 (skipped: its state does not advance)


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen) * 0.5) for s in SHAPES]


def _build(params, impl):
    groups = [{"params": [p], "lr": lr} for p, lr in zip(params, GROUP_LRS)]
    return Celo(groups, weights=CELO_DIR, total_steps=20, impl=impl)


def _targets(seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen) for s in SHAPES]


def _step(opt, params, targets, no_grad=()):
    def closure():
        opt.zero_grad()
        loss = sum(((p - t) ** 2 * (1 + i)).sum() for i, (p, t) in enumerate(zip(params, targets)))
        loss.backward()
        for i in no_grad:
            params[i].grad = None
        return loss
    opt.step(closure)


def _run(impl, graphs=None):
    params, targets = _params(), _targets()
    start = [p.detach().clone() for p in params]
    opt = _build(params, impl)
    for k in range(STEPS):
        if k == LR_CHANGE_AT:
            opt.param_groups[1]["lr"] = NEW_LR
        _step(opt, params, targets, no_grad=(1,) if k == NO_GRAD_AT else ())
        if graphs is not None:
            graphs.append(counters["stats"]["unique_graphs"])
    return params, opt, start


@pytest.fixture(scope="module")
def runs():
    ref = _run("reference")
    before = counters["stats"]["unique_graphs"]
    graphs: list[int] = []
    fast = _run("compiled", graphs)
    return ref, fast, before, graphs


def _assert_states_close(opt_a, params_a, opt_b, params_b):
    for p, q in zip(params_a, params_b):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-7)
        sa, sb = opt_a.state[p], opt_b.state[q]
        assert set(sa) == set(sb)
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-9, msg=lambda m, k=key: f"{k}: {m}")


# ------------------------------------------------------------------------------------------------ parity
@pytest.mark.compiled
def test_compiled_equals_the_eager_kernel_on_parameters_and_every_state_tensor(runs):
    (p_ref, o_ref, start), (p_fast, o_fast, _), _, _ = runs
    _assert_states_close(o_ref, p_ref, o_fast, p_fast)
    assert o_fast.last_lr_mult == pytest.approx(o_ref.last_lr_mult, rel=1e-5)  # shared scheduler, ≈ same losses
    for p, s in zip(p_fast[:2], start):
        assert (p.detach() - s).abs().max() > 1e-4  # the trained tensors moved …
    assert torch.equal(p_fast[2].detach(), start[2])  # … the lr = 0 one did not, but its accumulators advance
    assert o_fast.state[p_fast[2]]["momentum"].abs().max() > 0
    assert [int(o_fast.state[p]["step"]) for p in p_fast] == [STEPS, STEPS - 1, STEPS]  # the skipped step


@pytest.mark.compiled
def test_an_lr_change_does_not_recompile_and_a_missing_gradient_recompiles_once(runs):
    """Graphs (two per parameter layout) counted after each step: the lr change before step 2 adds none; the
    step without the conv's gradient adds one pair; the step after it reuses the first pair (the tensors reach
    the graphs in parameter order, although their step counts now differ)."""
    _, _, before, graphs = runs
    assert graphs[0] > before, "impl='compiled' must really compile"
    first, second = graphs[0], graphs[NO_GRAD_AT]
    assert second > first
    assert graphs == [first] * NO_GRAD_AT + [second] * (STEPS - NO_GRAD_AT), f"graph count per step: {graphs}"


@pytest.mark.compiled
@pytest.mark.parametrize("first, second", [("reference", "compiled"), ("compiled", "reference")])
def test_state_dict_resumes_across_impls(runs, first, second):
    """Two steps with one impl, the checkpoint loaded into a new optimizer switched to the other impl (the
    checkpoint restores each group's options, impl included, as torch.optim does): the same trajectory as an
    uninterrupted eager run (the compiled graphs are reused: same parameter layout)."""
    params, targets = _params(), _targets()
    opt = _build(params, first)
    for _ in range(2):
        _step(opt, params, targets)
    sd = copy.deepcopy(opt.state_dict())
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = _build(resumed_params, second)
    resumed.load_state_dict(sd)
    assert [g["impl"] for g in resumed.param_groups] == [first] * 3  # group options come back, as in torch.optim
    for group in resumed.param_groups:
        group["impl"] = second
    ref_params = _params()
    ref = _build(ref_params, "reference")
    for _ in range(4):
        _step(ref, ref_params, targets)
    for _ in range(2):
        _step(resumed, resumed_params, targets)
    _assert_states_close(ref, ref_params, resumed, resumed_params)
    assert resumed.scheduler_state()["iteration"] == ref.scheduler_state()["iteration"] == 4


# ------------------------------------------------------------------------------------ options and helpers
def test_auto_keeps_the_eager_kernel_and_compiles_nothing():
    params, targets = _params(), _targets()
    opt = _build(params, "auto")
    before = counters["stats"]["unique_graphs"]
    _step(opt, params, targets)
    assert counters["stats"]["unique_graphs"] == before


def test_impl_values_are_validated():
    assert "compiled" in Celo(_params(), weights=CELO_DIR)._offered_impls()
    for bad in ("foreach", "fused", "Compiled"):
        with pytest.raises(ValueError, match="impl"):
            Celo(_params(), weights=CELO_DIR, impl=bad)
        with pytest.raises(ValueError, match="impl"):
            optfit.create_optimizer(_params(), "celo", weights=CELO_DIR, impl=bad)
    with pytest.raises(ValueError, match="impl"):  # Celo-Adam has no compiled path
        CeloAdam(_params(), weights=CELO_DIR, impl="compiled")
    opt = Celo(_params(), weights=CELO_DIR)
    with pytest.raises(ValueError, match="impl"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "impl": "foreach"})


def test_compile_friendly_factored_dims_equal_the_eager_rule():
    shapes = [s for n in (2, 3, 4) for s in itertools.product((1, 2, 3, 5), repeat=n)]  # ties included
    assert [C.factored_dims(torch.Size(s)) for s in shapes] == [K.factored_dims(s) for s in shapes]


def test_packed_mlp_follows_the_layout():
    w = tuple(torch.randn(r, c) for _, r, c in C._LAYOUT.values())
    packed = C.pack_mlp(w)
    for (name, (_, rows, cols)), t in zip(C._LAYOUT.items(), w):
        assert torch.equal(C._mat(packed, name), t.view(rows, cols)), name
