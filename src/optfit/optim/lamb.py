"""Layer-wise trust ratios: LAMB (You et al., arXiv 1904.00962, Algorithm 2) and LARS (You, Gitman & Ginsburg,
arXiv 1708.03888, Algorithm 1). A "layer" is one parameter tensor; every norm below is that tensor's ‖·‖₂.

LAMB (``Lamb``), with φ(z) = min(max(z, γ_l), γ_u):

    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)g²
    r = (m/(1−β₁ᵗ)) / (√(v/(1−β₂ᵗ)) + ε)           (bias_correction=False: r = m/(√v + ε))
    u = r + λθ                                       (decay_mode="decoupled", the paper's; "coupled": g ← g + λθ)
    θ ← θ − η · φ(‖θ‖)/‖u‖ · u

LARS (``LARS``), η_tc the trust coefficient, μ the momentum, β the weight decay:

    λ_l = η_tc · ‖θ‖ / (‖g‖ + β‖θ‖)                  (local learning rate)
    b ← μb + λ_l(g + βθ) ;  θ ← θ − γ·b              (nesterov: θ ← θ − γ(λ_l(g + βθ) + μb))

Where the formulas divide by zero (‖θ‖ = 0, e.g. a zero-initialised bias, or a zero update) the ratio is 1, as in
the authors' LAMB code (TF Addons) and the LARS implementations of TF, optax and pytorch_optimizer: the paper's
formula would give 0 and the tensor would never move. ``layer_adaptation=False`` (per param group) sets the ratio
to 1 for that group (the usual treatment of biases and norm gains: put them in a group with it and
``weight_decay=0``).

Deviations, and the reference packages:

* LAMB's defaults (φ(z) = z, i.e. γ_l = 0 and γ_u = ∞; ε = 1e-6) are those of the authors' implementation, the
  TF Addons LAMB the paper links, which this one matches formula for formula; the paper's analysis asks
  for finite bounds, which ``phi_bounds`` sets. ``pytorch_optimizer.Lamb`` (4.1.0) is not the paper's Algorithm 2:
  it does not bias-correct v, divides by 1−β₁ᵗ *outside* the trust ratio (so the first steps are up to 1/(1−β₁)
  times longer), adds ε to ‖u‖, fixes γ_u = 10 and, by default, decays θ ← θ(1−ηλ) outside the ratio; the tests
  show each difference.
* LARS's momentum is torch.optim's form (γ outside the buffer). The paper writes v ← μv + γλ_l(g + βθ),
  θ ← θ − v: identical for a constant γ, but under a schedule the paper's buffer keeps moving θ after γ → 0,
  which the torch.optim contract (an lr scheduled to 0 freezes the parameters) forbids. ``pytorch_optimizer.LARS``
  uses the same form but silently skips the trust ratio and the decay for tensors with ≤ 1 dimension; here that is
  ``layer_adaptation=False, weight_decay=0`` in their param group.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach, adam_step, adam_step_foreach

__all__ = ["Lamb", "LARS"]


def _norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x)


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """num/den where both are > 0, else 1 (element-wise over 0-d or stacked norms)."""
    return torch.where((num > 0) & (den > 0), num / den, torch.ones_like(num))


def _check_decay_mode(name: str, group: dict[str, Any], allowed: tuple[str, ...], meaning: str) -> None:
    if group.get("decay_mode") not in allowed:
        raise ValueError(f"Invalid decay_mode: {group.get('decay_mode')!r} for {name} (choose {meaning})")


class Lamb(ElementwiseOptimizer):
    """LAMB: Adam's direction (plus λθ) rescaled per tensor to length η·φ(‖θ‖).

    ``weight_decay`` is the paper's λθ added to the Adam direction inside the trust ratio
    (``decay_mode="decoupled"``) or L2 added to the gradient (``"coupled"``); it is never masked by ``cautious``.
    ``phi_bounds=(γ_l, γ_u)`` clamps ‖θ‖ in the ratio's numerator.
    """

    default_decay_mode = "decoupled"
    handles_weight_decay = True

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0, bias_correction: bool = True,
                 phi_bounds: tuple[float, float] = (0.0, math.inf), layer_adaptation: bool = True,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      bias_correction=bias_correction, phi_bounds=phi_bounds,
                                      layer_adaptation=layer_adaptation), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.flag("bias_correction", group["bias_correction"])
        V.flag("layer_adaptation", group["layer_adaptation"])
        bounds = group["phi_bounds"]
        if (not isinstance(bounds, (tuple, list)) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
                or not (0 <= bounds[0] < math.inf and bounds[0] <= bounds[1])):
            raise ValueError(f"Invalid phi_bounds: {bounds!r} (expected (γ_l, γ_u) with 0 <= γ_l <= γ_u, "
                             "γ_l finite, γ_u may be math.inf)")
        _check_decay_mode("Lamb", group, ("decoupled", "coupled"),
                          "'decoupled' for the paper's λθ inside the trust ratio or 'coupled' for L2")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        corrected = group["bias_correction"]
        lo, hi = group["phi_bounds"]
        # adam_step's "step_size" scales the Adam direction r (the lr is applied after the trust ratio)
        return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "wd": group["weight_decay"],
                "step_size": 1.0 / (1 - b1**step) if corrected else 1.0,
                "bc2_sqrt": math.sqrt(1 - b2**step) if corrected else 1.0, "phi_lo": lo, "phi_hi": hi}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        decay = group["decay_mode"] if group["weight_decay"] else "none"
        return (decay, group["layer_adaptation"])

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        decay, layer_adaptation = flags
        if decay == "coupled":
            g = g + c["wd"] * p
        m, v = adam_moments(g, st, c)
        u = adam_step(m, v, c)
        if decay == "decoupled":
            u = u + c["wd"] * p
        if not layer_adaptation:
            return c["lr"] * u
        phi = _norm(p).clamp(c["phi_lo"], c["phi_hi"])
        return (c["lr"] * _safe_ratio(phi, _norm(u))) * u

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        decay, layer_adaptation = flags
        if decay == "coupled":
            gs = torch._foreach_add(gs, ps, alpha=c["wd"])
        m, v = adam_moments_foreach(gs, st, c)
        u = adam_step_foreach(m, v, c)
        if decay == "decoupled":
            torch._foreach_add_(u, ps, alpha=c["wd"])
        if not layer_adaptation:
            torch._foreach_mul_(u, c["lr"])
            return u
        phi = torch.stack(torch._foreach_norm(ps)).clamp(c["phi_lo"], c["phi_hi"])
        ratio = c["lr"] * _safe_ratio(phi, torch.stack(torch._foreach_norm(u)))
        torch._foreach_mul_(u, ratio.unbind())
        return u


class LARS(ElementwiseOptimizer):
    """LARS: momentum SGD whose step per tensor is scaled by η_tc‖θ‖/(‖g‖ + β‖θ‖).

    ``weight_decay`` (the paper's β) is L2 on the gradient inside the local learning rate (``decay_mode="coupled"``,
    the only mode). ``lr`` defaults to 1: the relative step of a tensor is about γ·η_tc, so with η_tc = 1e-3 each step
    moves it by about 0.1 % of its norm (torch's SGD default γ = 1e-3 would make that 1e-6).
    """

    default_decay_mode = "coupled"
    handles_weight_decay = True

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 1e-3, nesterov: bool = False, layer_adaptation: bool = True,
                 **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      trust_coefficient=trust_coefficient, nesterov=nesterov,
                                      layer_adaptation=layer_adaptation), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.in_range("momentum", group["momentum"], 0.0, 1.0)
        V.nonneg("weight_decay", group["weight_decay"])
        V.positive("trust_coefficient", group["trust_coefficient"])
        V.flag("nesterov", group["nesterov"])
        V.flag("layer_adaptation", group["layer_adaptation"])
        if group["nesterov"] and group["momentum"] <= 0:
            raise ValueError("Invalid nesterov: Nesterov momentum requires momentum > 0")
        _check_decay_mode("LARS", group, ("coupled",), "'coupled': the paper's β inside the local learning rate")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] > 0 else ()

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {"lr": group["lr"], "mu": group["momentum"], "wd": group["weight_decay"],
                "eta": group["trust_coefficient"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        return (group["momentum"] > 0, group["nesterov"], group["layer_adaptation"], group["weight_decay"] != 0)

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        has_momentum, nesterov, layer_adaptation, decays = flags
        u = g + c["wd"] * p if decays else g
        if layer_adaptation:
            w = _norm(p)
            u = u * _safe_ratio(c["eta"] * w, _norm(g) + c["wd"] * w)
        if has_momentum:
            b = st["momentum_buffer"]
            b.mul_(c["mu"]).add_(u)
            u = u + c["mu"] * b if nesterov else b
        return c["lr"] * u

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        has_momentum, nesterov, layer_adaptation, decays = flags
        u = torch._foreach_add(gs, ps, alpha=c["wd"]) if decays else list(gs)
        if layer_adaptation:
            w = torch.stack(torch._foreach_norm(ps))
            ratio = _safe_ratio(c["eta"] * w, torch.stack(torch._foreach_norm(gs)) + c["wd"] * w)
            u = torch._foreach_mul(u, ratio.unbind())
        if has_momentum:
            bufs = st["momentum_buffer"]
            torch._foreach_mul_(bufs, c["mu"])
            torch._foreach_add_(bufs, u)
            u = torch._foreach_add(u, bufs, alpha=c["mu"]) if nesterov else bufs
        return torch._foreach_mul(u, c["lr"])


register(OptimizerInfo(
    name="lamb", cls=Lamb, family="adaptive", paper="arXiv:1904.00962",
    description="LAMB: bias-corrected Adam direction plus λθ, rescaled per tensor by the trust ratio "
                "φ(‖θ‖)/‖r + λθ‖ (φ clamps ‖θ‖ to phi_bounds; identity by default).",
    state_tensors=2, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
register(OptimizerInfo(
    name="lars", cls=LARS, family="first-order", paper="arXiv:1708.03888",
    description="LARS: momentum SGD with the per-tensor local lr η_tc‖θ‖/(‖g‖ + β‖θ‖) on g + βθ (torch-style "
                "momentum: lr outside the buffer).",
    state_tensors=1, has_momentum=True, test_hparams={"trust_coefficient": 0.02},
))
