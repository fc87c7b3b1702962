"""gap-adamw-beta2: exact reduction to torch AdamW, and what the update-energy score prefers on synthetic streams,
checked against the score's expectation derived below.

The score of candidate j on a tensor of N coordinates is J_j = ⟨g, u_j⟩/rms(u_j) ≈ N·E[g u_j]/√E[u_j²], u_j = m̂/d_j.
Streams: every coordinate has a fixed signal μ_i = ±μ and noise σ_{i,t}ξ_{i,t}.

1. **Drifting noise variance** (σ switches between σ_lo and σ_hi, each coordinate independently, mean dwell 1/p ≫
   the short memory 1/(1−0.95), ≪ the long one). Ideal limits: the short memory tracks, d_i² = μ² + σ_{i,t}², the long
   one averages, d² = μ² + mean σ² (uniform). With κ = Σa_k² = (1−β₁)/(1+β₁) (noise left in m̂) and a_0 = 1−β₁
   (weight of g_t in m̂), averaging over the two regimes r:
     next:    J ∝ μ²·E_r[1/d_r] / √E_r[(μ² + κσ_r²)/d_r²]
     current: J ∝ E_r[(μ² + a_0σ_r²)/d_r] / √E_r[(μ² + κσ_r²)/d_r²]
   (the current score also gets the batch's own noise a_0σ², which it collects best by *not* down-weighting noisy
   coordinates). Real memories lie between the ideal limits, so the measured J(0.95)/J(0.999) lies between 1 and
   the ideal ratio.
2. **Stationary noise** (σ fixed; Gaussian or heavy-tailed with kurtosis κ₄): every memory has the same limit d, so
   the differences come from v̂ sharing samples with g and m̂. Expanding v̂^{−1/2} to first order in 1−β₂ (with
   c₁ = Σa_k b_k, c₂ = Σa_k² b_k, ε₂ = Σb_k², b_k = (1−β₂)β₂^k, V = μ² + σ², W = Var(g²)/V²) gives ``_first_order``
   below: the current score loses σ²-weighted terms in b_0 (g_t enters its own preconditioner), the next score gains
   from down-weighting coordinates whose m̂ is currently noise-dominated (a κ₄ term). Prediction: current → long
   memory, next → short memory, heavier tails strengthen both.
3. **Drifting scale of the whole gradient** (signal and noise together, g = s_{i,t}(μ_i + σξ)): the SNR-optimal weight
   E[g m̂]/E[m̂²] is the same for every coordinate, so the most uniform d wins: the longest memory (ideal next-score
   ratio E[s]/√E[s²]). Under this budget, tracking a drifting scale is not rewarded.
"""

from __future__ import annotations

import math

import pytest
import torch

import optfit
from optfit.gap import GapAdamWBeta2

from .trajectories import _grads, _run, resume_and_compare

B1 = 0.9
CANDS = (0.95, 0.99, 0.999)


# ---------------------------------------------------------------------------------------- exact reductions
@pytest.mark.parametrize("beta2", [0.99, 0.999])
def test_one_candidate_is_torch_adamw(beta2):
    grads = _grads(30)
    ours, _ = _run(lambda ps: GapAdamWBeta2(ps, lr=0.01, beta2_candidates=(beta2,), beta1=0.8, eps=1e-6,
                                            weight_decay=0.1), grads)
    ref, _ = _run(lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, beta2), eps=1e-6, weight_decay=0.1), grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("mode,score", [("global", "current"), ("per_param", "next")])
def test_a_held_candidate_follows_that_fixed_beta2_exactly(mode, score):
    grads = _grads(25)
    ours, opt = _run(lambda ps: GapAdamWBeta2(ps, lr=0.01, initial=0.95, hysteresis=10**6, mode=mode, score=score),
                     grads)
    ref, _ = _run(lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.9, 0.95), weight_decay=0.01), grads)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert opt.selection() == [[0.95] * 3] and opt.gap_stats()[0]["fraction"] == [1.0, 0.0, 0.0]


def test_score_is_alignment_per_unit_rms_hand_computed():
    """One step, one tensor: J_j = ⟨g, u_j⟩/rms(u_j) with u_j = m̂/(√v̂_j + ε)."""
    gen = torch.Generator().manual_seed(4)
    p = torch.zeros(7, dtype=torch.float64, requires_grad=True)
    opt = GapAdamWBeta2([p], lr=0.0, hysteresis=0, score="current", score_ema=0.0)
    g1, g2 = torch.randn(7, generator=gen, dtype=torch.float64), torch.randn(7, generator=gen, dtype=torch.float64)
    for g in (g1, g2):
        p.grad = g
        opt.step()
    m = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.81)
    want = []
    for b in CANDS:
        v = (b * (1 - b) * g1 ** 2 + (1 - b) * g2 ** 2) / (1 - b ** 2)
        u = m / (v.sqrt() + 1e-8)
        want.append(float(g2 @ u / u.pow(2).mean().sqrt()))
    assert opt.gap_stats()[0]["scores"] == pytest.approx(want, rel=1e-12)


# ------------------------------------------------------------------------------------------------ streams
N = 4096


class NoiseStream:
    """g_i = μ_i + s_i·σ_i·ξ_i (see the module docstring). ``drift``: σ_i switches lo ↔ hi with probability p per
    step (else σ_i = ``sigma``); ``scale``: s_i switches lo ↔ hi instead (σ_i = ``sigma``); ``tail``: ξ is a
    contaminated normal, ×k with probability q (kurtosis 3(qk⁴ + 1 − q)/(qk² + 1 − q)², unit variance)."""

    def __init__(self, seed, mu=1.0, sigma=10.0, drift=None, scale=None, p=1 / 300, tail=None):
        self.gen = torch.Generator().manual_seed(seed)
        self.mu = mu * torch.where(self._rand() < 0.5, -1.0, 1.0)
        self.sigma, self.drift, self.scale, self.p, self.tail = sigma, drift, scale, p, tail
        self.state = self._rand() < 0.5

    def _rand(self):
        return torch.rand(N, generator=self.gen, dtype=torch.float64)

    def next(self):
        self.state ^= self._rand() < self.p
        xi = torch.randn(N, generator=self.gen, dtype=torch.float64)
        if self.tail is not None:
            q, k = self.tail
            xi = xi * torch.where(self._rand() < q, k, 1.0) / math.sqrt(q * k * k + 1 - q)
        sigma = torch.where(self.state, *self.drift) if self.drift else self.sigma
        s = torch.where(self.state, *self.scale) if self.scale else 1.0
        return s * (self.mu + sigma * xi)


def _race(stream, steps, cands=CANDS, **variants):
    """Run one gap-adamw-beta2 per variant (name → options) on the same gradients; return name → optimizer."""
    opts = {}
    params = {}
    for name, kw in variants.items():
        params[name] = torch.zeros(N, requires_grad=True)
        opts[name] = GapAdamWBeta2([params[name]], lr=0.0, weight_decay=0.0, beta2_candidates=cands,
                                   **{"score": "current", "score_ema": 0.99, "hysteresis": 20, **kw})
    for _ in range(steps):
        g = stream.next().float()
        for name in variants:
            params[name].grad = g
            opts[name].step()
    return opts


def _scores(opt):
    return opt.gap_stats()[0]["scores"]


# ------------------------------------------------------------------------------------------- expectations
def _ideal_ratio(score, mu, sigmas, b1=B1):
    """J(tracking d)/J(averaging d) on the drifting-noise stream (regimes equally likely)."""
    kappa, a0 = (1 - b1) / (1 + b1), 1 - b1
    mean = lambda f: sum(f(s) for s in sigmas) / len(sigmas)  # noqa: E731
    d = lambda s: math.sqrt(mu * mu + s * s)  # noqa: E731
    den_track = math.sqrt(mean(lambda s: (mu * mu + kappa * s * s) / d(s) ** 2))
    big = math.sqrt(mu * mu + mean(lambda s: s * s))
    den_avg = math.sqrt(mean(lambda s: mu * mu + kappa * s * s)) / big
    if score == "next":
        return (mu * mu * mean(lambda s: 1 / d(s)) / den_track) / (mu * mu / big / den_avg)
    return (mean(lambda s: (mu * mu + a0 * s * s) / d(s)) / den_track) / ((mu * mu + a0 * mean(lambda s: s * s)) / big
                                                                       / den_avg)


def _first_order(score, b2, mu, sigma, kurt, b1=B1):
    """J(β₂)/J(β₂ → 1) on a stationary stream, to first order in 1 − β₂ (module docstring, item 2)."""
    a0, kappa = 1 - b1, (1 - b1) / (1 + b1)
    b0, eps2 = 1 - b2, (1 - b2) / (1 + b2)
    c1 = (1 - b1) * (1 - b2) / (1 - b1 * b2)
    c2 = (1 - b1) ** 2 * (1 - b2) / (1 - b1 * b1 * b2)
    m2, s2 = mu * mu, sigma * sigma
    v = m2 + s2
    w = (4 * m2 * s2 + (kurt - 1) * s2 * s2) / v ** 2
    gain = (4 * m2 * s2 * c1 + s2 * s2 * (kurt - 1) * c2) / (2 * v * (m2 + s2 * kappa)) - eps2 * w / 8
    if score == "next":
        return 1 - s2 * c1 / v + gain
    return 1 - (2 * m2 * s2 * (b0 + c1) + s2 * s2 * a0 * b0 * (kurt - 1)) / (2 * v * (m2 + s2 * a0)) + gain


def test_first_order_expansion_matches_a_direct_monte_carlo():
    """The expansion against E[g u]/√E[u²] estimated directly (no optimizer, no selector) on a stationary Gaussian
    stream: the exact m̂ and v̂ (β₂ 0.95) of every step, against the long limit d = √V, 5 M samples."""
    gen = torch.Generator().manual_seed(0)
    mu, sigma, n = 1.0, 10.0, 20000
    m = torch.zeros(n, dtype=torch.float64)
    v = torch.zeros(n, dtype=torch.float64)
    sums = {k: 0.0 for k in ("cur_s", "cur_l", "next_s", "next_l", "uu_s", "uu_l")}
    prev = None
    for t in range(1, 301):
        g = mu * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double() + sigma * torch.randn(n, generator=gen,
                                                                                                 dtype=torch.float64)
        if prev is not None and t > 50:
            sums["next_s"] += float(g @ prev[0])
            sums["next_l"] += float(g @ prev[1])
        m = B1 * m + (1 - B1) * g
        v = 0.95 * v + 0.05 * g * g
        u_s = m / (1 - B1 ** t) / (v / (1 - 0.95 ** t)).sqrt()
        u_l = m / (1 - B1 ** t) / math.sqrt(mu * mu + sigma * sigma)
        prev = (u_s, u_l)
        if t > 50:
            sums["cur_s"] += float(g @ u_s)
            sums["cur_l"] += float(g @ u_l)
            sums["uu_s"] += float(u_s @ u_s)
            sums["uu_l"] += float(u_l @ u_l)
    norm = math.sqrt(sums["uu_l"] / sums["uu_s"])
    for score, key in (("current", "cur"), ("next", "next")):
        measured = sums[key + "_s"] / sums[key + "_l"] * norm
        assert measured == pytest.approx(_first_order(score, 0.95, mu, sigma, 3.0), abs=1.5e-3), score


# --------------------------------------------------------------------------------------------- the choices
def test_drifting_noise_variance_next_score_prefers_short_memory():
    """Stream 1 (μ 1, σ 0.5 ↔ 10, dwell 300 steps): ideal J(0.95)/J(0.999) = 1.43 for the next score (short memory)
    and 0.48 for the current score (long memory); the measured ratios lie between 1 and those, at least halfway."""
    ideal = {s: _ideal_ratio(s, 1.0, (0.5, 10.0)) for s in ("next", "current")}
    assert ideal["next"] > 1.3 and ideal["current"] < 0.6
    opts = _race(NoiseStream(1, drift=(0.5, 10.0)), 800, next={"score": "next"}, current={})
    assert opts["next"].selection() == [[0.95]] and opts["current"].selection() == [[0.999]]
    for name, opt in opts.items():
        s = _scores(opt)
        assert s[0] > s[1] > s[2] if name == "next" else s[0] < s[1] < s[2], (name, s)
        measured = math.log(s[0] / s[2])
        assert 0.5 * abs(math.log(ideal[name])) < abs(measured) <= abs(math.log(ideal[name])) * 1.02, (name, s)
        assert opt.gap_stats()[0]["fraction"][0 if name == "next" else 2] > 0.8


@pytest.mark.parametrize("tail,kurt", [(None, 3.0), ((0.05, 4.0), 13.5)])
def test_stationary_noise_current_prefers_long_memory(tail, kurt):
    """Stream 2 (μ 1, σ 10). Current score: the first-order expectation predicts the order of the three scores and,
    for Gaussian noise, their ratios (J(0.95)/J(0.999) = 0.986 predicted, 0.9875 measured over 8 seeds ± 0.0001).
    Next score: the first-order gain of the short memory is only +0.46 % for Gaussian noise — inside the score's
    noise at this run length (measured 0.0 – 0.5 %), so only near-indifference is asserted; with heavy tails
    (kurtosis 13.5) the κ₄ term makes it a clear short-memory preference (+7 %, every seed)."""
    opts = _race(NoiseStream(2, tail=tail), 800, next={"score": "next"}, current={})
    s = _scores(opts["current"])
    pred = [_first_order("current", b, 1.0, 10.0, kurt) for b in CANDS]
    assert s[0] < s[1] < s[2] and pred[0] < pred[1] < pred[2], (s, pred)
    assert opts["current"].selection() == [[0.999]]
    s_next = _scores(opts["next"])
    if tail is None:
        for j in (0, 1):
            assert s[j] / s[2] == pytest.approx(pred[j] / pred[2], abs=2.5e-3), (j, s, pred)
        assert abs(s_next[0] / s_next[2] - 1) < 0.01, s_next
    else:
        pred_next = [_first_order("next", b, 1.0, 10.0, kurt) for b in CANDS]
        assert s_next[0] > s_next[1] > s_next[2] and pred_next[0] > pred_next[1] > pred_next[2], (s_next, pred_next)
        assert opts["next"].selection() == [[0.95]]


def test_drifting_scale_prefers_the_most_uniform_preconditioner():
    """Stream 3 (scale 0.5 ↔ 10 on signal and noise): the ideal next-score ratio short/long is E[s]/√E[s²] = 0.74,
    so the rule keeps the long memory — with either score."""
    assert (0.5 + 10) / 2 / math.sqrt((0.25 + 100) / 2) == pytest.approx(0.7415, abs=1e-4)
    opts = _race(NoiseStream(3, scale=(0.5, 10.0)), 800, cands=(0.95, 0.999), next={"score": "next"}, current={})
    for opt in opts.values():
        s = _scores(opt)
        assert opt.selection() == [[0.999]] and s[0] < s[1], s


# ----------------------------------------------------------------------------------- introspection, resume
@pytest.mark.parametrize("mode,score", [("global", "current"), ("per_param", "next")])
def test_resume_mid_hysteresis_is_bit_exact(mode, score):
    resume_and_compare(lambda ps: GapAdamWBeta2(ps, lr=0.01, mode=mode, score=score, hysteresis=5, score_ema=0.5))


def test_selection_gap_stats_and_state_layout():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    opt = optfit.create_optimizer(model, "gap-adamw-beta2", lr=0.01)
    assert opt.selection()[0][0] == 0.999  # nearest AdamW's β₂ before the first step
    x = torch.randn(8, 4)
    for _ in range(3):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    st = opt.state[model[0].weight]
    assert st["exp_avg_sqs"].shape == (3, 3, 4) and st["exp_avg"].shape == (3, 4)
    stats = opt.gap_stats()
    assert stats[0]["candidates"] == list(CANDS) and abs(sum(stats[0]["fraction"]) - 1) < 1e-12


@pytest.mark.parametrize("kw,match", [({"beta2_candidates": (0.9, 1.0)}, "beta2_candidates"),
                                      ({"beta2_candidates": ()}, "beta2_candidates"),
                                      ({"beta2_candidates": (0.99, 0.99)}, "beta2_candidates"),
                                      ({"beta1": 1.0}, "beta1"), ({"eps": -1.0}, "eps"), ({"initial": 0.5}, "initial"),
                                      ({"score": "future"}, "score"), ({"mode": "layer"}, "mode")])
def test_bad_options_name_the_argument(kw, match):
    with pytest.raises(ValueError, match=match):
        GapAdamWBeta2([torch.zeros(2, requires_grad=True)], **kw)
