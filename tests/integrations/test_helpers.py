"""optfit.integrations: what a training loop must do for an optimizer, asked of the optimizer or of a wrapper."""

from __future__ import annotations

import types

import pytest
import torch

import optfit
from optfit.integrations import backward_kwargs, has_eval_mode, in_train_mode, needs_closure, unwrap


def _params():
    return [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(2))]


def _wrapped(opt):
    """Shaped like accelerate's AcceleratedOptimizer (``.optimizer``) around Lightning's (``._optimizer``)."""
    return types.SimpleNamespace(optimizer=types.SimpleNamespace(_optimizer=opt, step=opt.step), step=opt.step)


@pytest.mark.filterwarnings("ignore::optfit.optim.AdaFisherWithoutModelWarning")
@pytest.mark.parametrize("name", [n for n in optfit.list_optimizers() if not optfit.optimizer_info(n).needs_batch])
def test_the_answers_follow_the_registry(name):
    info = optfit.optimizer_info(name)
    opt = optfit.create_optimizer(_params(), name)
    assert unwrap(_wrapped(opt)) is opt
    for o in (opt, _wrapped(opt)):
        assert needs_closure(o) == info.needs_closure
        due = getattr(opt, "next_step_needs_graph", lambda: True)  # FOSI: after its warm-up
        hessian = getattr(info.cls, "needs_create_graph", False) and due()
        assert not hessian or name in ("adahessian", "fosi", "sophia", "oasis")
        assert backward_kwargs(o) == ({"create_graph": True} if hessian else {})
        assert has_eval_mode(o) == name.startswith("schedule-free")


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_backward_kwargs_follow_the_hessian_steps():
    params = _params()
    opt = optfit.create_optimizer(params, "adahessian", update_period=2)
    seen = []
    for _ in range(4):
        kw = backward_kwargs(opt)
        seen.append(kw)
        opt.zero_grad(set_to_none=True)
        loss = sum((p**2).sum() for p in params) ** 2
        loss.backward(**kw)
        opt.step()
    assert seen == [{"create_graph": True}, {}, {"create_graph": True}, {}]


def test_in_train_mode():
    opt = optfit.create_optimizer(_params(), "schedule-free-adamw")
    assert in_train_mode(opt)
    opt.eval()
    assert not in_train_mode(_wrapped(opt))
    assert in_train_mode(torch.optim.SGD(_params(), lr=0.1))  # no flag: always training weights
