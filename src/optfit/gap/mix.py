"""gap-mix: per-step choice among *different update rules* by the greedy alignment principle, under a budget
that makes them comparable: every candidate direction is scaled to unit RMS (the update-energy budget
E‖θ̇‖² = N·lr², whose greedy optimum is the direction best aligned with the gradient).

Shared state: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g² (bias-corrected m̂, v̂). Candidate directions (``rules``):

    "adam"        m̂ / (√v̂ + ε)                                   (Adam's direction)
    "sign"        sign(m)                                        (signum / Lion-style)
    "momentum"    m̂                                              (heavy-ball SGD's direction)
    "orthogonal"  NS₅(m) on the (rows, rest) matrix view          (Muon's direction; ≥ 2-D tensors only)

    ũ_j = u_j / rms(u_j),   J_j = ⟨g, ũ_j⟩,   j* = choice(J),   θ ← θ − η·ũ_{j*}   (+ decoupled decay)

So η is the per-element RMS of every step whatever rule runs (AdamW's own update RMS is typically 0.2–0.5·η).
A rule that does not apply to a tensor ("orthogonal" on a vector) scores −∞ there; if it is nonetheless the
only rule (or the global choice), such a tensor steps with Adam's direction, like Muon's auxiliary AdamW. Default ``mode="per_param"``:
each tensor picks its own rule. ``score="next"`` scores the previous step's directions against the fresh
gradient. A question this optimizer is here to measure: does the mix beat its best single member?
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from ..optim import _validation as V
from ..optim.newton_schulz import orthogonalize
from ..registry import OptimizerInfo, register
from .engine import GapOptimizer

__all__ = ["GapMix", "RULES"]

RULES = ("adam", "sign", "momentum", "orthogonal")


def _rule_direction(rule: str, m: Tensor, v: Tensor, c: dict[str, Any], prev: bool = False) -> Tensor | None:
    bc1, bc2 = (c["prev_bc1"], c["prev_bc2"]) if prev else (c["bc1"], c["bc2"])
    if rule == "adam":
        return (m / bc1) / (torch.sqrt(v / bc2) + c["eps"])
    if rule == "sign":
        return torch.sign(m)
    if rule == "momentum":
        return m / bc1
    if m.ndim < 2:
        return None
    return orthogonalize(m.reshape(m.shape[0], -1)).reshape(m.shape)


def _unit_rms(u: Tensor) -> Tensor:
    rms = u.pow(2).mean().sqrt()
    return u / rms if float(rms) > 0 else u


class GapMix(GapOptimizer):
    """Choose, per tensor (or globally), among update rules with unit-RMS steps (see the module docstring)."""

    default_decay_mode = "decoupled"
    candidates_key = "rules"
    buffer_key = ""

    def __init__(self, params: Any, lr: float = 3e-4, rules: Sequence[str] = ("adam", "sign", "orthogonal"),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 mode: str = "per_param", score: str = "current", score_ema: float = 0.9, hysteresis: int = 10,
                 initial: str | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, rules=rules, betas=betas, eps=eps, weight_decay=weight_decay, mode=mode,
                                      score=score, score_ema=score_ema, hysteresis=hysteresis, initial=initial),
                         **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.betas(group["betas"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (gap-mix scores the candidates' own directions)")

    @staticmethod
    def _check_candidates(key: str, cands: Any) -> tuple:
        if isinstance(cands, str) or not isinstance(cands, Sequence) or len(cands) == 0:
            raise ValueError(f"Invalid {key}: {cands!r}; give a non-empty sequence of rule names from {RULES}")
        bad = [r for r in cands if r not in RULES]
        if bad or len(set(cands)) != len(cands):
            raise ValueError(f"Invalid {key}: {cands!r}; distinct names from {RULES}")
        return tuple(cands)

    def _initial_index(self, group: dict[str, Any]) -> int:
        rules = group["rules"]
        return rules.index(group["initial"]) if group["initial"] is not None else 0

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        b1, b2 = group["betas"]
        c = {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "t": step,
             "bc1": 1 - b1 ** step, "bc2": 1 - b2 ** step}
        if step > 1:
            c["prev_bc1"], c["prev_bc2"] = 1 - b1 ** (step - 1), 1 - b2 ** (step - 1)
        return c

    def _score_all(self, g: Tensor, m: Tensor, v: Tensor, c: dict[str, Any], rules, scratch, prev: bool) -> list[float]:
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        scores = []
        for j, rule in enumerate(rules):
            u = _rule_direction(rule, m, v, c, prev)
            if u is None:
                scores.append(-math.inf)
                continue
            u = _unit_rms(u)
            if not prev:
                scratch[j] = u
            scores.append(float(torch.dot(g.reshape(-1).to(acc), u.reshape(-1).to(acc))))
        return scores

    def _first_pass(self, p, g, st, c, group, scratch) -> list[float]:
        m, v = st["exp_avg"], st["exp_avg_sq"]
        rules = group["rules"]
        scores = [0.0] * len(rules)
        if group["score"] == "next" and c["t"] > 1:
            scores = self._score_all(g, m, v, c, rules, scratch, prev=True)
        m.lerp_(g, 1 - c["b1"])
        v.mul_(c["b2"]).addcmul_(g, g, value=1 - c["b2"])
        current = self._score_all(g, m, v, c, rules, scratch, prev=False)
        if group["score"] == "current":
            return current
        return [s if math.isfinite(x) else -math.inf for s, x in zip(scores, current)]

    def _direction(self, p, g, st, c, j, group, scratch) -> Tensor:
        u = scratch.get(j)
        if u is None:  # a rule this tensor cannot run ("orthogonal" on a vector): Adam's direction, as Muon's AdamW
            u = _unit_rms(_rule_direction("adam", st["exp_avg"], st["exp_avg_sq"], c))
        return u * c["lr"]


register(OptimizerInfo(
    name="gap-mix", cls=GapMix, family="gap", paper="arXiv:2512.06370 (rule); optfit (heterogeneous family)",
    description="Chooses per tensor among update rules (Adam, sign/Lion, momentum, Muon's orthogonalised "
                "direction) by alignment with the gradient under a unit-RMS step budget; lr = step RMS.",
    state_tensors=2, has_betas=True, has_momentum=True, supports_cautious=False, supports_foreach=False,
    test_hparams={"lr": 0.02},
))
