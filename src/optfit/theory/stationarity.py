"""Has a stochastic optimizer's iterate stopped making progress at its current step size? A one-run test from the
fluctuation–dissipation relation of the iterates (Yaida, arXiv 1810.00004; used to schedule SGD by Lang, Zhang &
Xiao, "Using Statistics to Automate Stochastic Optimization", arXiv 1909.09785).

The relation, derived here for an EMA first moment and a (slowly varying) diagonal preconditioner P, which is
Adam's step: with

    m_t = β m_{t−1} + (1−β) g_t ,   x_{t+1} = x_t − s_t ,   s_t = η P m_t ,

stationarity of E‖x_t − c‖²_{P⁻¹} for a fixed point c gives E⟨x_t − c, m_t⟩ = ½E⟨m_t, s_t⟩; unrolling m_t once
turns it into a statement about the gradient:

    E⟨g_t, x_t − c⟩ = (1+β) / (2(1−β)) · E⟨m_t, s_t⟩ .

While the iterate still descends, the left side is far below the right (the gradient points back along the path:
⟨g_t, x_t − x₀⟩ < 0 for c = x₀); at stationarity the two agree. ``fdr_statistic`` is the difference Δ_t (its
mean is 0 at stationarity, negative before), and ``StationarityTest`` decides from the samples since its last
reset whether E[Δ] = 0 can still be rejected in favour of E[Δ] < 0 — i.e. whether the run still progresses at this
step size. Checked numerically in tests/theory/test_stationarity.py (a noisy quadratic at a fixed step: the two
sides agree to a few per cent; during the descent Δ is far below 0).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any

__all__ = ["fdr_statistic", "StationarityTest"]


def fdr_statistic(grad_dot_displacement: float, momentum_dot_step: float, beta: float) -> float:
    """Δ_t = ⟨g_t, x_t − c⟩ − (1+β)/(2(1−β))·⟨m_t, s_t⟩ (module docstring); 0 in mean at stationarity."""
    return grad_dot_displacement - (1.0 + beta) / (2.0 * (1.0 - beta)) * momentum_dot_step


class StationarityTest:
    """A streaming one-sided test of "E[Δ] < 0" on the samples since the last ``reset``.

    It looks at the most recent half of those samples (the earlier half holds the transient after the last change of
    step size) and estimates the standard error of their mean by batch means (≈√n batches of ≈√n consecutive
    samples, which absorbs the samples' autocorrelation). ``stationary()`` is True when the mean is not significantly
    below 0 at ``confidence`` (mean + z·se ≥ 0, z the normal quantile), once at least ``min_samples`` samples are in.

    Memory is bounded: samples are kept as block sums, adjacent blocks merge in pairs when ``2·max_blocks``
    full blocks are held, so a block holds 2^j samples. ``state()`` / ``from_state`` give a JSON-able copy for
    checkpoints (exact floats: a resumed run decides exactly as the uninterrupted one).
    """

    def __init__(self, confidence: float = 0.95, min_samples: int = 32, max_blocks: int = 64) -> None:
        if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0.5 < confidence < 1:
            raise ValueError(f"Invalid confidence: {confidence!r} (must be in (0.5, 1))")
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 4:
            raise ValueError(f"Invalid min_samples: {min_samples!r} (must be an integer >= 4)")
        if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 4:
            raise ValueError(f"Invalid max_blocks: {max_blocks!r} (must be an integer >= 4)")
        self.confidence, self.min_samples, self.max_blocks = float(confidence), min_samples, max_blocks
        self.z = NormalDist().inv_cdf(self.confidence)
        self.reset()

    def reset(self) -> None:
        self.sums: list[float] = []
        self.block = 1  # samples per block of ``sums`` (the last block may hold fewer)
        self.filled = 0  # samples in the last block
        self.n = 0

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            raise ValueError(f"StationarityTest.add: non-finite sample {value!r}")
        if self.filled == 0 or self.filled == self.block:
            self.sums.append(0.0)
            self.filled = 0
        self.sums[-1] += value
        self.filled += 1
        self.n += 1
        if len(self.sums) == 2 * self.max_blocks and self.filled == self.block:
            self.sums = [self.sums[i] + self.sums[i + 1] for i in range(0, len(self.sums), 2)]
            self.block *= 2
            self.filled = self.block

    def summary(self) -> dict[str, float]:
        """``mean`` and ``se`` of the recent half and its sample count ``n`` (nan before two batches)."""
        counts = [self.block] * len(self.sums)
        if counts:
            counts[-1] = self.filled
        # the most recent half, in whole blocks
        take, total = 0, 0
        while take < len(counts) and total < self.n / 2:
            take += 1
            total += counts[-take]
        sums, cnts = self.sums[len(self.sums) - take:], counts[len(counts) - take:]
        batches = max(2, min(len(sums), math.isqrt(max(total, 1))))
        if len(sums) < 2:
            return {"mean": math.nan, "se": math.nan, "n": float(total)}
        edges = [round(i * len(sums) / batches) for i in range(batches + 1)]
        means = []
        for lo, hi in zip(edges, edges[1:]):
            if hi > lo:
                means.append(sum(sums[lo:hi]) / sum(cnts[lo:hi]))
        mean = sum(sums) / total
        if len(means) < 2:
            return {"mean": mean, "se": math.nan, "n": float(total)}
        mu = sum(means) / len(means)
        var = sum((x - mu) ** 2 for x in means) / (len(means) - 1)
        return {"mean": mean, "se": math.sqrt(var / len(means)), "n": float(total)}

    def stationary(self, at_least: int = 0) -> bool:
        """True when progress can no longer be shown: at least ``min_samples`` (and ``at_least``) samples and
        mean + z·se ≥ 0."""
        if self.n < max(self.min_samples, at_least):
            return False
        s = self.summary()
        if not math.isfinite(s["se"]):
            return False
        return s["mean"] + self.z * s["se"] >= 0.0

    def state(self) -> dict[str, Any]:
        return {"sums": list(self.sums), "block": self.block, "filled": self.filled, "n": self.n}

    def load(self, state: dict[str, Any]) -> None:
        try:
            sums = [float(x) for x in state["sums"]]
            block, filled, n = int(state["block"]), int(state["filled"]), int(state["n"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"StationarityTest.load: not a test state ({exc!r})") from exc
        if block < 1 or not 0 <= filled <= block or n < 0 or (sums and filled == 0):
            raise ValueError(f"StationarityTest.load: inconsistent state {state!r}")
        self.sums, self.block, self.filled, self.n = sums, block, filled, n
