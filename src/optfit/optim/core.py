"""CoRe, the continual resilient optimizer (Eckhoff & Reiher, "CoRe optimizer: an all-in-one solution for machine
learning", arXiv 2307.15663; first in "Lifelong machine learning potentials", JCTC 2023): Adam-like directions,
RPROP-like per-weight step sizes, and an optional stability–plasticity balance that freezes the most important
weights. With G the gradient at step t (1-based):

    β₁,t = β₁b + (β₁a − β₁b)·exp(−((t−1)/β₁c)²)
    g_t = β₁,t g_{t−1} + (1−β₁,t) G          (computed as torch.lerp(G, g_{t−1}, β₁,t))
    h_t = β₂ h_{t−1} + (1−β₂) G²              (β₂ < 0: no h, and u_t = sign(g_t) below)
    P_t = 0 where t_hist > 0, t > t_hist and S_{t−1} is among the top p_frozen of its tensor, else 1
    s_t = clamp(s_{t−1}·η±, s_min, s_max)     η+ if g_{t−1}g_tP_t > 0, η− if < 0, 1 if = 0;  s_0 = η₀
    u_t = g_t/(1−β₁,t^t) / (√(h_t/(1−β₂^t)) + ε)
    Δ_t = (η/η₀)·u_t P_t s_t
    S_t = S_{t−1} + g_tΔ_t/t_hist  (t ≤ t_hist),  (1 − 1/t_hist)S_{t−1} + g_tΔ_t/t_hist  (t > t_hist)
    θ ← θ − d|Δ_t|θ − Δ_t                      (CoRe's own weight decay, proportional to the update)

Defaults are the authors' general-purpose values (their package ``core-optimizer`` 1.1.0): β = (0.7375,
0.8125, 250, 0.99), η± = (0.7375, 1.2), s ∈ [1e-6, 1e-2], ε = 1e-8, d = 0.1, plasticity off (t_hist = 0).
The paper changes only s_max with the setting: 1e-3 for mini-batch, 1 for full-batch learning, 1e-2 between.

Deviations, for the torch.optim contract: ``lr`` (η) is the initial step size s₀ = η₀ (the lr the group was
built with, as in the reference) and, in addition, a scheduler's multiplier η/η₀ on each update (1 at a
constant lr, so the reference's steps; an LR schedule or an lr of 0 now acts on the steps). ``weight_decay`` and
``frozen`` are per param group (the reference also takes lists indexed by parameter). The score decays for
t > t_hist as in the equations (the reference skips the decay in tensors with nothing to freeze, where the
score is unused). Ties at the freezing threshold follow the reference (S ≥ 0.999999·k-th largest). ``cautious``
masks Δ_t after the score and the decay are formed. A scheduler's ``cycle_momentum`` cycles betas[0] = β₁a, the
β₁ of the first ~β₁c steps.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ._base import LR0, ElementwiseOptimizer, _OPTION_KEYS, as_number
from ..registry import OptimizerInfo, register

__all__ = ["CoRe"]

_BETAS_FORM = "expected a tuple of 4 numbers (β₁a, β₁b in [0, 1), β₁c > 0, β₂ < 1)"


def _check_betas(value: Any) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ValueError(f"Invalid betas: {value!r} ({_BETAS_FORM}, got {type(value).__name__})")
    if len(value) != 4:
        raise ValueError(f"Invalid betas: {value!r} ({_BETAS_FORM}, got {len(value)})")
    V.beta("betas[0]", value[0])
    V.beta("betas[1]", value[1])
    V.positive("betas[2]", value[2])
    if V._num("betas[3]", value[3]) >= 1:
        raise ValueError(f"Invalid betas[3]: {value[3]!r} (β₂ must be < 1; a negative β₂ gives RPROP-like sign steps)")


def _check_pair(name: str, value: Any, ok: Any, rule: str) -> None:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (expected a pair {rule})")
    a, b = V._num(f"{name}[0]", value[0]), V._num(f"{name}[1]", value[1])
    if not ok(a, b):
        raise ValueError(f"Invalid {name}: {value!r} (must satisfy {rule})")


class CoRe(ElementwiseOptimizer):
    """CoRe with the authors' defaults; ``score_history`` (t_hist) > 0 and ``frozen`` (p_frozen) > 0 turn on the
    plasticity factors. ``weight_decay`` is CoRe's update-proportional decay (no ``decay_mode``)."""

    OPTIONS = tuple(k for k in _OPTION_KEYS if k != "decay_mode")
    handles_weight_decay = True

    def __init__(self, params: Any, lr: float = 1e-3, step_sizes: tuple[float, float] = (1e-6, 1e-2),
                 etas: tuple[float, float] = (0.7375, 1.2),
                 betas: tuple[float, float, float, float] = (0.7375, 0.8125, 250.0, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.1, score_history: int = 0, frozen: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, step_sizes=step_sizes, etas=etas, betas=betas, eps=eps,
                                      weight_decay=weight_decay, score_history=score_history, frozen=frozen),
                         **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        _check_betas(group["betas"])
        _check_pair("step_sizes", group["step_sizes"], lambda a, b: 0 < a <= b, "0 < s_min <= s_max")
        _check_pair("etas", group["etas"], lambda a, b: 0 < a <= 1 <= b, "0 < η− <= 1 <= η+")
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])
        V.integer("score_history", group["score_history"])
        V.in_range("frozen", group["frozen"], 0.0, 1.0, hi_open=False)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return (("exp_avg", "step_size") + (("exp_avg_sq",) if group["betas"][3] >= 0 else ())
                + (("score",) if group["score_history"] > 0 else ()))

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        for key in self._state_keys(group):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step_size"].fill_(group[LR0])

    def _working_set(self, group: dict[str, Any], items: list) -> tuple[list, list, list, list]:
        """The base's, plus zeros for a state tensor that a changed hyperparameter newly needs (the score when
        ``score_history`` goes from 0 to > 0, h when β₂ turns non-negative)."""
        out = super()._working_set(group, items)
        for wp, st in zip(out[1], out[3]):
            for key in self._state_keys(group):
                if key not in st:
                    st[key] = torch.zeros_like(wp, memory_format=torch.preserve_format)
        return out

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        b1a, b1b, b1c, b2 = group["betas"]
        b1 = b1b + (b1a - b1b) * math.exp(-(((step - 1) / b1c) ** 2))
        lr, lr0 = as_number(group["lr"]), group[LR0]
        t_hist = group["score_history"]
        return {"b1": b1, "bc1": 1.0 - b1**step, "b2": b2, "bc2": 1.0 - b2**step if b2 >= 0 else 1.0,
                "eps": group["eps"], "eta_minus": group["etas"][0], "eta_plus": group["etas"][1],
                "s_min": group["step_sizes"][0], "s_max": group["step_sizes"][1],
                "schedule": lr / lr0 if lr0 > 0 else 0.0, "wd": group["weight_decay"],
                "inv_hist": 1.0 / t_hist if t_hist > 0 else 0.0,
                # structural, so a Python bool (the compiled path guards on it): is the plasticity factor live?
                "freeze": bool(t_hist > 0 and step > t_hist and group["frozen"] > 0),
                "decay_score": bool(t_hist > 0 and step > t_hist)}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["betas"][3] >= 0, group["score_history"] > 0, float(group["frozen"]))

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        adam_like, scored, frozen = flags
        prev, s = st["exp_avg"], st["step_size"]
        if adam_like:
            h = st["exp_avg_sq"]
            h.mul_(c["b2"]).addcmul_(g, g, value=1 - c["b2"])
        ema = torch.lerp(g, prev, c["b1"])
        plastic = None
        if scored:
            score = st["score"]
            if c["freeze"]:
                plastic = _plasticity(score, frozen)
            if c["decay_score"]:
                score.mul_(1 - c["inv_hist"])
        agree = ema * prev
        if plastic is not None:
            agree = agree * plastic
        factor = torch.where(agree > 0, c["eta_plus"], torch.where(agree < 0, c["eta_minus"], torch.ones_like(s)))
        s.mul_(factor).clamp_(c["s_min"], c["s_max"])
        if adam_like:
            u = (ema / c["bc1"]) / ((h / c["bc2"]).sqrt() + c["eps"])
        else:
            u = ema.sign()
        delta = u * s * c["schedule"]
        if plastic is not None:
            delta = delta * plastic
        if scored:
            score.addcmul_(ema, delta, value=c["inv_hist"])
        # the decay is elementwise (∝ |Δ|), not a multiplier the base could apply: the kernel applies it itself
        p.add_(-c["wd"] * delta.abs() * p)
        prev.copy_(ema)
        return delta


def _plasticity(score: Tensor, frozen: float) -> Tensor:
    """P: 0 where the score is among the top ``frozen`` fraction of its tensor (ties within 1e-6 included)."""
    n = int(frozen * score.numel())
    plastic = torch.ones_like(score)
    if n > 0:
        kth = torch.topk(score.reshape(-1), n).values[n - 1]
        plastic = plastic.masked_fill(score >= 0.999999 * kth, 0.0)
    return plastic


register(OptimizerInfo(
    name="core", cls=CoRe, family="adaptive", paper="arXiv:2307.15663",
    description="CoRe: Adam-like direction with RPROP-like per-weight step sizes s ∈ [s_min, s_max], a β₁ that "
                "anneals from β₁a to β₁b, update-proportional decay, optional freezing of the highest-scoring weights.",
    state_tensors=3, has_betas=True, supports_foreach=False,
    test_hparams={"lr": 1e-2, "step_sizes": (1e-6, 0.1)},
))
