"""gap-grokfast: AdamW whose Grokfast gradient pre-filter (α, λ) is chosen every step among ``filter_candidates``
by the greedy alignment principle (Lee & Lee, arXiv 2512.06370; Grokfast: Lee et al., arXiv 2405.20233).

Per parameter, for every candidate j = (α_j, λ_j), every step (Grokfast EMA initialised as optfit's ``grokfast_ema``):

    e_α ← g at t = 1, then e_α ← αe_α + (1−α)g     (one EMA per distinct α with λ > 0: ``state["filter_emas"]``)
    ĝ_j = g + λ_j e_{α_j} ;  m_j ← β₁m_j + (1−β₁)ĝ_j ;  v_j ← β₂v_j + (1−β₂)ĝ_j²
    d_j = √(v_j/(1−β₂ᵗ)) + ε ;  u_j = m_j/(1−β₁ᵗ) / d_j
    J_j = ⟨g, u_j⟩ / ‖h_j,t‖ / mean(1/d_j)
    j* = choice(J) ;  θ ← θ(1 − ηλ_wd) − η·u_{j*}

h_j,t is the composite causal filter g → m̂_j (Adam's damped bias-corrected one-pole ∘ Grokfast's identity plus
amplified low-pass), truncated to the t taps that exist, including the special last tap left by the EMA's
initialisation; its exact norm is ``grokfast_filters.grokfast_adam_norm``. Under R(k) = s²δ_k + cρ^k the
expected score is ``grokfast_ar1_score``. A λ = 0 candidate is plain AdamW(β₁), so the rule can fall back to it.

**Second moment: per candidate (default, ``second_moment="per_candidate"``).** v_j tracks ĝ_j², so a held
candidate *is* ``AdamW(grad_filter=grokfast_ema(α_j, λ_j))`` (tested to 1e-12): the selection runs among the
optimizers a sweep would run, and every candidate keeps Adam's scale invariance — a switch to λ = 2 does not
triple the low-frequency step, which the ℓ2-normalised score cannot see. The score divides by mean(1/d_j), which
removes each candidate's own gain, so the comparison is of filter shapes, as the unit-ℓ2 budget intends. Cost: K
second moments. ``second_moment="shared"`` keeps one v of the raw g (K fewer buffers); its candidates are then
not AdamW+Grokfast (their step grows with the filter's low-frequency gain 1 + λ); benchmarked in
benchmarks/gap_filters.py.

Measured (benchmarks/gap_filters.py, 4 quick-suite workloads × 2 seeds): the rule does *not* match the best fixed
filter. The current score keeps plain AdamW on 86–100 % of steps on three workloads (its white-noise term h_0·s²
favours the unamplified filter, as the oracle predicts) and misses the (0.9, 2) filter's gain on w5-cnn1d (0.880 vs
0.925 accuracy); ``score="next"`` moves towards (0.98, 2) and is within noise on 3/4, still not on w5.

Options as in ``GapAdamW`` (mode, score, score_ema, hysteresis). ``initial``: the (α, λ) pair used until the
scores say otherwise (default: the first candidate). The ``grad_filter`` option is refused (the filter is what
this optimizer chooses). With ``decay_mode="coupled"`` the L2 term is part of the g that the candidates filter
(AdamW's ``grad_filter`` filters before L2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from ..optim import _validation as V
from ..registry import OptimizerInfo, register
from .adam import GapAdam
from .engine import GapOptimizer
from .grokfast_filters import grokfast_adam_scale

__all__ = ["GapGrokfast"]

SECOND_MOMENTS = ("per_candidate", "shared")


@lru_cache(maxsize=64)
def _layout(cands: tuple[tuple[float, float], ...]) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(distinct α of the λ > 0 candidates, index of each candidate's EMA or −1 for λ = 0)."""
    alphas: list[float] = []
    index = []
    for a, lam in cands:
        if lam == 0:
            index.append(-1)
            continue
        if a not in alphas:
            alphas.append(a)
        index.append(alphas.index(a))
    return tuple(alphas), tuple(index)


class GapGrokfast(GapOptimizer):
    """AdamW choosing its Grokfast EMA pre-filter (α, λ) every step (see the module docstring)."""

    default_decay_mode = "decoupled"
    candidates_key = "filter_candidates"
    buffer_key = "exp_avgs"

    def __init__(self, params: Any, lr: float = 1e-3,
                 filter_candidates: Sequence[tuple[float, float]] = ((0.98, 0.0), (0.98, 2.0), (0.9, 2.0)),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01,
                 second_moment: str = "per_candidate", mode: str = "global", score: str = "current",
                 score_ema: float = 0.0, hysteresis: int = 10, initial: tuple[float, float] | None = None,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, filter_candidates=filter_candidates, betas=betas, eps=eps,
                                      weight_decay=weight_decay, second_moment=second_moment, mode=mode, score=score,
                                      score_ema=score_ema, hysteresis=hysteresis, initial=initial), **options)

    # ------------------------------------------------------------------------------------ validation
    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.betas(group["betas"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])
        V.choice("second_moment", group["second_moment"], SECOND_MOMENTS)
        if group.get("grad_filter") is not None:
            raise ValueError(f"Invalid grad_filter: {group['grad_filter']!r}; gap-grokfast chooses its own Grokfast "
                             "filter among filter_candidates (leave grad_filter=None)")
        init = group["initial"]
        if isinstance(init, Sequence) and not isinstance(init, str) and len(init) == 2:
            group["initial"] = tuple(float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else x
                                     for x in init)

    @staticmethod
    def _check_candidates(key: str, cands: Any) -> tuple:
        """A non-empty sequence of distinct (α, λ) filters, α in [0, 1), λ ≥ 0; all (α, 0) are one filter."""
        hint = "give a non-empty sequence of (alpha, lamb) pairs, alpha in [0, 1), lamb >= 0"
        if isinstance(cands, (str, bytes)) or not isinstance(cands, Sequence) or len(cands) == 0:
            raise ValueError(f"Invalid {key}: {cands!r}; {hint}")
        out = []
        for pair in cands:
            if isinstance(pair, (str, bytes)) or not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"Invalid {key}: {cands!r}; {pair!r} is not an (alpha, lamb) pair; {hint}")
            a, lam = pair
            for name, x in (("alpha", a), ("lamb", lam)):
                if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
                    raise ValueError(f"Invalid {key}: {cands!r}; {name} {x!r} is not a finite number")
            if not 0.0 <= a < 1.0:
                raise ValueError(f"Invalid {key}: {cands!r}; alpha {a!r} must lie in [0, 1)")
            if lam < 0:
                raise ValueError(f"Invalid {key}: {cands!r}; lamb {lam!r} must be >= 0")
            out.append((float(a), float(lam)))
        filters = [(a, lam) if lam else (None, 0.0) for a, lam in out]
        if len(set(filters)) != len(filters):
            raise ValueError(f"Invalid {key}: {cands!r}; filters must be distinct (every (alpha, 0) is the same "
                             "filter, plain AdamW: give one)")
        return tuple(out)

    def _initial_index(self, group: dict[str, Any]) -> int:
        cands = group["filter_candidates"]
        return 0 if group["initial"] is None else cands.index(group["initial"])

    # -------------------------------------------------------------------------------------- state
    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        cands = group["filter_candidates"]
        alphas, _ = _layout(cands)
        if alphas:
            state["filter_emas"] = p.new_zeros((len(alphas), *p.shape))
        if group["second_moment"] == "per_candidate":
            state["exp_avg_sqs"] = p.new_zeros((len(cands), *p.shape))
        else:
            state["exp_avg_sq"] = torch.zeros_like(p)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        b1, b2 = group["betas"]
        cands = group["filter_candidates"]
        c = {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "t": step, "bc1": 1 - b1 ** step,
             "bc2_sqrt": math.sqrt(1 - b2 ** step),
             "scale": [grokfast_adam_scale(a, lam, b1, step) for a, lam in cands]}
        if group["score"] == "next" and step > 1:
            c["prev_bc2_sqrt"] = math.sqrt(1 - b2 ** (step - 1))
            c["prev_scale"] = [grokfast_adam_scale(a, lam, b1, step - 1) for a, lam in cands]
        return c

    # -------------------------------------------------------------------------------------- kernel
    _denominator = staticmethod(GapAdam._denominator)  # √(v/(1−β₂ᵗ)) + ε, as in gap-adam

    @staticmethod
    def _scores(m: Tensor, g: Tensor, d: Tensor, scale: list[float]) -> list[float]:
        """J_j = ⟨g, m_j/d_j⟩·scale_j / mean(1/d_j); d is (K, *shape) or shared (*shape); float32 or better."""
        acc = torch.float64 if g.dtype == torch.float64 else torch.float32
        k = m.shape[0]
        inv = torch.reciprocal(d).to(acc).reshape(1 if d.shape == g.shape else k, g.numel())
        w = inv.mean(dim=1)
        raw = ((m.reshape(k, -1).to(acc) * inv) @ g.reshape(-1).to(acc)) / w
        return [float(x) * s for x, s in zip(raw.double().tolist(), scale)]

    def _first_pass(self, p, g, st, c, group, scratch) -> list[float]:
        cands = group["filter_candidates"]
        alphas, index = _layout(cands)
        per = group["second_moment"] == "per_candidate"
        m = st["exp_avgs"]
        v = st["exp_avg_sqs"] if per else st["exp_avg_sq"]
        k = m.shape[0]
        scores = [0.0] * k
        if group["score"] == "next" and c["t"] > 1:
            scores = self._scores(m, g, self._denominator(v, c["prev_bc2_sqrt"], c["eps"]), c["prev_scale"])
        if alphas:
            e = st["filter_emas"]
            if c["t"] == 1:
                e.copy_(g.unsqueeze(0).expand_as(e))
            else:
                weight = torch.tensor([1 - a for a in alphas], dtype=e.dtype, device=e.device)
                e.lerp_(g.unsqueeze(0).expand_as(e), weight.view(len(alphas), *([1] * g.ndim)))
        gh = g.unsqueeze(0).repeat(k, *([1] * g.ndim))
        for j, (_, lam) in enumerate(cands):
            if lam:
                gh[j].add_(st["filter_emas"][index[j]], alpha=lam)
        m.lerp_(gh, 1 - c["b1"])
        if per:
            v.mul_(c["b2"]).addcmul_(gh, gh, value=1 - c["b2"])
        else:
            v.mul_(c["b2"]).addcmul_(g, g, value=1 - c["b2"])
        d = scratch["d"] = self._denominator(v, c["bc2_sqrt"], c["eps"])  # reused by the second pass
        if group["score"] == "current":
            scores = self._scores(m, g, d, c["scale"])
        return scores

    @staticmethod
    def _denom_of(d: Tensor, g: Tensor, j: int) -> Tensor:
        return d if d.shape == g.shape else d[j]

    def _direction(self, p, g, st, c, j, group, scratch) -> Tensor:
        return st["exp_avgs"][j] / self._denom_of(scratch["d"], g, j) * (c["lr"] / c["bc1"])

    def _apply(self, p, g, st, c, j, group, scratch) -> None:
        p.addcdiv_(st["exp_avgs"][j], self._denom_of(scratch["d"], g, j), value=-c["lr"] / c["bc1"])


register(OptimizerInfo(
    name="gap-grokfast", cls=GapGrokfast, family="gap", paper="arXiv:2512.06370 (rule); arXiv:2405.20233 (Grokfast)",
    description="AdamW choosing its Grokfast EMA gradient pre-filter (α, λ) every step among K candidates (default "
                "(0.98, 0) = plain AdamW, (0.98, 2), (0.9, 2)) by unit-ℓ2 filter alignment with the gradient; "
                "per-candidate first and second moments, one EMA per distinct α.",
    state_tensors=8, has_betas=True, has_momentum=True, supports_foreach=False, test_hparams={"lr": 0.05},
))
