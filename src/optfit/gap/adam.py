"""gap-adam / gap-adamw: Adam(W) whose β₁ is chosen every step among ``beta1_candidates`` by the greedy
alignment principle (Lee & Lee, arXiv 2512.06370; our derivation in docs/gap-method.md).

Per parameter: one shared second moment and K first moments (``state["exp_avgs"]``, shape (K, *p.shape)):

    v ← β₂v + (1−β₂)g² ;  m_j ← β_j m_j + (1−β_j)g            (every candidate, every step)
    d = √(v/(1−β₂ᵗ)) + ε ;  u_j = m_j/(1−β_jᵗ) / d
    J_j = ⟨g, u_j⟩ / ‖h_j‖ / W,   ‖h_j‖ = ℓ2 norm of the bias-corrected damped filter (1−β)β^k/(1−βᵗ), k < t,
                                  W = mean(1/d) (makes tensors comparable in the global sum)
    j* = choice(J) ;  θ ← θ − η·u_{j*}                         (+ decay as in Adam / AdamW)

For t → ∞ the norm factor is √((1+β)/(1−β)) (the damped buffer's; pitfall 1 of the method note). Under
R(k) = s²δ_k + cρ^k the expected score is √(1−β²)(s² + c/(1−βρ)), whose arg-max is the oracle β*.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..optim import _validation as V
from ..registry import OptimizerInfo, register
from .engine import GapOptimizer
from .flat import dots
from .filters import adam_scale

__all__ = ["GapAdam", "GapAdamW"]

class GapAdam(GapOptimizer):
    """Adam with per-step β₁ selection; weight decay is coupled L2 (as in ``torch.optim.Adam``).

    ``mode``: "global" (one β₁ for every parameter, from the summed scores) or "per_param".
    ``score``: "current" (published rule) or "next" (score against the next, independent gradient).
    ``score_ema``: smoothing of the scores (0 = off). ``hysteresis``: steps a challenger must lead in a row
    before it replaces the current β₁. ``initial``: the β₁ used until the scores say otherwise
    (default: the candidate nearest 0.9).
    """

    default_decay_mode = "coupled"
    IMPLS = ("auto", "reference", "flat")
    flat_kind = "adam"
    candidates_key = "beta1_candidates"
    buffer_key = "exp_avgs"

    def __init__(self, params: Any, lr: float = 1e-3, beta1_candidates: tuple[float, ...] = (0.5, 0.9, 0.99),
                 beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0, mode: str = "global",
                 score: str = "current", score_ema: float = 0.0, hysteresis: int = 10,
                 initial: float | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, beta1_candidates=beta1_candidates, beta2=beta2, eps=eps,
                                      weight_decay=weight_decay, mode=mode, score=score, score_ema=score_ema,
                                      hysteresis=hysteresis, initial=initial), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.beta("beta2", group["beta2"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg_sq",)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        b2 = group["beta2"]
        cands = group["beta1_candidates"]
        c = {"lr": group["lr"], "b2": b2, "eps": group["eps"], "t": step,
             "bc2_sqrt": math.sqrt(1 - b2 ** step), "bc1": [1 - b ** step for b in cands],
             "scale": [adam_scale(b, step) for b in cands]}
        if group["score"] == "next" and step > 1:
            c["prev_bc2_sqrt"] = math.sqrt(1 - b2 ** (step - 1))
            c["prev_scale"] = [adam_scale(b, step - 1) for b in cands]
        return c

    @staticmethod
    def _denominator(v: Tensor, bc2_sqrt: float, eps: float) -> Tensor:
        return torch.sqrt(v).div_(bc2_sqrt).add_(eps)

    @staticmethod
    def _scores(m: Tensor, g: Tensor, d: Tensor, scale: list[float]) -> list[float]:
        """J_j = ⟨g, m_j/d⟩·scale_j / mean(1/d), accumulated in float32 or better (mean(1/d) as Σ(1/d) / n)."""
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        inv = torch.reciprocal(d).to(acc)
        w = float(inv.sum()) / inv.numel()
        raw = dots(m.reshape(m.shape[0], -1).to(acc), inv.mul_(g).reshape(-1)).double()
        if not w:  # every d infinite (an overflowed second moment): no direction, no preference
            return [0.0] * len(scale)
        return [float(x) * s / w for x, s in zip(raw.tolist(), scale)]

    def _first_pass(self, p, g, st, c, group, scratch) -> list[float]:
        m, v = st["exp_avgs"], st["exp_avg_sq"]
        k = m.shape[0]
        if group["score"] == "next":
            scores = [0.0] * k
            if c["t"] > 1:
                scores = self._scores(m, g, self._denominator(v, c["prev_bc2_sqrt"], c["eps"]), c["prev_scale"])
        v.mul_(c["b2"]).addcmul_(g, g, value=1 - c["b2"])
        weight = torch.tensor([1 - b for b in group["beta1_candidates"]], dtype=m.dtype)
        m.lerp_(g.unsqueeze(0).expand_as(m), weight.view(k, *([1] * g.ndim)))
        d = scratch["d"] = self._denominator(v, c["bc2_sqrt"], c["eps"])  # reused by the second pass
        if group["score"] == "current":
            scores = self._scores(m, g, d, c["scale"])
        return scores

    def _direction(self, p, g, st, c, j, group, scratch) -> Tensor:
        return st["exp_avgs"][j] / scratch["d"] * (c["lr"] / c["bc1"][j])

    def _apply(self, p, g, st, c, j, group, scratch) -> None:
        p.addcdiv_(st["exp_avgs"][j], scratch["d"], value=-c["lr"] / c["bc1"][j])


class GapAdamW(GapAdam):
    """``GapAdam`` with decoupled weight decay θ ← θ(1 − ηλ) (AdamW), default λ = 0.01."""

    default_decay_mode = "decoupled"

    def __init__(self, params: Any, lr: float = 1e-3, beta1_candidates: tuple[float, ...] = (0.5, 0.9, 0.99),
                 beta2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.01, mode: str = "global",
                 score: str = "current", score_ema: float = 0.0, hysteresis: int = 10,
                 initial: float | None = None, **options: Any) -> None:
        super().__init__(params, lr=lr, beta1_candidates=beta1_candidates, beta2=beta2, eps=eps,
                         weight_decay=weight_decay, mode=mode, score=score, score_ema=score_ema,
                         hysteresis=hysteresis, initial=initial, **options)


# has_momentum=False: β₁ is chosen among candidates every step, there is no single momentum for an LR scheduler's
# cycle_momentum to set
_GAP = dict(family="gap", paper="arXiv:2512.06370", state_tensors=4, has_momentum=False, supports_foreach=False,
            test_hparams={"lr": 0.05})
register(OptimizerInfo(
    name="gap-adam", cls=GapAdam,
    description="Adam choosing β₁ every step among K candidates by filter-normalised alignment with the gradient "
                "(greedy alignment principle); K first moments, one second moment; coupled L2.", **_GAP))
register(OptimizerInfo(
    name="gap-adamw", cls=GapAdamW,
    description="AdamW choosing β₁ every step among K candidates (default 0.5, 0.9, 0.99) by filter-normalised "
                "alignment with the gradient; global or per-tensor choice, score EMA, hysteresis.", **_GAP))
