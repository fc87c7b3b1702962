"""Schedule refinement (arXiv 2310.07831) against the formula written out here, and the gradient-norm recorder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optfit import schedules as S


def noisy_norms(n: int, seed: int = 0) -> list[float]:
    """A gradient-norm trace shaped like the paper's: large early, flat, rising at the end, with outliers."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n)
    base = 1 + 4 * np.exp(-25 * t) + 2 * t ** 4
    return (base * rng.lognormal(0, 0.3, n)).tolist()


def median_by_definition(x: list[float], width: int) -> list[float]:
    """Odd window centred on each step; before the start the first value, after the end the mirror image
    about the last value (x[n-2], x[n-3], ...)."""
    n, h = len(x), width // 2

    def at(j: int) -> float:
        if j < 0:
            return x[0]
        while j >= n:  # mirror about the last index, then (for pads longer than n) about the first
            j = abs(2 * (n - 1) - j)
        return x[j]

    return [sorted(at(j) for j in range(i - h, i + h + 1))[h] for i in range(n)]


def refined_by_definition(norms: list[float], power: int, smoothing: float) -> list[float]:
    n = len(norms)
    width = 2 * (int(smoothing * n) // 2) + 1
    g = median_by_definition(norms, width)
    eta = []
    for t in range(n):  # η_t = ĝ_t^-power · Σ_{p>t} ĝ_p^-power, O(n²) on purpose
        eta.append(g[t] ** -power * sum(g[p] ** -power for p in range(t + 1, n)))
    top = max(eta)
    return [e / top for e in eta]


@pytest.mark.parametrize("n, smoothing", [(200, 0.1), (97, 0.25), (50, 0.0), (12, 0.5), (2, 0.1)])
@pytest.mark.parametrize("norm, power", [("l2", 2), ("l1", 1)])
def test_refined_weights_equal_the_papers_formula(n, smoothing, norm, power):
    norms = noisy_norms(n)
    got = S.refined_weights(norms, norm=norm, smoothing=smoothing)
    assert got == pytest.approx(refined_by_definition(norms, power, smoothing), rel=1e-12, abs=1e-15)
    assert max(got) == 1.0 and got[-1] == 0.0


def test_constant_norms_refine_to_linear_decay():
    got = S.refined_weights([2.0] * 11)
    assert got == pytest.approx([1 - t / 10 for t in range(11)], abs=1e-15)


@pytest.mark.parametrize("n, smoothing", [(300, 0.1), (40, 0.3), (7, 1.0)])
def test_median_smoothing_matches_the_authors_scipy_recipe(n, smoothing):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.asarray(noisy_norms(n, seed=1))
    width = 2 * (int(smoothing * n) // 2) + 1
    pad = 2 * width
    theirs = ndimage.median_filter(np.pad(x, (0, pad), mode="reflect"), size=width, mode="nearest")[:-pad]
    np.testing.assert_array_equal(S.median_smooth(x, smoothing), theirs)
    assert S.median_smooth(x, smoothing).tolist() == median_by_definition(x.tolist(), width)


def test_refined_multiplier_interpolates_onto_another_horizon():
    weights = S.refined_weights(noisy_norms(60))
    assert [S.refined(t, 60, weights) for t in range(60)] == weights
    grid = np.linspace(0, 1, 60)
    for total in (25, 150):
        want = np.interp(np.arange(total) / (total - 1), grid, weights)
        assert [S.refined(t, total, weights) for t in range(total)] == pytest.approx(want.tolist(), abs=1e-12)
        assert S.refined(total + 3, total, weights) == 0.0


@pytest.mark.parametrize("bad, name", [([1.0], "norms"), ([1.0, float("nan"), 2.0], "norms"),
                                       ([1.0, -1.0], "norms")])
def test_refined_weights_reject_bad_norms(bad, name):
    with pytest.raises(ValueError, match=name):
        S.refined_weights(bad)
    with pytest.raises(ValueError, match="norm must"):
        S.refined_weights([1.0, 2.0], norm="linf")


# -- GradNormRecorder ------------------------------------------------------------------------------------------

def grads_by_hand(params) -> tuple[float, float]:
    flat = torch.cat([p.grad.reshape(-1).double() for p in params if p.grad is not None])
    return flat.norm(2).item(), flat.abs().sum().item()


def test_recorder_records_l2_and_l1_of_all_gradients():
    torch.manual_seed(0)
    a, b, c = (torch.nn.Parameter(torch.randn(s)) for s in ((3, 4), (5,), (2,)))
    opt = torch.optim.SGD([{"params": [a, b]}, {"params": [c], "lr": 0.01}], lr=0.1)
    rec = S.GradNormRecorder(opt)
    rec.FLUSH_EVERY = 2  # exercise the periodic read-back too
    expected = []
    for k in range(5):
        opt.zero_grad()
        ((a ** 2).sum() + (b.sin() * (k + 1)).sum() + (c if k % 2 else 0 * c).sum() * 3).backward()
        if k == 3:
            c.grad = None  # a parameter without gradient is left out
        expected.append(grads_by_hand([a, b, c]))
        opt.step()
    assert len(rec) == 5
    assert rec.norms("l2") == pytest.approx([e[0] for e in expected], rel=1e-6)
    assert rec.norms("l1") == pytest.approx([e[1] for e in expected], rel=1e-6)
    state = rec.state_dict()
    assert state == {"l2": rec.norms("l2"), "l1": rec.norms("l1")}
    rec.remove()
    opt.step()
    assert len(rec) == 5
    other = S.GradNormRecorder(torch.optim.SGD([a], lr=0.1))
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_recorder_sees_gradients_computed_by_a_closure_and_skips_empty_steps():
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0]))
    opt = torch.optim.LBFGS([w], lr=0.1, max_iter=1)
    rec = S.GradNormRecorder(opt)

    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum() / 2  # gradient = w
        loss.backward()
        return loss

    opt.step(closure)
    assert rec.norms("l2") == pytest.approx([5.0]) and rec.norms("l1") == pytest.approx([7.0])
    opt.zero_grad()
    opt.step(lambda: torch.zeros(()))  # no gradient at all: recorded as 0, left out by default
    assert rec.norms("l2", finite_only=False)[-1] == 0.0 and len(rec.norms("l2")) == 1
    opt.step(lambda: setattr(w, "grad", torch.tensor([float("nan"), 1.0])) or torch.zeros(()))
    assert math.isnan(rec.norms("l2", finite_only=False)[-1]) and len(rec.norms("l2")) == 1


def test_recorder_handles_complex_sparse_and_bf16_gradients():
    z = torch.nn.Parameter(torch.tensor([3 + 4j, 0j]))
    e = torch.nn.Embedding(5, 2, sparse=True)
    h = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    opt = torch.optim.SGD([z, h, *e.parameters()], lr=0.0)
    rec = S.GradNormRecorder(opt)
    z.grad = torch.tensor([3 + 4j, 0j])
    h.grad = torch.full((4,), 2.0, dtype=torch.bfloat16)
    e(torch.tensor([1, 1])).sum().backward()  # sparse gradient with a repeated row: ones(2) twice -> 2s
    opt.step()
    dense = torch.cat([torch.tensor([5.0, 0.0]), torch.full((4,), 2.0), torch.full((2,), 2.0)])
    assert rec.norms("l2") == pytest.approx([dense.norm().item()])
    assert rec.norms("l1") == pytest.approx([dense.sum().item()])
