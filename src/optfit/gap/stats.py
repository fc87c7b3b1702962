"""``GradientStats``: a cheap probe of the gradient stream's temporal statistics, attachable to any optimizer.

For each parameter tensor it follows a fixed random subset of at most ``max_elements`` coordinates and keeps
the last ``lags`` sampled gradients. With bias-corrected EMAs (decay ``decay``) it estimates the per-element
autocorrelation R(k) = E[g_t ⊙ g_{t−k}] averaged over coordinates, k = 0..lags, per tensor and globally
(the global R is the numel-weighted sum of the tensors'). From R it fits the method note's model

    R(0) = s² + c,   R(k) = c·ρ^k  (k ≥ 1)      (white noise s² + a persistent one-pole signal c)

by least squares on log R(k), k ≥ 1, weighted by R(k), and reports

- the gradient noise scale tr(Σ)/‖E g‖² ≈ s²/c (noise energy over persistent-signal energy),
- the predicted optimal one-pole momentum β* = arg max_β √(1−β²)(s² + c/(1−βρ)) (``filters.ar1_score``).

Cost per step: one gather of ``max_elements`` values per tensor and ``lags`` dot products of that length.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from .filters import ar1_score

_GRID = tuple(i / 1000 for i in range(1000))


class GradientStats:
    """Attach with ``GradientStats(optimizer)`` (reads the gradients in a step pre-hook) or give parameters and
    call ``update()`` yourself after each backward pass."""

    def __init__(self, target: Any, lags: int = 8, decay: float = 0.99, max_elements: int = 4096,
                 seed: int = 0) -> None:
        if isinstance(lags, bool) or not isinstance(lags, int) or lags < 1:
            raise ValueError(f"Invalid lags: {lags!r} (must be an integer >= 1)")
        if not 0.0 < decay < 1.0:
            raise ValueError(f"Invalid decay: {decay!r} (must lie in (0, 1))")
        if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
            raise ValueError(f"Invalid max_elements: {max_elements!r} (must be an integer >= 1)")
        self.lags, self.decay, self.max_elements = lags, decay, max_elements
        self._gen = torch.Generator().manual_seed(seed)
        self._handle = None
        if isinstance(target, torch.optim.Optimizer):
            params = [p for group in target.param_groups for p in group["params"]]
            self._handle = target.register_step_pre_hook(lambda opt, args, kwargs: self.update())
        else:
            params = list(target)
        if not params or not all(isinstance(p, Tensor) for p in params):
            raise TypeError("GradientStats needs an optimizer or a non-empty iterable of parameter tensors")
        self.params = params
        self._index: list[Tensor | None] = []
        for p in params:
            n = p.numel()
            self._index.append(None if n <= max_elements else torch.randperm(n, generator=self._gen)[:max_elements])
        self._history: list[list[Tensor]] = [[] for _ in params]  # newest first
        self._r = torch.zeros(len(params), lags + 1, dtype=torch.float64)  # EMA sums (not yet bias-corrected)
        self._w = torch.zeros(len(params), lags + 1, dtype=torch.float64)  # EMA of 1 (the bias correction)
        self.steps = 0

    def remove(self) -> None:
        """Detach from the optimizer."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @torch.no_grad()
    def update(self) -> None:
        """Record the current ``.grad`` of every parameter (parameters without a gradient are skipped)."""
        a = self.decay
        for i, (p, idx) in enumerate(zip(self.params, self._index)):
            if p.grad is None:
                continue
            g = p.grad.detach().reshape(-1)
            if g.is_complex():
                g = torch.view_as_real(g).reshape(-1)
            g = (g if idx is None else g[idx.to(g.device)]).to(torch.float64).cpu()
            hist = self._history[i]
            hist.insert(0, g)
            del hist[self.lags + 1:]
            products = torch.stack([torch.dot(g, h) / g.numel() for h in hist])
            n = len(hist)
            self._r[i, :n] = a * self._r[i, :n] + (1 - a) * products
            self._w[i, :n] = a * self._w[i, :n] + (1 - a)
        self.steps += 1

    # ----------------------------------------------------------------------------------------- estimates
    def autocorrelation(self) -> dict[str, Any]:
        """``{"global": R, "per_tensor": [R_i]}``: per-element R(0..lags) (float64; NaN where no data yet).
        The global R weights each tensor by its number of elements."""
        per = self._r / self._w
        numel = torch.tensor([p.numel() for p in self.params], dtype=torch.float64)
        seen = (self._w > 0).all(dim=1)
        glob = (per[seen] * numel[seen, None]).sum(0) / numel[seen].sum() if seen.any() else \
            torch.full((self.lags + 1,), math.nan, dtype=torch.float64)
        return {"global": glob, "per_tensor": list(per)}

    @staticmethod
    def fit(r: Sequence[float] | Tensor) -> dict[str, float]:
        """Fit R(0) = s² + c, R(k) = cρ^k to an autocorrelation sequence: ``{"rho", "signal", "noise"}``."""
        r = torch.as_tensor(r, dtype=torch.float64)
        if not torch.isfinite(r).all() or r[0] <= 0:
            return {"rho": math.nan, "signal": math.nan, "noise": math.nan}
        k = torch.arange(1, len(r), dtype=torch.float64)
        tail = r[1:]
        keep = tail > 1e-12 * r[0]
        if keep.sum() == 0:
            return {"rho": 0.0, "signal": 0.0, "noise": float(r[0])}
        if keep.sum() == 1:
            rho, c = float(tail[0] / r[0]) if keep[0] else 0.0, float(tail[0]) if keep[0] else 0.0
            rho = min(max(rho, 0.0), 0.9999)
            c = c / rho if rho > 0 else 0.0
        else:
            # weighted by R(k): an absolute error δ in R(k) is an error δ/R(k) in log R(k)
            kk, y, w = k[keep], torch.log(tail[keep]), tail[keep]
            design = torch.stack([torch.ones_like(kk), kk], dim=1) * w[:, None]
            coef = torch.linalg.lstsq(design, (y * w)[:, None]).solution[:, 0]
            rho = min(max(math.exp(float(coef[1])), 0.0), 0.9999)
            c = math.exp(float(coef[0]))
        c = min(c, float(r[0]))
        return {"rho": rho, "signal": c, "noise": float(r[0]) - c}

    def noise_scale(self) -> dict[str, Any]:
        """tr(Σ)/‖E g‖² ≈ s²/c: globally and per tensor (``inf`` when no persistent signal is found)."""
        ac = self.autocorrelation()

        def scale(r: Tensor) -> float:
            f = self.fit(r)
            if math.isnan(f["signal"]):
                return math.nan
            return f["noise"] / f["signal"] if f["signal"] > 0 else math.inf

        return {"global": scale(ac["global"]), "per_tensor": [scale(r) for r in ac["per_tensor"]]}

    def predicted_beta(self, grid: Iterable[float] | None = None) -> dict[str, Any]:
        """The one-pole momentum that maximises the unit-norm expected drop under the fitted model, globally and
        per tensor (over ``grid``, default 0.000 … 0.999)."""
        grid = tuple(grid) if grid is not None else _GRID
        ac = self.autocorrelation()

        def best(r: Tensor) -> float:
            f = self.fit(r)
            if math.isnan(f["rho"]):
                return math.nan
            return max(grid, key=lambda b: ar1_score(b, f["rho"], f["noise"], f["signal"]))

        return {"global": best(ac["global"]), "per_tensor": [best(r) for r in ac["per_tensor"]]}

    def not_ready(self) -> str | None:
        """Why the global estimates are NaN, or ``None`` when they are available. R(k) needs ``lags + 1``
        recorded gradients of a tensor, so the first ``lags`` updates give NaN by construction."""
        if self.steps == 0:
            return "no gradients recorded yet (call update() after backward, or attach to an optimizer)"
        if not (self._w > 0).all(dim=1).any():
            seen = max(int((w > 0).sum()) for w in self._w)
            if seen == 0:
                return f"none of the {len(self.params)} parameters had a gradient in {self.steps} update(s)"
            return (f"needs {self.lags + 1} recorded gradients of a tensor for R(0..{self.lags}) (lags={self.lags}); "
                    f"has {seen}")
        r = self.autocorrelation()["global"]
        if not torch.isfinite(r).all():
            return "the recorded gradients are not finite"
        if r[0] <= 0:
            return "every recorded gradient is zero"
        return None

    def summary(self) -> dict[str, Any]:
        """Global figures in one dict (for logs and the showdown report): ``steps``, ``autocorrelation``,
        ``rho``, ``signal``, ``noise``, ``noise_scale``, ``predicted_beta`` and ``reason``.

        The estimates are NaN until a tensor has ``lags + 1`` recorded gradients (and when the gradients are
        all zero or not finite); ``reason`` then says which, and is ``None`` once they are available."""
        ac = self.autocorrelation()["global"]
        return {"steps": self.steps, "autocorrelation": ac.tolist(), **self.fit(ac),
                "noise_scale": self.noise_scale()["global"], "predicted_beta": self.predicted_beta()["global"],
                "reason": self.not_ready()}
