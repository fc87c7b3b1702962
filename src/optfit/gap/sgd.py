"""gap-sgd: SGD whose momentum is chosen every step among ``momentum_candidates`` by the greedy alignment
principle (Lee & Lee, arXiv 2512.06370; derivation in docs/gap-method.md).

Per parameter, K undamped heavy-ball buffers (``state["momentum_buffers"]``, shape (K, *p.shape)):

    b_j ← μ_j b_j + g                         (every candidate, every step; b_j = g at the first step)
    d_j = b_j                 (heavy ball)   or   d_j = g + μ_j b_j   (nesterov=True)
    J_j = ⟨g, d_j⟩ / ‖h_j‖    with ‖h_j‖ the ℓ2 norm of d_j's filter truncated to t taps (``filters.py``);
                              for heavy ball ‖h‖ → 1/√(1−μ²), so J → √(1−μ²)⟨g, b⟩ (the published score)
    j* = choice(J) ;  θ ← θ − η·d_{j*}

Weight decay is coupled L2 (g ← g + λθ before the buffers), as in ``torch.optim.SGD``; dampening is not
offered (the score's normalisation assumes the undamped buffer).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..optim import _validation as V
from ..registry import OptimizerInfo, register
from .engine import GapOptimizer
from .filters import heavy_ball_norm, nesterov_norm

__all__ = ["GapSGD"]


class GapSGD(GapOptimizer):
    """SGD with per-step momentum selection (options as in ``GapAdam``: mode, score, score_ema, hysteresis,
    initial)."""

    default_decay_mode = "coupled"
    IMPLS = ("auto", "reference", "flat")
    flat_kind = "sgd"
    candidates_key = "momentum_candidates"
    buffer_key = "momentum_buffers"

    def __init__(self, params: Any, lr: float = 0.1, momentum_candidates: tuple[float, ...] = (0.5, 0.9, 0.99),
                 nesterov: bool = False, weight_decay: float = 0.0, mode: str = "global", score: str = "current",
                 score_ema: float = 0.0, hysteresis: int = 10, initial: float | None = None,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum_candidates=momentum_candidates, nesterov=nesterov,
                                      weight_decay=weight_decay, mode=mode, score=score, score_ema=score_ema,
                                      hysteresis=hysteresis, initial=initial), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.flag("nesterov", group["nesterov"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["nesterov"] and group["score"] == "next":
            raise ValueError("Invalid score: 'next' with nesterov=True (the previous Nesterov direction holds the "
                             "previous gradient, which is not kept); use score='current' or nesterov=False")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        norm = nesterov_norm if group["nesterov"] else heavy_ball_norm
        cands = group["momentum_candidates"]
        c = {"lr": group["lr"], "t": step, "inv_norm": [1 / norm(b, step) for b in cands]}
        if group["score"] == "next" and step > 1:
            c["prev_inv_norm"] = [1 / norm(b, step - 1) for b in cands]
        return c

    @staticmethod
    def _scores(b: Tensor, g: Tensor, mus: list[float], nesterov: bool, inv_norm: list[float],
                gg: float | None) -> list[float]:
        """J_j = ⟨g, d_j⟩/‖h_j‖ from ⟨g, b_j⟩ (and ⟨g, g⟩ for Nesterov), accumulated in float32 or better."""
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        gb = (b.reshape(b.shape[0], -1).to(acc) @ g.reshape(-1).to(acc)).double().tolist()
        if nesterov:
            gb = [gg + mu * x for mu, x in zip(mus, gb)]
        return [x * s for x, s in zip(gb, inv_norm)]

    def _first_pass(self, p, g, st, c, group, scratch) -> list[float]:
        b = st["momentum_buffers"]
        mus, nesterov = group["momentum_candidates"], group["nesterov"]
        k = b.shape[0]
        gg = None
        if nesterov:
            acc = torch.float64 if g.dtype == torch.float64 else torch.float32
            gg = float(torch.dot(g.reshape(-1).to(acc), g.reshape(-1).to(acc)))
        scores = [0.0] * k
        if group["score"] == "next" and c["t"] > 1:
            scores = self._scores(b, g, mus, False, c["prev_inv_norm"], None)
        if c["t"] == 1:
            b.copy_(g.unsqueeze(0).expand_as(b))
        else:
            mu = torch.tensor(mus, dtype=b.dtype).view(k, *([1] * g.ndim))
            b.mul_(mu).add_(g.unsqueeze(0))
        if group["score"] == "current":
            scores = self._scores(b, g, mus, nesterov, c["inv_norm"], gg)
        return scores

    def _direction(self, p, g, st, c, j, group, scratch) -> Tensor:
        b = st["momentum_buffers"][j]
        if group["nesterov"]:
            return (g + group["momentum_candidates"][j] * b) * c["lr"]
        return b * c["lr"]

    def _apply(self, p, g, st, c, j, group, scratch) -> None:
        b = st["momentum_buffers"][j]
        if group["nesterov"]:
            p.add_(g, alpha=-c["lr"])
            p.add_(b, alpha=-c["lr"] * group["momentum_candidates"][j])
        else:
            p.add_(b, alpha=-c["lr"])


register(OptimizerInfo(
    name="gap-sgd", cls=GapSGD, family="gap", paper="arXiv:2512.06370",
    description="SGD choosing heavy-ball or Nesterov momentum every step among K candidates (default 0.5, 0.9, "
                "0.99) by filter-normalised alignment with the gradient; coupled L2.",
    state_tensors=3, has_momentum=False,  # the momentum is chosen every step: nothing for cycle_momentum to set
    supports_foreach=False, test_hparams={"lr": 0.05},
))
