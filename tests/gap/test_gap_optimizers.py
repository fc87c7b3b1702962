"""gap-sgd / gap-adam / gap-adamw as optimizers: exact reductions to their base optimizers, introspection,
modes, resume, bad input."""

from __future__ import annotations


import pytest
import torch

import optfit
from optfit.gap import GapAdam, GapAdamW, GapSGD

from .streams import AR1Stream, feed
from .trajectories import _grads, _params, _run, resume_and_compare


@pytest.mark.parametrize("kw,torch_cls,torch_kw", [
    ({"beta1_candidates": (0.8,), "weight_decay": 0.1}, torch.optim.AdamW, {"betas": (0.8, 0.999), "weight_decay": 0.1}),
    ({"beta1_candidates": (0.9,), "beta2": 0.99, "eps": 1e-6, "weight_decay": 0.0}, torch.optim.AdamW,
     {"betas": (0.9, 0.99), "eps": 1e-6, "weight_decay": 0.0}),
])
def test_one_candidate_gap_adamw_is_adamw(kw, torch_cls, torch_kw):
    grads = _grads(30)
    ours, _ = _run(lambda ps: GapAdamW(ps, lr=0.01, **kw), grads)
    ref, _ = _run(lambda ps: torch_cls(ps, lr=0.01, **torch_kw), grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_one_candidate_gap_adam_is_adam_with_l2():
    grads = _grads(30)
    ours, _ = _run(lambda ps: GapAdam(ps, lr=0.01, beta1_candidates=(0.7,), weight_decay=0.05), grads)
    ref, _ = _run(lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.7, 0.999), weight_decay=0.05), grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nesterov", [False, True])
def test_one_candidate_gap_sgd_is_torch_sgd(nesterov):
    grads = _grads(30)
    ours, _ = _run(lambda ps: GapSGD(ps, lr=0.05, momentum_candidates=(0.9,), nesterov=nesterov,
                                     weight_decay=0.01), grads)
    ref, _ = _run(lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01), grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_a_held_candidate_follows_that_fixed_beta_exactly(mode):
    """With a hysteresis longer than the run the initial candidate is used throughout: the other buffers
    are computed but never leak into the step."""
    grads = _grads(25)
    ours, opt = _run(lambda ps: GapAdamW(ps, lr=0.01, initial=0.5, hysteresis=10**6, mode=mode), grads)
    ref, _ = _run(lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.5, 0.999), weight_decay=0.01), grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert opt.selection() == [[0.5, 0.5, 0.5]]
    assert opt.gap_stats()[0]["fraction"] == [1.0, 0.0, 0.0]


def test_a_switch_steps_with_the_new_candidates_warm_buffer():
    """Hand-check of one switched step: after a switch to β = 0.99 the step equals AdamW(β₁ = 0.99)'s step,
    whose buffer has been updated all along."""
    grads = _grads(12)
    params = _params()
    opt = GapAdamW(params, lr=0.01, beta1_candidates=(0.5, 0.99), hysteresis=0, weight_decay=0.0)
    twin = _params()
    ref = torch.optim.AdamW(twin, lr=0.01, betas=(0.99, 0.999), weight_decay=0.0)
    for gs in grads:
        before = [p.detach().clone() for p in params]
        for p, q, g in zip(params, twin, gs):
            p.grad, q.grad = g.clone(), g.clone()
            q.data.copy_(p.data)
        opt.step()
        ref.step()
        if opt.selection()[0][0] == 0.99:
            for p, q, b in zip(params, twin, before):
                torch.testing.assert_close(p.detach() - b, q.detach() - b, rtol=1e-10, atol=1e-14)
    assert opt.gap_stats()[0]["fraction"][1] > 0  # it did switch at least once


def test_per_param_mode_chooses_per_tensor():
    """Two tensors with different statistics get different choices in per_param mode, one in global mode."""
    shapes = [(4096,), (4096,)]
    fast, slow = AR1Stream(shapes[:1], 0.5, 0.0, seed=1), AR1Stream(shapes[:1], 0.99, 0.0, seed=2)

    class Both:
        def next(self, dtype):
            return fast.next(dtype) + slow.next(dtype)

    for mode, expect in [("per_param", [0.5, 0.99]), ("global", None)]:
        params = [torch.zeros(s, requires_grad=True) for s in shapes]
        opt = GapSGD(params, lr=0.0, momentum_candidates=(0.5, 0.9, 0.99), mode=mode, score_ema=0.9)
        feed(opt, params, Both(), 400)
        sel = opt.selection()[0]
        if expect:
            assert sel == expect
        else:
            assert sel[0] == sel[1]


def test_selection_and_gap_stats_shapes_with_groups():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = optfit.create_optimizer(model, "gap-adamw", lr=0.01)
    assert len(opt.param_groups) == 2  # decay and no-decay groups share the global choice
    assert opt.selection() == [[0.9, 0.9], [0.9, 0.9]]  # before the first step: the initial candidate
    x = torch.randn(8, 4)
    for _ in range(5):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    stats = opt.gap_stats()
    assert [s["candidates"] for s in stats] == [[0.5, 0.9, 0.99]] * 2
    assert all(abs(sum(s["fraction"]) - 1) < 1e-12 and len(s["scores"]) == 3 for s in stats)
    assert stats[0]["scores"] == stats[1]["scores"]  # one global score


def test_global_mode_needs_one_candidate_list():
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    opt = GapSGD([{"params": [a]}, {"params": [b], "momentum_candidates": (0.1, 0.2)}])
    a.grad, b.grad = torch.ones(3), torch.ones(3)
    with pytest.raises(ValueError, match="one momentum_candidates list"):
        opt.step()
    opt = GapSGD([{"params": [a]}, {"params": [b], "momentum_candidates": (0.1, 0.2), "mode": "per_param"}])
    opt.step()
    assert opt.selection() == [[0.9], [0.2]]


@pytest.mark.parametrize("cls,key", [(GapSGD, "momentum_candidates"), (GapAdamW, "beta1_candidates")])
@pytest.mark.parametrize("bad", [(), (0.5, 1.0), (0.5, 0.5), 0.9, (-0.1,), ("a",)])
def test_bad_candidates_name_the_argument(cls, key, bad):
    with pytest.raises(ValueError, match=key):
        cls([torch.zeros(2, requires_grad=True)], **{key: bad})


@pytest.mark.parametrize("kw,match", [({"mode": "layer"}, "mode"), ({"score": "future"}, "score"),
                                      ({"score_ema": 1.0}, "score_ema"), ({"hysteresis": -1}, "hysteresis"),
                                      ({"hysteresis": 2.5}, "hysteresis"), ({"initial": 0.7}, "initial"),
                                      ({"impl": "foreach"}, "impl"), ({"nesterov": True, "score": "next"}, "score")])
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        GapSGD([torch.zeros(2, requires_grad=True)], **kw)


@pytest.mark.parametrize("mode", ["global", "per_param"])
def test_resume_mid_hysteresis_is_bit_exact(mode):
    """The selector's running scores, challenger and streak are state: resuming mid-run changes nothing."""
    params2, opt2 = resume_and_compare(lambda ps: GapAdamW(ps, lr=0.01, mode=mode, hysteresis=5, score_ema=0.5))
    st = opt2.state[params2[0]]
    assert st["gap_score"].dtype == torch.float64 and st["gap_counts"].dtype == torch.int64


def test_summary_writer_hook_logs_selection_and_scores():
    from optfit.gap import attach_summary_writer

    class Writer:
        def __init__(self):
            self.rows = []

        def add_scalar(self, tag, value, step):
            self.rows.append((tag, value, step))

    p = torch.zeros(3, requires_grad=True)
    opt = GapSGD([p], lr=0.1)
    writer = Writer()
    handle = attach_summary_writer(opt, writer, every=2)
    for _ in range(4):
        p.grad = torch.ones(3)
        opt.step()
    tags = {t for t, _, _ in writer.rows}
    assert {"gap/group0/selected_mean", "gap/group0/score/0.9", "gap/group0/fraction/0.5"} <= tags
    assert sorted({s for _, _, s in writer.rows}) == [2, 4]
    handle.remove()
    p.grad = torch.ones(3)
    opt.step()
    assert max(s for _, _, s in writer.rows) == 4


@pytest.mark.parametrize("name, tag", [("gap-mix", "gap/group0/score/orthogonal"),
                                       ("gap-grokfast", "gap/group0/score/0.98-2")])
def test_summary_writer_handles_candidates_that_are_not_numbers(name, tag):
    from optfit.gap import attach_summary_writer

    rows = []
    writer = type("W", (), {"add_scalar": lambda self, t, v, s: rows.append(t)})()
    p = torch.zeros(4, 3, requires_grad=True)
    opt = optfit.create_optimizer([p], name)
    attach_summary_writer(opt, writer)
    p.grad = torch.ones(4, 3)
    opt.step()
    assert tag in rows and not any(t.endswith("selected_mean") for t in rows)
