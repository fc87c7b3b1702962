"""gap-mix: unit-RMS steps, the alignment choice between rules, inapplicable rules."""

from __future__ import annotations

import math

import pytest
import torch

from optfit.gap import GapMix


def test_one_rule_is_that_rule_at_unit_rms():
    """rules=("adam",): the step is η·u/rms(u) with u AdamW's direction m̂/(√v̂+ε) (hand-computed, 3 steps)."""
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    opt = GapMix([p], lr=0.1, rules=("adam",), weight_decay=0.0)
    m = torch.zeros(5, 4, dtype=torch.float64)
    v = torch.zeros_like(m)
    for t in range(1, 4):
        g = torch.randn(5, 4, generator=gen, dtype=torch.float64)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        u = (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        want = p.detach() - 0.1 * u / u.pow(2).mean().sqrt()
        p.grad = g
        opt.step()
        torch.testing.assert_close(p.detach(), want, rtol=1e-12, atol=1e-14)
        assert float((p.detach() - want).abs().max()) < 1e-12


def test_constant_gradient_with_uneven_magnitudes_prefers_the_momentum_direction():
    """With g constant, m ∝ g: the momentum direction has cosine 1 with g, sign(m) and Adam's (≈ sign) less."""
    p = torch.zeros(64, requires_grad=True)
    g = torch.linspace(0.1, 3.0, 64)
    opt = GapMix([p], lr=0.01, rules=("adam", "sign", "momentum"), hysteresis=2)
    for _ in range(10):
        p.grad = g.clone()
        opt.step()
    assert opt.selection() == [["momentum"]]
    scores = opt.gap_stats()[0]["scores"]
    # ⟨g, ũ⟩ = √N‖g‖ at cosine 1, seen through the score EMA (a = 0.9, started at 0, 10 steps)
    assert scores[2] == pytest.approx((1 - 0.9 ** 10) * math.sqrt(64) * float(g.norm()), rel=1e-5)


def test_orthogonal_rule_scores_minus_infinity_on_vectors_and_runs_on_matrices():
    w, b = torch.zeros(6, 4, requires_grad=True), torch.zeros(6, requires_grad=True)
    opt = GapMix([w, b], lr=0.01, rules=("orthogonal", "adam"), hysteresis=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        w.grad, b.grad = torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
        opt.step()
    assert opt.selection()[0][1] == "adam"
    assert math.isinf(opt.state[b]["gap_score"][0]) and opt.state[b]["gap_score"][0] < 0
    # a matrix's step has unit RMS × lr whichever rule ran
    before = w.detach().clone()
    w.grad, b.grad = torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    opt.step()
    step = (w.detach() - before * (1 - 0.01 * 0.01))
    assert float(step.pow(2).mean().sqrt()) == pytest.approx(0.01, rel=1e-4)


@pytest.mark.parametrize("bad", [(), ("adam", "adam"), ("adamw",), "adam"])
def test_bad_rules_name_the_argument(bad):
    with pytest.raises(ValueError, match="rules"):
        GapMix([torch.zeros(2, requires_grad=True)], rules=bad)


def test_orthogonal_alone_steps_vectors_with_adams_direction():
    b = torch.zeros(6, requires_grad=True)
    opt = GapMix([b], lr=0.01, rules=("orthogonal",), weight_decay=0.0)
    b.grad = torch.linspace(-1, 1, 6)
    opt.step()
    torch.testing.assert_close(b.detach(), -0.01 * torch.sign(torch.linspace(-1, 1, 6)) *
                               (torch.linspace(-1, 1, 6) != 0), rtol=1e-4, atol=1e-6)
