"""Synthetic gradient streams with known autocorrelation R(k) = s²δ_k + c·ρ^k (the method note's oracle)."""

from __future__ import annotations

import math

import torch


class AR1Stream:
    """g_t = a_t + s·ξ_t, a_t = ρ a_{t−1} + √(c(1−ρ²))·ζ_t (stationary from t = 0), independent per element.

    ``schedule`` may switch ρ (and the noise) at given steps: a list of (first_step, rho, noise).
    """

    def __init__(self, shapes, rho: float, noise: float, signal: float = 1.0, seed: int = 0, schedule=None):
        self.gen = torch.Generator().manual_seed(seed)
        self.shapes = [tuple(s) for s in shapes]
        self.signal = signal
        self.schedule = sorted(schedule or [(0, rho, noise)])
        self.t = 0
        self.a = [torch.randn(s, generator=self.gen, dtype=torch.float64) * math.sqrt(signal) for s in self.shapes]

    def _params(self):
        current = self.schedule[0]
        for entry in self.schedule:
            if entry[0] <= self.t:
                current = entry
        return current[1], current[2]

    def next(self, dtype=torch.float32) -> list[torch.Tensor]:
        rho, noise = self._params()
        out = []
        for i, s in enumerate(self.shapes):
            if self.t > 0:
                innov = torch.randn(s, generator=self.gen, dtype=torch.float64) * math.sqrt(self.signal * (1 - rho * rho))
                self.a[i] = rho * self.a[i] + innov
            g = self.a[i] + math.sqrt(noise) * torch.randn(s, generator=self.gen, dtype=torch.float64)
            out.append(g.to(dtype))
        self.t += 1
        return out


def feed(opt, params, stream, steps, record=None):
    """Run ``steps`` real ``opt.step()`` calls with the stream's gradients (a negative gradient is fine: the
    scores only see the gradients). ``record(t)`` is called after each step."""
    for t in range(steps):
        for p, g in zip(params, stream.next(params[0].dtype)):
            p.grad = g
        opt.step()
        if record is not None:
            record(t)
