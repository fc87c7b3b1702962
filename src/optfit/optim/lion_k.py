"""Lion-𝒦 (Chen, Liu, Liang & Liu, "Lion Secretly Solves Constrained Optimization: As Lyapunov Predicts",
arXiv 2310.05898): Lion with ``sign`` replaced by the (sub)gradient of a convex function 𝒦. In optfit's
sign convention (m is the EMA of +g; the paper's momentum is −m, and every 𝒦 below is even, so ∇𝒦 is odd):

    θ ← θ(1 − ηλ)                       (decoupled decay, applied by the base)
    c = β₁m + (1−β₁)g
    θ ← θ − η ∇𝒦(c)
    m ← β₂m + (1−β₂)g

By the paper's Lyapunov analysis the iterates solve min f(θ) + α·𝒦*(λθ) (a constant α > 0): f under the constraint
or penalty given by the conjugate 𝒦* (the bracket below). The choices (``k``), with e = ``smoothing``, p = ``p``:

    "l1"            𝒦 = ‖x‖₁                  ∇𝒦 = sign(x)                          (Lion: ‖θ‖∞ ≤ 1/λ)
    "l2"            𝒦 = Σ_T ‖x_T‖₂            ∇𝒦 = x/‖x‖₂                           (‖θ_T‖₂ ≤ 1/λ)
    "lp"            𝒦 = Σ_T ‖x_T‖_p  (p ≥ 1)  ∇𝒦 = sign(x)|x|^{p−1}/‖x‖_p^{p−1}     (‖θ_T‖_q ≤ 1/λ, 1/p+1/q = 1)
    "huber"         𝒦 = Σ_i huber_e(x_i)      ∇𝒦 = clip(x/e, −1, 1)                 (box + (e/2)‖·‖² penalty)
    "relativistic"  𝒦 = Σ_i √(x_i² + e²)      ∇𝒦 = x/√(x² + e²)                     (box + −e·Σ√(1−y²) penalty)
    "entropy"       𝒦 = Σ_i e·log cosh(x_i/e)  ∇𝒦 = tanh(x/e)                        (box + binary-entropy penalty)

The three smooth choices tend to Lion as e → 0. The norms are taken per parameter tensor T (𝒦 is the sum over
tensors, itself a convex 𝒦 of the family; the paper writes one vector x); ∇𝒦(0) = 0. ``k="l1"`` is optfit's
``Lion`` bit for bit (same kernels). ``lion-k-l2`` steps have norm η per tensor, not η√n as Lion's: scale the lr.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from .lion import Lion

__all__ = ["LionK", "K_CHOICES"]

K_CHOICES = ("l1", "l2", "lp", "huber", "relativistic", "entropy")
_SMOOTH = ("huber", "relativistic", "entropy")


def _tiny(x: Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def grad_k(x: Tensor, k: str, c: dict[str, Any]) -> Tensor:
    """∇𝒦(x) for one tensor (``c["p"]``, ``c["e"]``: the exponent and the smoothing width)."""
    if k == "l1":
        return x.sign()
    if k == "l2":
        return x / torch.linalg.vector_norm(x).clamp_min(_tiny(x))
    if k == "lp":  # (|x|/‖x‖_p)^{p−1}, with |x| first scaled by its max so |x|^p cannot overflow
        a = x.abs()
        a = a / a.amax().clamp_min(_tiny(x))
        norm = a.pow(c["p"]).sum().pow(1.0 / c["p"]).clamp_min(_tiny(x))
        return x.sign() * (a / norm).pow(c["p"] - 1.0)
    if k == "huber":
        return (x / c["e"]).clamp(-1.0, 1.0)
    if k == "relativistic":
        return x / (x * x + c["e"] * c["e"]).sqrt()
    return (x / c["e"]).tanh()  # "entropy"


class LionK(Lion):
    """Lion-𝒦: ``k`` picks 𝒦 (see the module docstring); ``p`` is the exponent of ``k="lp"`` (required there),
    ``smoothing`` the width e of the smooth choices. ``weight_decay`` is decoupled by default, as in Lion."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, k: str = "l1", p: float | None = None, smoothing: float = 1e-3,
                 **options: Any) -> None:
        super(Lion, self).__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay, k=k, p=p,
                                                smoothing=smoothing), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        super()._validate(group)
        V.choice("k", group["k"], K_CHOICES)
        if group["k"] == "lp":
            if group["p"] is None:
                raise ValueError("Invalid p: None (k='lp' needs the exponent p >= 1)")
            if V._num("p", group["p"]) < 1:
                raise ValueError(f"Invalid p: {group['p']!r} (must be >= 1 for a convex 𝒦 = ‖·‖_p)")
        elif group["p"] is not None:
            V._num("p", group["p"])
        V.positive("smoothing", group["smoothing"])

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        c = super()._coefficients(group, step)
        if group["k"] == "lp":
            c["p"] = float(group["p"])
        if group["k"] in _SMOOTH:
            c["e"] = float(group["smoothing"])
        return c

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["k"],)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        if flags[0] == "l1":
            return Lion._update(p, g, st, c, flags)
        return c["lr"] * grad_k(Lion._interpolate(g, st, c), flags[0], c)

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        k = flags[0]
        if k == "l1":
            return Lion._update_foreach(ps, gs, st, c, flags)
        mix = Lion._interpolate_foreach(gs, st, c)
        if k == "l2":
            norms = torch._foreach_norm(mix)
            torch._foreach_clamp_min_(norms, _tiny(mix[0]))
            steps = torch._foreach_div(mix, norms)
        else:
            steps = [grad_k(x, k, c) for x in mix]
        torch._foreach_mul_(steps, c["lr"])
        return steps


_LION_K = dict(family="sign-based", state_tensors=1, has_betas=True, has_momentum=True)
_K_PAPER = "arXiv:2310.05898"
register(OptimizerInfo(name="lion-k", cls=LionK, paper=_K_PAPER, test_hparams={"lr": 0.02},
                       description="Lion-𝒦: θ ← θ − η∇𝒦(β₁m + (1−β₁)g), m tracked with β₂; k picks 𝒦 (l1 = Lion, l2, "
                                   "lp, huber, relativistic, entropy); decoupled decay.", **_LION_K))
register(OptimizerInfo(name="lion-k-l2", cls=LionK, preset={"k": "l2"}, paper=_K_PAPER,
                       test_hparams={"lr": 0.05},
                       description="Lion-𝒦 with 𝒦 = ‖·‖₂ per tensor: normalised momentum steps c/‖c‖ of length η; "
                                   "solves ‖θ_T‖₂ ≤ 1/λ.", **_LION_K))
register(OptimizerInfo(name="lion-k-huber", cls=LionK, preset={"k": "huber"}, paper=_K_PAPER,
                       test_hparams={"lr": 0.02},
                       description="Lion-𝒦 with the Huber 𝒦: ∇𝒦 = clip(c/e, −1, 1), linear near 0, sign beyond e.",
                       **_LION_K))
register(OptimizerInfo(name="lion-k-relativistic", cls=LionK, preset={"k": "relativistic"}, paper=_K_PAPER,
                       test_hparams={"lr": 0.02},
                       description="Lion-𝒦 with the relativistic 𝒦 = Σ√(x² + e²): ∇𝒦 = c/√(c² + e²).", **_LION_K))
register(OptimizerInfo(name="lion-k-entropy", cls=LionK, preset={"k": "entropy"}, paper=_K_PAPER,
                       test_hparams={"lr": 0.02},
                       description="Lion-𝒦 with 𝒦 = Σ e·log cosh(x/e): ∇𝒦 = tanh(c/e) (binary-entropy "
                                   "regularised box).", **_LION_K))
