"""torch.optim's generic behaviour, checked for every registry name (the list comes from the registry itself):
checkpoints (Python-number steps, the writer's name, torch.optim's own state dicts), ``maximize``, LR schedulers
(``initial_lr``, ``cycle_momentum``), tensor ``lr``, hooks, ``copy.deepcopy``/``pickle`` and input checks.
Written from torch's documented behaviour; tests/optim/test_conformance.py holds the rest of the contract."""

from __future__ import annotations

import copy
import inspect
import io
import pickle

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import optfit

from .problems import TinyNet, backward, build, closure_for, run

# names whose step needs the batch itself (Universal MM) have their own contract tests
NAMES = [n for n in optfit.list_optimizers() if not optfit.optimizer_info(n).needs_batch]
# the torch.optim classes whose checkpoints optfit loads, and the registry name of the same maths
TORCH_CLASSES = {"Adam": "adam", "AdamW": "adamw", "SGD": "sgd", "RMSprop": "rmsprop", "Adagrad": "adagrad",
                 "NAdam": "nadam", "RAdam": "radam"}
TORCH_NAMES = [n for n in NAMES if optfit.optimizer_info(n).torch_equivalent]


def _info(name):
    return optfit.optimizer_info(name)


def _params_equal(a, b):
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def _twin(model):
    twin = TinyNet()
    twin.load_state_dict(model.state_dict())
    return twin


# --------------------------------------------------------------------------------- 1. checkpoints: step
@pytest.mark.parametrize("name", NAMES)
def test_step_saved_as_a_python_number_loads_and_resumes_exactly(name):
    model = TinyNet()
    opt = build(name, model)
    run(model, opt, 3)
    saved_model, sd = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, 3)
    converted = 0
    for st in sd["state"].values():
        if isinstance(st.get("step"), torch.Tensor):
            st["step"] = int(st["step"])  # older torch and foreign checkpoints store a Python number
            converted += 1
    assert converted
    model2 = TinyNet()
    model2.load_state_dict(saved_model)
    opt2 = build(name, model2)
    opt2.load_state_dict(sd)
    run(model2, opt2, 3)
    _params_equal(model, model2)
    for st in opt2.state.values():
        assert isinstance(st["step"], torch.Tensor) and st["step"].dtype == torch.float32


# ------------------------------------------------------------------------------------------- 2. maximize
@pytest.mark.parametrize("name", NAMES)
def test_maximize_ascends_f_exactly_as_descent_on_minus_f(name):
    """Refused with a ValueError naming ``maximize`` where the maths reads the loss, else: maximize=True on f
    moves the parameters exactly as the default on −f, and ``p.grad`` is left as ∇f."""
    reason = getattr(_info(name).cls, "maximize_unsupported", None)
    if reason:
        with pytest.raises(ValueError, match="maximize"):
            build(name, TinyNet(), maximize=True)
        return
    up, down = TinyNet(), TinyNet()
    opt_up, opt_down = build(name, up, maximize=True), build(name, down)
    assert all(g["maximize"] is True for g in opt_up.param_groups)

    def closure(model, opt, sign):
        def fn():
            opt.zero_grad()
            loss = sign * model()
            backward(loss, opt)
            return loss
        return fn

    for _ in range(4):
        opt_up.step(closure(up, opt_up, 1.0))
        opt_down.step(closure(down, opt_down, -1.0))
    _params_equal(up, down)
    for p, q in zip(up.parameters(), down.parameters()):
        assert torch.equal(p.grad, -q.grad)  # the optimizer negated a copy, not p.grad


def _stream(shapes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes] for _ in range(steps)]


def _float64_params(shapes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64).requires_grad_() for s in shapes]


def _torch_kwargs(opt, cls_name, extra):
    accepted = inspect.signature(getattr(torch.optim, cls_name)).parameters
    return {**{k: v for k, v in opt.defaults.items() if k in accepted}, **extra}


@pytest.mark.parametrize("name", TORCH_NAMES)
@pytest.mark.parametrize("variant", [{}, {"weight_decay": 0.1}], ids=["defaults", "weight-decay"])
def test_maximize_matches_torch_optim_in_float64(name, variant):
    cls_name, torch_extra = _info(name).torch_equivalent
    shapes = [(5, 4), (4,), (2, 3, 2)]
    ours_p, theirs_p = _float64_params(shapes), _float64_params(shapes)
    ours = optfit.create_optimizer([{"params": ours_p[:2]}, {"params": ours_p[2:], "lr": 0.003}], name,
                                   maximize=True, **variant)
    theirs = getattr(torch.optim, cls_name)([{"params": theirs_p[:2]}, {"params": theirs_p[2:], "lr": 0.003}],
                                            **_torch_kwargs(ours, cls_name, {**torch_extra, "maximize": True}))
    for grads in _stream(shapes, 60):
        for ps, opt in ((ours_p, ours), (theirs_p, theirs)):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
        for a, b in zip(ours_p, theirs_p):  # every step's parameters, not only the last
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------- 3. LR schedulers
@pytest.mark.parametrize("name", NAMES)
def test_initial_lr_is_left_to_lr_schedulers(name):
    model = TinyNet()
    opt = build(name, model)
    assert all("initial_lr" not in g for g in opt.param_groups)
    for g in opt.param_groups:
        g["lr"] = 0.5 * g["lr"]  # changed before the scheduler exists: the scheduler must start from it
    wanted = [g["lr"] for g in opt.param_groups]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    assert [g["lr"] for g in opt.param_groups] == wanted
    assert [g["initial_lr"] for g in opt.param_groups] == wanted == sched.base_lrs
    run(model, opt, 2)


def _claims_momentum(name):
    info = _info(name)
    return info.has_betas or info.has_momentum


@pytest.mark.parametrize("name", NAMES)
def test_cycle_momentum_works_where_the_record_claims_betas_or_momentum(name):
    """The record's has_betas/has_momentum say exactly whether torch's CyclicLR/OneCycleLR can cycle a momentum
    (a ``betas`` or ``momentum`` hyperparameter); where they can, the cycled value must change the steps."""
    model = TinyNet()
    opt = build(name, model)
    cyclable = "betas" in opt.defaults or "momentum" in opt.defaults
    assert cyclable == _claims_momentum(name), (name, sorted(opt.defaults))
    if not cyclable:
        with pytest.raises(ValueError, match="momentum"):
            torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.01, total_steps=10, cycle_momentum=True)
        return
    max_lrs = [g["lr"] for g in opt.param_groups]
    runs = []
    for cycle in (True, False):
        m = TinyNet()
        o = build(name, m)
        sched = torch.optim.lr_scheduler.OneCycleLR(o, max_lr=max_lrs, total_steps=12, cycle_momentum=cycle,
                                                    base_momentum=0.5, max_momentum=0.8)
        closure = closure_for(m, o)
        for _ in range(10):
            o.step(closure)
            sched.step()
        runs.append(m)
    assert any(not torch.equal(p, q) for p, q in zip(runs[0].parameters(), runs[1].parameters())), \
        "the cycled momentum had no effect on the steps"


# ------------------------------------------------------------------------------------------ 4. tensor lr
@pytest.mark.parametrize("name", NAMES)
def test_tensor_lr_steps_like_the_float_lr(name):
    plain, tensor = TinyNet(), TinyNet()
    opt_plain, opt_tensor = build(name, plain), build(name, tensor)
    for g in opt_tensor.param_groups:
        g["lr"] = torch.tensor(g["lr"], dtype=torch.float64)
    run(plain, opt_plain, 3)
    run(tensor, opt_tensor, 3)
    for p, q in zip(plain.parameters(), tensor.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------- 5. deepcopy and pickle
@pytest.mark.parametrize("name", NAMES)
def test_deepcopy_and_pickle_give_optimizers_that_step_like_the_original(name):
    model = TinyNet()
    opt = build(name, model)
    run(model, opt, 3)
    copies = [copy.deepcopy((model, opt)), pickle.loads(pickle.dumps((model, opt)))]

    def names(o):  # the parameter names of error messages, in parameter order
        table = getattr(o, "_param_names", None)
        return table and [table.get(id(p)) for g in o.param_groups for p in g["params"]]

    for m, o in copies:
        assert type(o) is type(opt) and o.__dict__.keys() >= {k for k in opt.__dict__ if not k.startswith(
            "_optimizer_")}
        assert names(o) == names(opt)
    run(model, opt, 3)
    reference = opt.state_dict()
    for m, o in copies:
        run(m, o, 3)
        _params_equal(model, m)
        mine = o.state_dict()
        for k, st in reference["state"].items():
            for key, v in st.items():
                if isinstance(v, torch.Tensor):
                    assert torch.equal(v, mine["state"][k][key]), (k, key)


# ------------------------------------------------------------------------------------------------ 6. hooks
@pytest.mark.parametrize("name", NAMES)
def test_hooks_fire_once_per_call(name):
    model = TinyNet()
    opt = build(name, model)
    calls = {}

    def count(key):
        def hook(*args):
            calls[key] = calls.get(key, 0) + 1
        return hook

    handles = [opt.register_step_pre_hook(count("pre")), opt.register_step_post_hook(count("post")),
               register_optimizer_step_pre_hook(count("global_pre")),
               register_optimizer_step_post_hook(count("global_post")),
               opt.register_state_dict_pre_hook(count("sd_pre")), opt.register_state_dict_post_hook(count("sd_post")),
               opt.register_load_state_dict_pre_hook(count("load_pre")),
               opt.register_load_state_dict_post_hook(count("load_post"))]
    try:
        run(model, opt, 5)  # past the warm-up of the test settings (FOSI: its first Hessian step is the 4th)
        opt.load_state_dict(opt.state_dict())
    finally:
        for h in handles:
            h.remove()
    assert calls == {"pre": 5, "post": 5, "global_pre": 5, "global_post": 5, "sd_pre": 1, "sd_post": 1,
                     "load_pre": 1, "load_post": 1}


# ------------------------------------------------------------------------ 7. whose state dict is it?
def _torch_state_dict(model, opt, cls_name, steps=2, **kwargs):
    """torch.optim's ``cls_name`` on a copy of ``model``, grouped like ``opt``, after ``steps`` steps."""
    twin = _twin(model)
    position = {id(p): i for i, p in enumerate(model.parameters())}
    twin_params = list(twin.parameters())
    groups = [{"params": [twin_params[position[id(p)]] for p in g["params"]]} for g in opt.param_groups]
    theirs = getattr(torch.optim, cls_name)(groups, **kwargs)
    run(twin, theirs, steps)
    return theirs.state_dict()


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_names_its_writer_and_other_optimizers_refuse_it(name):
    model = TinyNet()
    opt = build(name, model)
    run(model, opt, 2)
    sd = opt.state_dict()
    assert sd["optfit"]["optimizer"] == type(opt).__name__
    other = "sgd" if type(opt).__name__ != "SGD" else "adamw"
    with pytest.raises(ValueError, match=type(opt).__name__):
        build(other, TinyNet()).load_state_dict(sd)
    forged = {**sd, "optfit": {**sd["optfit"], "optimizer": "SomeOtherOptimizer"}}
    with pytest.raises(ValueError, match="written by SomeOtherOptimizer"):
        build(name, TinyNet()).load_state_dict(forged)


@pytest.mark.parametrize("name", NAMES)
def test_torch_adamw_checkpoint_loads_only_into_adam_and_adamw(name):
    model = TinyNet()
    opt = build(name, model)
    sd = _torch_state_dict(model, opt, "AdamW", weight_decay=0.05)
    if type(opt) in (optfit.optim.Adam, optfit.optim.AdamW):
        opt.load_state_dict(sd)
        assert all(g["decay_mode"] == "decoupled" and "foreach" not in g for g in opt.param_groups)
        run(model, opt, 1)
        return
    with pytest.raises(ValueError, match="no 'optfit'"):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("cls_name, variant", [
    ("AdamW", {}), ("AdamW", {"weight_decay": 0.1, "amsgrad": True}), ("Adam", {}),
    ("Adam", {"weight_decay": 0.1, "betas": (0.8, 0.95)}),
    ("Adam", {"decoupled_weight_decay": True, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05}), ("SGD", {"lr": 0.02, "momentum": 0.9, "nesterov": True, "weight_decay": 0.1}),
    ("SGD", {"lr": 0.05, "momentum": 0.5, "dampening": 0.3}), ("RMSprop", {}),
    ("RMSprop", {"momentum": 0.9, "centered": True, "weight_decay": 0.1}), ("Adagrad", {}),
    ("Adagrad", {"lr_decay": 0.01, "initial_accumulator_value": 0.5}), ("NAdam", {}),
    ("NAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}), ("RAdam", {}),
    ("RAdam", {"decoupled_weight_decay": True, "weight_decay": 0.1}), ("Adam", {"maximize": True}),
])
def test_torch_optim_checkpoint_resumes_in_optfit_exactly_as_torch(cls_name, variant):
    """torch.optim's checkpoint after 20 steps, loaded into optfit's class of the same maths built with its
    defaults: the next 40 steps follow torch's, step for step (float64; two param groups)."""
    shapes = [(5, 4), (4,), (2, 3, 2)]
    theirs_p = _float64_params(shapes)
    cls = getattr(torch.optim, cls_name)
    theirs = cls([{"params": theirs_p[:2]}, {"params": theirs_p[2:], "lr": 0.003}], **variant)
    stream = _stream(shapes, 60)

    def feed(opt, ps, grads):
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opt.step()

    for grads in stream[:20]:
        feed(theirs, theirs_p, grads)
    buf = io.BytesIO()
    torch.save(theirs.state_dict(), buf)
    ours_p = [p.detach().clone().requires_grad_() for p in theirs_p]
    ours = optfit.create_optimizer([{"params": ours_p[:2]}, {"params": ours_p[2:]}], TORCH_CLASSES[cls_name])
    buf.seek(0)
    ours.load_state_dict(torch.load(buf, weights_only=True))
    for t, grads in enumerate(stream[20:]):
        feed(theirs, theirs_p, grads)
        feed(ours, ours_p, grads)
        for a, b in zip(ours_p, theirs_p):
            torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-10, atol=1e-12, msg=f"step {21 + t}")
    assert ours.state_dict()["optfit"]["optimizer"] == type(ours).__name__


@pytest.mark.parametrize("cls_name, name", [("AdamW", "lion"), ("AdamW", "sgd"), ("AdamW", "gap-adamw"),
                                             ("AdamW", "nadam"), ("Adam", "radam"), ("RAdam", "adam"),
                                             ("SGD", "adamw"), ("Adagrad", "adadagrad")])
def test_torch_optim_checkpoint_of_other_maths_is_refused(cls_name, name):
    model = TinyNet()
    opt = build(name, model)
    with pytest.raises(ValueError, match=f"not {type(opt).__name__}'s|does not keep"):
        opt.load_state_dict(_torch_state_dict(model, opt, cls_name, momentum=0.9) if cls_name == "SGD"
                            else _torch_state_dict(model, opt, cls_name))


def test_checkpoint_from_before_lr0_keeps_its_initial_lr_as_the_independent_decay_reference():
    model = TinyNet()
    opt = build("adamw", model, decay_mode="independent", lr=0.01)
    run(model, opt, 2)
    sd = opt.state_dict()
    for g in sd["param_groups"]:  # what optfit wrote before "_lr0": initial_lr preset to the group's lr
        g["initial_lr"] = g.pop("_lr0")
        g["lr"] = 0.5 * g["initial_lr"]
    del sd["optfit"]["optimizer"]
    opt2 = build("adamw", _twin(model), decay_mode="independent", lr=0.3)
    opt2.load_state_dict(sd)
    assert [g["_lr0"] for g in opt2.param_groups] == [0.01] * len(opt2.param_groups)


# ---------------------------------------------------------------------------------------- 8. input checks
@pytest.mark.parametrize("name", NAMES)
def test_malformed_betas_and_state_dicts_raise_errors_naming_the_argument(name):
    info = _info(name)
    betas = info.defaults.get("betas")
    if isinstance(betas, tuple) and "betas" not in info.preset:
        for bad, got in (((0.9,), 1), (betas + (0.5,), len(betas) + 1), ("0.9,0.99", "str"), (0.9, "float")):
            with pytest.raises(ValueError, match=rf"betas.*expected a tuple of {len(betas)} numbers.*got {got}\b"):
                optfit.create_optimizer(TinyNet(), name, betas=bad)
    opt = build(name, TinyNet())
    for bad in ([1, 2, 3], None, "state"):
        with pytest.raises(TypeError, match="load_state_dict"):
            opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="load_state_dict"):
        opt.load_state_dict({"state": {}})


def test_torch_optim_checkpoint_with_state_this_optimizer_does_not_keep_is_refused():
    model = TinyNet()
    opt = build("adam", model)
    sd = _torch_state_dict(model, opt, "Adam")
    sd["state"][0]["exotic"] = torch.zeros(3)  # e.g. a library's Adam variant under torch's group keys
    with pytest.raises(ValueError, match=r"\['exotic'\], which Adam does not keep"):
        opt.load_state_dict(sd)
