"""``step_in_backward``: the per-tensor step inside backward equals ``optimizer.step()`` bit for bit."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn

import optfit
from optfit.optim.in_backward import InBackwardStep, in_backward_unsupported, step_in_backward

STEPS = 20


class Net(nn.Module):
    """Six tensors of three shapes (2-D weights, biases, a LayerNorm), on a fixed random regression task."""

    def __init__(self, dtype=torch.float32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)

    def forward(self, x):
        return self.net(x)


def batches(dtype, n=STEPS, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen).to(dtype), torch.randn(16, 3, generator=gen).to(dtype))
            for _ in range(n)]


def loss_of(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def build(name, model, **extra):
    """Two param groups with different hyperparameters: 2-D weights, and the rest at half the lr (and, where the
    optimizer has weight decay, decay 0.1 vs 0)."""
    info = optfit.optimizer_info(name)
    kwargs = {**info.test_hparams, **extra}
    defaults = info.defaults
    lr = kwargs.get("lr", defaults.get("lr"))
    weights = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    second = {"params": rest}
    if isinstance(lr, float):
        second["lr"] = lr * 0.5
    if "weight_decay" in defaults and "weight_decay" not in info.preset:
        kwargs.setdefault("weight_decay", 0.1)
        second["weight_decay"] = 0.0
    return optfit.create_optimizer([{"params": weights}, second], name, **kwargs)


def scheduler_for(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1.0 + 0.1 * t))


def build_or_none(name):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. AdaFisher given parameters without their model
            return build(name, Net())
    except Exception:  # e.g. Celo without its meta-learned weights
        return None


NAMES = [n for n in optfit.list_optimizers() if not optfit.optimizer_info(n).needs_batch]
_OPTS = {n: build_or_none(n) for n in NAMES}
SUPPORTED = [n for n in NAMES if _OPTS[n] is not None and in_backward_unsupported(_OPTS[n]) is None]
REFUSED = [n for n in NAMES if n not in SUPPORTED]


def assert_same(a, b, where=""):
    """Bitwise equality of nested state dicts / lists / tensors / numbers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(a.nan_to_num(), b.nan_to_num()), \
            f"{where}: tensors differ (max |Δ| {(a.double() - b.double()).abs().max().item():.3g})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def run_normal(name, dtype, steps=STEPS, model=None, opt=None, data=None, **extra):
    model = model or Net(dtype)
    opt = opt or build(name, model, **extra)
    sched = scheduler_for(opt)
    sign = -1.0 if extra.get("maximize") else 1.0  # maximize −loss: the same descent, through maximize
    trajectory = []
    for batch in data or batches(dtype, steps):
        (sign * loss_of(model, batch)).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
        trajectory.append([p.detach().clone() for p in model.parameters()])
    return model, opt, trajectory


def run_in_backward(name, dtype, steps=STEPS, **extra):
    model = Net(dtype)
    opt = build(name, model, **extra)
    sched = scheduler_for(opt)
    handle = step_in_backward(model, opt)
    sign = -1.0 if extra.get("maximize") else 1.0
    trajectory = []
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*before.*optimizer.step")
        for batch in batches(dtype, steps):
            (sign * loss_of(model, batch)).backward()
            assert all(p.grad is None for p in model.parameters())
            sched.step()
            trajectory.append([p.detach().clone() for p in model.parameters()])
    return model, opt, trajectory, handle


def assert_runs_equal(name, dtype, **extra):
    _, opt_n, traj_n = run_normal(name, dtype, **extra)
    _, opt_b, traj_b, handle = run_in_backward(name, dtype, **extra)
    handle.remove()
    for t, (a, b) in enumerate(zip(traj_n, traj_b)):
        assert_same(a, b, f"{name} step {t + 1}")
    assert_same(opt_n.state_dict(), opt_b.state_dict(), f"{name} state_dict")
    moved = sum(float((p - q).abs().sum()) for p, q in zip(traj_n[0], traj_n[-1]))
    assert moved > 0, f"{name}: the parameters did not move; the comparison would prove nothing"


# ----------------------------------------------------------------------------------------- equality
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", SUPPORTED)
def test_bitwise_equal_to_normal_step(name, dtype):
    assert_runs_equal(name, dtype)


@pytest.mark.parametrize("impl", ["reference", "foreach", "fused"])
@pytest.mark.parametrize("name", ["adamw", "amsgrad", "sgd", "adagrad", "lion", "rmsprop"])
def test_bitwise_equal_per_impl(name, impl):
    cls = optfit.optimizer_info(name).cls
    if impl not in cls._offered_impls():
        pytest.skip(f"{name} offers no impl={impl!r}")
    extra = {"momentum": 0.9, "nesterov": True} if name == "sgd" else {}
    assert_runs_equal(name, torch.float32, impl=impl, **extra)


@pytest.mark.parametrize("options", [{"maximize": True}, {"cautious": True}, {"grad_filter": "ema"},
                                     {"decay_mode": "coupled"}, {"decay_mode": "independent"}, {"nonfinite": "ignore"}],
                         ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_bitwise_equal_with_shared_options(name, options):
    extra = {"momentum": 0.9} if name == "sgd" else {}
    assert_runs_equal(name, torch.float64, **options, **extra)


@pytest.mark.parametrize("name, extra", [("adam-cm", {"priority_scope": "tensor"}),
                                         ("small-fc-lopt", {"impl": "reference"})], ids=["adam-cm", "small-fc-lopt"])
def test_bitwise_equal_where_supported_by_a_setting(name, extra):
    """The optimizers whose default settings couple the tensors of a group, at the setting that does not."""
    for dtype in (torch.float32, torch.float64):
        assert_runs_equal(name, dtype, **extra)


def test_sgd_first_step_and_momentum_paths():
    """SGD's fused kernel splits first-step tensors from later ones; per tensor it must still match."""
    for extra in ({"momentum": 0.0, "nesterov": False}, {"momentum": 0.9, "nesterov": False}, {"momentum": 0.9},
                  {"momentum": 0.5, "dampening": 0.3, "nesterov": False}):
        assert_runs_equal("sgd", torch.float32, **extra)


@pytest.mark.parametrize("name, op", [("adamw", "_fused_adamw_"), ("sgd", "_fused_sgd_"),
                                      ("adagrad", "_fused_adagrad_")])
def test_fused_kernel_runs_per_tensor(name, op, monkeypatch):
    """impl="auto" on CPU: the in-backward steps go through torch's fused kernel, one tensor per call (so the
    bitwise tests above compare fused-per-tensor with fused-per-group)."""
    calls = []
    kernel = getattr(torch, op)
    monkeypatch.setattr(torch, op, lambda ps, *a, **k: (calls.append(len(ps)), kernel(ps, *a, **k))[1])
    run_in_backward(name, torch.float32, steps=2)[3].remove()
    assert calls and set(calls) == {1}


def test_tied_weight_is_stepped_once_after_both_uses():
    def make():
        torch.manual_seed(0)
        return nn.Parameter(torch.randn(6, 6)), nn.Parameter(torch.randn(6))

    results = []
    for in_backward in (False, True):
        w, b = make()
        opt = optfit.create_optimizer([w, b], "adamw", lr=1e-2)
        handle = step_in_backward([w, b], opt) if in_backward else None
        for x, _ in batches(torch.float32, 5):
            ((x @ w @ w.T + b) ** 2).mean().backward()  # w used twice: one hook, after both contributions
            if not in_backward:
                opt.step()
                opt.zero_grad()
        results.append(([w.detach().clone(), b.detach().clone()], opt.state_dict()))
        if handle:
            handle.remove()
    assert_same(results[0], results[1], "tied weight")
    assert float(results[1][1]["state"][0]["step"]) == 5.0


def test_mixed_dtype_group_takes_the_groups_path():
    """A float32 tensor alone could take torch's fused AdamW kernel, but its group (which also holds a bfloat16
    tensor) takes the foreach path in optimizer.step(): the hook must take the group's path."""

    def make():
        torch.manual_seed(0)
        a = nn.Parameter(torch.randn(7, 5))
        b = nn.Parameter(torch.randn(5).bfloat16())
        return a, b

    data = batches(torch.float32, 12)

    def loss(a, b, batch):
        x, _ = batch
        return ((x[:, :5] @ a.T).sum(1) * b.float().sum()).pow(2).mean()

    results = []
    for in_backward in (False, True):
        a, b = make()
        opt = optfit.create_optimizer([a, b], "adamw", lr=1e-2, weight_decay=0.1)
        handle = step_in_backward([a, b], opt) if in_backward else None
        for batch in data:
            loss(a, b, batch).backward()
            if not in_backward:
                opt.step()
                opt.zero_grad()
        results.append(([a.detach().clone(), b.detach().clone()], opt.state_dict()))
        if handle:
            handle.remove()
    assert_same(results[0], results[1], "mixed-dtype group")


def test_float32_state_for_bfloat16_parameters():
    model_n, model_b = Net().bfloat16(), Net().bfloat16()
    data = batches(torch.bfloat16, 10)
    opt_n = optfit.create_optimizer(model_n, "adamw", lr=1e-2, state_dtype="float32")
    opt_b = optfit.create_optimizer(model_b, "adamw", lr=1e-2, state_dtype="float32")
    with step_in_backward(model_b, opt_b):
        for batch in data:
            loss_of(model_n, batch).backward()
            opt_n.step()
            opt_n.zero_grad()
            loss_of(model_b, batch).backward()
    assert_same(list(model_n.parameters()), list(model_b.parameters()), "bf16 params")
    assert_same(opt_n.state_dict(), opt_b.state_dict(), "state")


# ------------------------------------------------------------------------------------- way back
def test_remove_restores_normal_stepping_and_mixed_run_equals_normal():
    dtype = torch.float64
    data = batches(dtype, STEPS)
    _, opt_n, traj_n = run_normal("adamw", dtype, data=data)

    model = Net(dtype)
    opt = build("adamw", model)
    sched = scheduler_for(opt)
    handle = step_in_backward(model, opt)
    traj = []
    for t, batch in enumerate(data):
        if t == STEPS // 2:
            handle.remove()
            assert not handle.active
        loss_of(model, batch).backward()
        if t >= STEPS // 2:
            assert all(p.grad is not None for p in model.parameters())  # gradients accumulate again
            opt.step()
            opt.zero_grad()
        sched.step()
        traj.append([p.detach().clone() for p in model.parameters()])
    assert_same(traj_n, traj, "mixed run")
    assert_same(opt_n.state_dict(), opt.state_dict(), "mixed run state_dict")


def test_optimizer_step_while_attached_is_a_no_op_for_stepped_parameters():
    model = Net()
    opt = build("adamw", model)
    handle = step_in_backward(model, opt)
    loss_of(model, batches(torch.float32, 1)[0]).backward()
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    opt.zero_grad()
    assert_same(before, [p.detach() for p in model.parameters()], "after a redundant step()")
    handle.remove()


def test_context_manager_and_double_attach():
    model = Net()
    opt = build("adamw", model)
    with step_in_backward(model, opt) as handle:
        assert isinstance(handle, InBackwardStep) and handle.active
        with pytest.raises(RuntimeError, match="already stepped in backward"):
            step_in_backward(model, build("sgd", model))
    assert not handle.active
    step_in_backward(model, opt).remove()  # attachable again


def test_state_dict_round_trip_after_in_backward_steps():
    dtype = torch.float64
    data = batches(dtype, 2 * 10)
    model = Net(dtype)
    opt = build("adamw", model)
    with step_in_backward(model, opt):
        for batch in data[:10]:
            loss_of(model, batch).backward()
    sd = copy.deepcopy(opt.state_dict())
    clone = Net(dtype)
    clone.load_state_dict(model.state_dict())
    opt2 = build("adamw", clone)
    opt2.load_state_dict(sd)
    # both continue: the original in backward, the copy with normal steps
    with step_in_backward(model, opt):
        for batch in data[10:]:
            loss_of(model, batch).backward()
    for batch in data[10:]:
        loss_of(clone, batch).backward()
        opt2.step()
        opt2.zero_grad()
    assert_same(list(model.parameters()), list(clone.parameters()), "resumed params")
    assert_same(opt.state_dict(), opt2.state_dict(), "resumed state")


# --------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("name", REFUSED)
def test_refused_optimizers_raise_naming_the_optimizer(name):
    opt = _OPTS[name]
    if opt is None:
        pytest.skip(f"{name} cannot be built here")
    params = [p for g in opt.param_groups for p in g["params"]]
    with pytest.raises((TypeError, ValueError), match=type(opt).__name__) as info:
        step_in_backward(params, opt)
    assert ("optimizer.step()" in str(info.value)) if info.type is TypeError else ("use " in str(info.value))
    assert in_backward_unsupported(opt) in str(info.value)


def test_refusal_reasons():
    model = Net()
    reasons = {
        "prodigy": "two-pass", "dadapt-adam": "two-pass", "sania": "closure", "muon": "matrix optimizer",
        "lookahead": "not an optfit elementwise", "sophia": "Hessian", "schedule-free-adamw": "overrides step",
    }
    reasons.update({"adam-cm": "priority_scope='group'", "small-fc-lopt": "impl='reference'"})
    for name, text in reasons.items():
        opt = _OPTS[name]
        assert text in in_backward_unsupported(opt), name
    gap = optfit.create_optimizer(model.parameters(), "gap-adamw", mode="global")
    assert "mode='global'" in in_backward_unsupported(gap)
    with pytest.raises(TypeError, match="AdamW is not an optfit"):
        step_in_backward(model, torch.optim.AdamW(model.parameters()))


@pytest.mark.parametrize("setting", [{"nonfinite": "skip"}, {"impl": "compiled"}], ids=["skip", "compiled"])
def test_refused_group_settings(setting):
    model = Net()
    with pytest.raises(ValueError, match=f"{next(iter(setting))}="):
        step_in_backward(model, build("adamw", model, **setting))
    opt = build("adamw", model)  # a group edited after attaching: refused in the hook
    handle = step_in_backward(model, opt)
    opt.param_groups[1].update(setting)
    with pytest.raises(ValueError, match="param group 1"):
        loss_of(model, batches(torch.float32, 1)[0]).backward()
    handle.remove()


def test_parameters_outside_the_optimizer_are_refused_and_uncovered_ones_warned():
    model = Net()
    opt = optfit.create_optimizer(list(model.net[0].parameters()), "adamw")
    with pytest.raises(ValueError, match="not in AdamW's param groups"):
        step_in_backward(model, opt)
    opt = optfit.create_optimizer(model, "adamw")
    with pytest.warns(UserWarning, match="not stepped in backward"):
        handle = step_in_backward(model.net[0], opt)
    loss_of(model, batches(torch.float32, 1)[0]).backward()
    assert model.net[0].weight.grad is None and model.net[3].weight.grad is not None
    handle.remove()


def test_step_hooks_warn_and_are_not_called():
    model = Net()
    opt = build("adamw", model)
    calls = []
    opt.register_step_post_hook(lambda *a: calls.append(1))
    with pytest.warns(UserWarning, match="hooks will not run"):
        handle = step_in_backward(model, opt)
    loss_of(model, batches(torch.float32, 1)[0]).backward()
    assert calls == []
    handle.remove()


# ------------------------------------------------------------------------------------- non-finite
def test_nonfinite_gradient_raises_naming_the_parameter_and_leaves_it_untouched():
    model = Net(torch.float64)
    opt = optfit.create_optimizer(model, "adamw", lr=1e-2)  # a module: parameter names in errors
    handle = step_in_backward(model, opt)
    data = batches(torch.float64, 3)
    for batch in data[:2]:
        loss_of(model, batch).backward()
    bad = model.net[2].weight  # the LayerNorm gain
    before = bad.detach().clone()
    state_before = {k: v.clone() for k, v in opt.state[bad].items()}
    hook = bad.register_hook(lambda g: g * float("nan"))
    with pytest.raises(FloatingPointError, match=r"'net\.2\.weight'"):
        loss_of(model, data[2]).backward()
    hook.remove()
    assert torch.equal(bad, before)
    assert_same(state_before, dict(opt.state[bad]), "state of the bad parameter")
    assert bad.grad is not None and bad.grad.isnan().all()  # kept for inspection
    handle.remove()


def test_nonfinite_ignore_steps_anyway():
    model = Net(torch.float64)
    opt = optfit.create_optimizer(model, "sgd", lr=1e-2, nonfinite="ignore")
    with step_in_backward(model, opt):
        p = model.net[0].bias
        hook = p.register_hook(lambda g: g * float("inf"))
        loss_of(model, batches(torch.float64, 1)[0]).backward()
        hook.remove()
    assert not p.isfinite().all() and p.grad is None


def test_added_param_group_is_not_hooked_and_warned():
    model, extra = Net(), nn.Parameter(torch.ones(3))
    opt = build("adamw", model)
    handle = step_in_backward(model, opt)
    opt.add_param_group({"params": [extra]})
    with pytest.warns(UserWarning, match="not stepped in backward"):
        (loss_of(model, batches(torch.float32, 1)[0]) + extra.sum()).backward()
    assert extra.grad is not None
    handle.remove()
