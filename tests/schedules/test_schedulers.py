"""The LRScheduler classes: torch semantics, exact resumption, chaining, torch's and optfit's AdamW."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

import optfit
from optfit import schedules as S

T, W = 20, 5
FACTORIES = {  # name -> (scheduler factory, the plain function it must follow)
    "warmup_cosine": (lambda opt: S.WarmupCosine(opt, T, W, final=0.1),
                      lambda t: S.warmup_cosine(t, T, W, final=0.1)),
    "warmup_linear": (lambda opt: S.WarmupLinear(opt, T, W), lambda t: S.warmup_linear(t, T, W)),
    "wsd": (lambda opt: S.WSD(opt, T, W, decay_fraction=0.4, decay_shape="cosine"),
            lambda t: S.wsd(t, T, W, decay_fraction=0.4, decay_shape="cosine")),
    "constant": (lambda opt: S.Constant(opt, W), lambda t: S.constant(t, warmup_steps=W)),
    "refined": (lambda opt: S.Refined(opt, [3.0 / (1 + k) + 0.5 for k in range(T)], smoothing=0.2),
                lambda t: S.refined(t, T, S.refined_weights([3.0 / (1 + k) + 0.5 for k in range(T)], smoothing=0.2))),
}


def model_and_optimizer(kind: str = "torch-adamw"):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()
    if kind == "optfit-adamw":
        return model, optfit.create_optimizer(model, "adamw", lr=0.02, weight_decay=0.01)
    groups = [{"params": model[0].parameters(), "lr": 0.02}, {"params": model[2].parameters(), "lr": 0.005}]
    return model, torch.optim.AdamW(groups, weight_decay=0.01)


def train_step(model, opt, k: int) -> None:
    g = torch.Generator().manual_seed(k)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    loss = (model(x).squeeze(-1) - x.sum(-1).sin()).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def run(model, opt, sched, first: int, last: int) -> list[list[float]]:
    lrs = []
    for k in range(first, last):
        lrs.append([g["lr"] for g in opt.param_groups])
        train_step(model, opt, k)
        sched.step()
    return lrs


def flat(rows: list[list[float]]) -> list[float]:
    return [v for row in rows for v in row]


@pytest.mark.parametrize("optimizer", ["torch-adamw", "optfit-adamw"])
@pytest.mark.parametrize("name", FACTORIES)
def test_lr_is_initial_lr_times_the_multiplier(name, optimizer):
    make, fn = FACTORIES[name]
    model, opt = model_and_optimizer(optimizer)
    base = [g["lr"] for g in opt.param_groups]
    sched = make(opt)
    assert sched.base_lrs == base == [g["initial_lr"] for g in opt.param_groups] and sched.last_epoch == 0
    lrs = run(model, opt, sched, 0, T + 3)
    assert lrs == [[b * fn(t) for b in base] for t in range(T + 3)]  # exact: c = 1 when nothing else edits lr
    assert sched.last_epoch == T + 3 and sched.get_last_lr() == [g["lr"] for g in opt.param_groups]


@pytest.mark.parametrize("optimizer", ["torch-adamw", "optfit-adamw"])
def test_drives_training_exactly_like_lambda_lr(optimizer):
    make, fn = FACTORIES["warmup_cosine"]
    m1, o1 = model_and_optimizer(optimizer)
    run(m1, o1, make(o1), 0, T)
    m2, o2 = model_and_optimizer(optimizer)
    run(m2, o2, torch.optim.lr_scheduler.LambdaLR(o2, fn), 0, T)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


@pytest.mark.parametrize("load_optimizer", [True, False], ids=["optimizer+scheduler", "scheduler-only"])
@pytest.mark.parametrize("stop", [2, 14], ids=["mid-warmup", "mid-decay"])
@pytest.mark.parametrize("name", FACTORIES)
def test_resume_from_state_dict_is_exact(name, stop, load_optimizer):
    make, _ = FACTORIES[name]
    model, opt = model_and_optimizer()
    sched = make(opt)
    run(model, opt, sched, 0, stop)
    saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict()))
    expected = run(model, opt, sched, stop, T + 3)

    model2, opt2 = model_and_optimizer()  # fresh: scheduler built first, as torch recommends
    sched2 = make(opt2)
    model2.load_state_dict(saved[0])
    if load_optimizer:
        opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    assert sched2.last_epoch == stop and sched2.get_last_lr() == [g["lr"] for g in opt2.param_groups]
    assert run(model2, opt2, sched2, stop, T + 3) == expected


def test_get_lr_outside_step_warns_and_last_epoch_resumes():
    model, opt = model_and_optimizer()
    sched = S.WarmupCosine(opt, T, W)
    with pytest.warns(UserWarning, match="get_last_lr"):
        sched.get_lr()
    run(model, opt, sched, 0, 7)
    # torch's other resume path: last_epoch given to the constructor (closed form from initial_lr)
    sched2 = S.WarmupCosine(opt, T, W, last_epoch=7)
    assert sched2.get_last_lr() == [b * S.warmup_cosine(8, T, W) for b in sched.base_lrs]


def test_chains_multiplicatively_with_torch_schedulers():
    model, opt = model_and_optimizer()
    base = [g["lr"] for g in opt.param_groups]
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [S.WarmupLinear(opt, T, W), torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)])
    lrs = run(model, opt, chained, 0, T)
    expected = [[b * S.warmup_linear(t, T, W) * 0.9 ** t for b in base] for t in range(T)]
    assert flat(lrs) == pytest.approx(flat(expected), rel=1e-12)
    # built after a scheduler that already scaled the lr: the two multipliers multiply from the first step
    model, opt = model_and_optimizer()
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=4), S.WSD(opt, T, W)])
    lrs = run(model, opt, chained, 0, T)
    expected = [[b * min(1.0, 0.5 + 0.5 * t / 4) * S.wsd(t, T, W) for b in base] for t in range(T)]
    assert flat(lrs) == pytest.approx(flat(expected), rel=1e-12)
    # an outside change of the lr (here: halving it by hand) scales the rest of the schedule
    model, opt = model_and_optimizer()
    sched = S.WarmupCosine(opt, T, W)
    run(model, opt, sched, 0, 8)
    for g in opt.param_groups:
        g["lr"] *= 0.5
    lrs = run(model, opt, sched, 8, T)
    expected = [[0.5 * b * S.warmup_cosine(t, T, W) for b in base] for t in range(8, T)]
    assert flat(lrs) == pytest.approx(flat(expected), rel=1e-12)


def test_sequential_lr_restarts_from_initial_lr_at_the_milestone():
    model, opt = model_and_optimizer()
    base = [g["lr"] for g in opt.param_groups]
    first = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.25, total_iters=3)
    seq = torch.optim.lr_scheduler.SequentialLR(opt, [first, S.WarmupCosine(opt, T)], milestones=[3])
    lrs = run(model, opt, seq, 0, T + 3)
    assert lrs[3:] == [[b * S.warmup_cosine(t, T) for b in base] for t in range(T)]


def test_refined_from_recorder_and_stretched_horizon():
    model, opt = model_and_optimizer()
    recorder = S.GradNormRecorder(opt)
    for k in range(30):
        train_step(model, opt, k)
    norms = recorder.norms("l1")
    assert len(norms) == 30
    model, opt = model_and_optimizer()
    base = [g["lr"] for g in opt.param_groups]
    sched = S.Refined.from_recorder(opt, recorder, total_steps=45, norm="l1", smoothing=0.1)
    weights = S.refined_weights(norms, norm="l1", smoothing=0.1)
    assert sched.weights == weights
    lrs = run(model, opt, sched, 0, 46)
    assert lrs == [[b * S.refined(t, 45, weights) for b in base] for t in range(46)]
    assert lrs[0][0] == base[0] * weights[0] and lrs[44][0] == base[0] * weights[-1] == 0.0


@pytest.mark.parametrize("make, name", [
    (lambda o: S.WarmupCosine(o, 10, warmup_steps=10), "warmup_steps"),
    (lambda o: S.WarmupLinear(o, 0), "total_steps"),
    (lambda o: S.WSD(o, 10, decay_shape="step"), "decay_shape"),
    (lambda o: S.WSD(o, 10, decay_fraction=2.0), "decay_fraction"),
    (lambda o: S.Constant(o, warmup_steps=-2), "warmup_steps"),
    (lambda o: S.Refined(o, [1.0, 2.0, 0.0]), "norms"),
    (lambda o: S.Refined(o, [1.0, 2.0], norm="l3"), "norm"),
    (lambda o: S.Refined(o, [1.0, 2.0], smoothing=1.5), "smoothing"),
    (lambda o: S.Refined(o, [1.0, 2.0], total_steps=0), "total_steps"),
])
def test_invalid_arguments_raise_before_touching_the_optimizer(make, name):
    _, opt = model_and_optimizer()
    with pytest.raises(ValueError, match=name):
        make(opt)
    assert all("initial_lr" not in g for g in opt.param_groups)
