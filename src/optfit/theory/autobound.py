"""Quadratic Taylor enclosures with an interval remainder (AutoBound: Streeter & Dillon, "Automatically Bounding the
Taylor Remainder Series: Tighter Bounds and New Applications", arXiv 2212.11429), for the loss of a network along
one direction in parameter space. They are what ``optfit.optim.universal_mm`` minimises.

Fix a direction Δ (one tensor per parameter) and a trust region t ∈ [0, R]. Every value y(t) computed from the
parameters θ + tΔ is enclosed elementwise as

    y(t) ∈ y₀ + y₁ t + [lo, hi] t²        for every t ∈ [0, R]                                        (★)

(an :class:`Enclosure`). y₀ is the value at θ and y₁ the exact directional derivative; only the t² coefficient is
an interval. The enclosure of the loss gives the quadratic upper bound L(t) ≤ L₀ + L₁ t + hi·t² on [0, R].

Rules (``I`` = the interval of the t² coefficient, ζ(t) ∈ I its value at t, and D = y₁ + I·[0, R] the interval
holding the difference quotient (y(t) − y₀)/t, so that y(t) − y₀ = t·D):

* constants (the batch) and reshapes (``nn.Flatten``, ``nn.Unflatten``, ``nn.Identity``): exact.
* ``nn.Linear`` with W(t) = W + tV, b(t) = b + tv and input h(t) = h₀ + h₁t + ζt²:
      y₀ = h₀Wᵀ + b,  y₁ = h₁Wᵀ + h₀Vᵀ + v,  y₂ ∈ I·Wᵀ + h₁Vᵀ + [0, R]·(I·Vᵀ)
  (an interval vector times a real matrix in midpoint–radius form, which is the exact range); exact (I = 0) for
  the first layer, whose input does not depend on t.
* smooth activations σ (tanh, sigmoid, softplus, GELU (erf form), SiLU): with u(t) = u₀ + tD,
      σ(u) = σ(u₀) + σ'(u₀)(u − u₀) + r·(u − u₀)²,   r ∈ ½·[min σ'', max σ''] over u₀ + [0, R]·D
  (Lagrange form of the remainder), so y₁ = σ'(u₀)u₁ and y₂ ∈ σ'(u₀)·I + r·D². The range of σ'' over an interval is
  exact: σ'' is evaluated at the interval's ends and at the critical points of σ'' inside it (known in closed
  form, SiLU's by bisection). This is AutoBound's valid but not sharp enclosure: the exact range of the remainder
  ratio R(δ) = (σ(u₀+δ) − σ(u₀) − σ'(u₀)δ)/δ² is narrower (its sharp enclosures need per-function analysis).
* piecewise-linear activations (ReLU, LeakyReLU; slopes a below 0, b above): sharp. For u₀ ≠ 0 the ratio
  R(δ) is (b − a)·(d − |u₀|)/d² beyond the kink (d = |δ|) and 0 before it; its exact range over the reachable δ is
  (b − a)·[0, g*] with g* attained at d = min(d_max, 2|u₀|) (at most 1/(4|u₀|)). For u₀ = 0 the map is positively
  homogeneous: f(tD) = t f(D), so y₁ = f(u₁) and y₂ ∈ [min(a, b), max(a, b)]·I.
* losses, averaged over the batch as torch's defaults do:
  - MSE: e = y − target = e₀ + tD;  e² = e₀² + 2e₀e₁t + (2e₀ζ + D²)t², so L₂ ∈ mean(2e₀·I + D²) (exact square of
    an interval).
  - cross-entropy (log-sum-exp minus the target logit): LSE(z₀ + δ) = LSE(z₀) + p₀·δ + ½·Var_{p(ξ)}(δ) with p(ξ)
    the softmax at a point ξ of the segment; δ = tD, so the remainder is ½t²·Var_{p(ξ)}(D) ∈ [0, ½t²·V] with
    V = min(Popoviciu's (max D − min D)²/4, Σ_k p_k^max (D_k − c)²_max, max_k (D_k − c)²_max), c = p₀·mid(D), and
    p_k^max the largest softmax weight of class k over the box of logits the trust region reaches. The linear part
    gives L₂ ∈ (p₀ − e_y)·I.

Products t³, t⁴ that the rules meet are folded into the t² coefficient with t ∈ [0, R] (t·[lo, hi] ⊂
[min(0, R·lo), max(0, R·hi)]), as AutoBound does. The arithmetic is ordinary floating point (no outward rounding):
the bound is exact up to rounding errors of the order of the machine epsilon times the values.

Anything without a rule raises ``NotImplementedError`` naming the module (and its path in the model).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Enclosure",
    "LossBound",
    "constant",
    "linear",
    "smooth_activation",
    "piecewise_linear",
    "module_enclosure",
    "sequential_enclosure",
    "mse_enclosure",
    "cross_entropy_enclosure",
    "loss_enclosure",
    "check_supported",
    "supported_modules",
    "LOSSES",
]


# ------------------------------------------------------------------------------------------------- intervals
def _mul(alo: Tensor, ahi: Tensor, blo: Tensor, bhi: Tensor) -> tuple[Tensor, Tensor]:
    """[alo, ahi] · [blo, bhi] (exact interval product)."""
    prods = torch.stack([alo * blo, alo * bhi, ahi * blo, ahi * bhi])
    return prods.amin(0), prods.amax(0)


def _scale(c: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """c · [lo, hi] for a real c (elementwise)."""
    a, b = c * lo, c * hi
    return torch.minimum(a, b), torch.maximum(a, b)


def _square(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """{x² : x ∈ [lo, hi]} (exact)."""
    a, b = lo * lo, hi * hi
    top = torch.maximum(a, b)
    bottom = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(a), torch.minimum(a, b))
    return bottom, top


def _times_t(lo: Tensor, hi: Tensor, radius: float) -> tuple[Tensor, Tensor]:
    """{t·x : t ∈ [0, R], x ∈ [lo, hi]} = [min(0, R·lo), max(0, R·hi)]."""
    return (lo * radius).clamp(max=0.0), (hi * radius).clamp(min=0.0)


def _matmul_t(lo: Tensor, hi: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """{x Wᵀ : x ∈ [lo, hi]} (exact, midpoint–radius form)."""
    mid, rad = (lo + hi) / 2, (hi - lo) / 2
    centre, spread = mid @ weight.T, rad @ weight.abs().T
    return centre - spread, centre + spread


# ------------------------------------------------------------------------------------------------ enclosures
class Enclosure(NamedTuple):
    """y(t) ∈ value + slope·t + [lo, hi]·t² for every t ∈ [0, R], elementwise (R is carried by the caller)."""

    value: Tensor
    slope: Tensor
    lo: Tensor
    hi: Tensor

    def map(self, fn: Callable[[Tensor], Tensor]) -> "Enclosure":
        """Apply a linear, order-preserving reshape (flatten, view) to every coefficient."""
        return Enclosure(fn(self.value), fn(self.slope), fn(self.lo), fn(self.hi))

    def quotient(self, radius: float) -> tuple[Tensor, Tensor]:
        """D = slope + [lo, hi]·[0, R] ⊇ {(y(t) − y(0))/t : t ∈ (0, R]}."""
        dlo, dhi = _times_t(self.lo, self.hi, radius)
        return self.slope + dlo, self.slope + dhi

    def upper(self, t: float | Tensor) -> Tensor:
        return self.value + self.slope * t + self.hi * t * t

    def lower(self, t: float | Tensor) -> Tensor:
        return self.value + self.slope * t + self.lo * t * t


def constant(x: Tensor) -> Enclosure:
    """A value that does not depend on t (the batch)."""
    zero = torch.zeros_like(x)
    return Enclosure(x, zero, zero, zero)


def linear(h: Enclosure, weight: Tensor, weight_dir: Tensor | None, bias: Tensor | None,
           bias_dir: Tensor | None, radius: float) -> Enclosure:
    """y(t) = h(t)·(W + tV)ᵀ + (b + tv) (module docstring); ``None`` directions are zero."""
    value = h.value @ weight.T
    slope = h.slope @ weight.T
    lo, hi = _matmul_t(h.lo, h.hi, weight)
    if weight_dir is not None:
        slope = slope + h.value @ weight_dir.T
        cross = h.slope @ weight_dir.T
        clo, chi = _times_t(*_matmul_t(h.lo, h.hi, weight_dir), radius)
        lo, hi = lo + cross + clo, hi + cross + chi
    if bias is not None:
        value = value + bias
    if bias_dir is not None:
        slope = slope + bias_dir
    return Enclosure(value, slope, lo, hi)


def _from_remainder(u: Enclosure, f0: Tensor, f1: Tensor, rlo: Tensor, rhi: Tensor, radius: float) -> Enclosure:
    """σ(u(t)) from σ(u₀), σ'(u₀) and the remainder ratio r ∈ [rlo, rhi]: y₂ ∈ σ'(u₀)·I + r·D²."""
    dlo, dhi = u.quotient(radius)
    slo, shi = _square(dlo, dhi)
    qlo, qhi = _mul(rlo, rhi, slo, shi)
    llo, lhi = _scale(f1, u.lo, u.hi)
    return Enclosure(f0, f1 * u.slope, llo + qlo, lhi + qhi)


def _reach(u: Enclosure, radius: float) -> tuple[Tensor, Tensor]:
    """The interval u₀ + [0, R]·D holding u(t) for every t ∈ [0, R]."""
    dlo, dhi = _times_t(*u.quotient(radius), radius)
    return u.value + dlo, u.value + dhi


# ----------------------------------------------------------------------------------- smooth activations
class _Smooth(NamedTuple):
    f: Callable[[Tensor], Tensor]
    d1: Callable[[Tensor], Tensor]
    d2: Callable[[Tensor], Tensor]
    critical: tuple[float, ...]  # every critical point of d2 (where the third derivative vanishes)


def _sig(x: Tensor) -> Tensor:
    return torch.sigmoid(x)


def _silu_d3_sign(x: float) -> float:
    s = 1.0 / (1.0 + math.exp(-x))
    q, w = s * (1 - s), 1 - 2 * s
    return q * (w * (3 + x * w) - 2 * x * q)


def _bisect(fn: Callable[[float], float], a: float, b: float) -> float:
    fa = fn(a)
    for _ in range(200):
        m = (a + b) / 2
        if (fn(m) > 0) == (fa > 0):
            a, fa = m, fn(m)
        else:
            b = m
    return (a + b) / 2


_TANH_C = math.atanh(1 / math.sqrt(3))
_SIGMOID_C = math.log(2 + math.sqrt(3))
_SILU_C = _bisect(_silu_d3_sign, 0.5, 5.0)  # ≈ 2.3994
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)


def _gauss(x: Tensor) -> Tensor:
    return torch.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _phi(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


_TANH = _Smooth(torch.tanh, lambda x: 1 - torch.tanh(x) ** 2,
                lambda x: -2 * torch.tanh(x) * (1 - torch.tanh(x) ** 2), (-_TANH_C, _TANH_C))
_SIGMOID = _Smooth(_sig, lambda x: _sig(x) * (1 - _sig(x)),
                   lambda x: _sig(x) * (1 - _sig(x)) * (1 - 2 * _sig(x)), (-_SIGMOID_C, _SIGMOID_C))
_GELU = _Smooth(lambda x: x * _phi(x), lambda x: _phi(x) + x * _gauss(x), lambda x: _gauss(x) * (2 - x * x),
                (-2.0, 0.0, 2.0))
_SILU = _Smooth(lambda x: x * _sig(x), lambda x: _sig(x) * (1 + x * (1 - _sig(x))),
                lambda x: _sig(x) * (1 - _sig(x)) * (2 + x * (1 - 2 * _sig(x))), (-_SILU_C, 0.0, _SILU_C))


def _softplus(beta: float) -> _Smooth:
    """softplus_β(x) = log(1 + e^{βx})/β; torch's ``threshold`` linearisation (off by < e^{−threshold}/β) is
    ignored."""
    return _Smooth(lambda x: F.softplus(x * beta) / beta, lambda x: _sig(beta * x),
                   lambda x: beta * _sig(beta * x) * (1 - _sig(beta * x)), (0.0,))


def _d2_range(fn: _Smooth, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """The exact range of σ'' over [lo, hi]: its values at the ends and at the critical points inside."""
    points = [lo, hi] + [torch.minimum(torch.maximum(torch.full_like(lo, c), lo), hi) for c in fn.critical]
    values = torch.stack([fn.d2(x) for x in points])
    return values.amin(0), values.amax(0)


def smooth_activation(u: Enclosure, fn: _Smooth, radius: float) -> Enclosure:
    """σ(u(t)) for a C² activation (module docstring): r ∈ ½·range of σ'' over the reachable interval."""
    reach_lo, reach_hi = _reach(u, radius)
    dlo, dhi = _d2_range(fn, reach_lo, reach_hi)
    return _from_remainder(u, fn.f(u.value), fn.d1(u.value), dlo / 2, dhi / 2, radius)


def piecewise_linear(u: Enclosure, below: float, above: float, radius: float) -> Enclosure:
    """f(x) = below·x for x < 0, above·x for x ≥ 0 (ReLU: 0, 1; LeakyReLU: α, 1), sharp (module docstring)."""
    x0 = u.value
    positive = x0 > 0
    f1 = torch.where(positive, torch.full_like(x0, above), torch.full_like(x0, below))
    f0 = f1 * x0
    dlo, dhi = u.quotient(radius)
    delta_lo, delta_hi = _times_t(dlo, dhi, radius)
    gap = x0.abs()
    # how far past the kink the reachable δ goes: d_max = −δ_lo (u₀ > 0) or δ_hi (u₀ < 0)
    d_max = torch.where(positive, -delta_lo, delta_hi)
    crosses = d_max > gap
    d_star = torch.minimum(d_max, 2 * gap)
    tiny = torch.finfo(x0.dtype).tiny
    g_max = torch.where(crosses & (gap > 0), (d_star - gap) / (d_star * d_star).clamp_min(tiny), torch.zeros_like(x0))
    jump = above - below
    rlo, rhi = (torch.zeros_like(x0), jump * g_max) if jump >= 0 else (jump * g_max, torch.zeros_like(x0))
    out = _from_remainder(u, f0, f1, rlo, rhi, radius)
    # u₀ = 0: f(tD) = t·f(D), so y₁ = f(u₁) and y₂ ∈ [min slope, max slope]·I
    at_kink = x0 == 0
    if bool(at_kink.any()):
        s = u.slope
        slope0 = torch.where(s > 0, above * s, below * s)
        lo_s, hi_s = min(below, above), max(below, above)
        klo, khi = _mul(torch.full_like(x0, lo_s), torch.full_like(x0, hi_s), u.lo, u.hi)
        out = Enclosure(torch.where(at_kink, torch.zeros_like(x0), out.value), torch.where(at_kink, slope0, out.slope),
                        torch.where(at_kink, klo, out.lo), torch.where(at_kink, khi, out.hi))
    return out


# ------------------------------------------------------------------------------------------------- modules
def _activation_rule(module: nn.Module) -> Callable[[Enclosure, float], Enclosure] | None:
    if isinstance(module, nn.Tanh):
        return lambda u, r: smooth_activation(u, _TANH, r)
    if isinstance(module, nn.Sigmoid):
        return lambda u, r: smooth_activation(u, _SIGMOID, r)
    if isinstance(module, nn.Softplus):
        return lambda u, r: smooth_activation(u, _softplus(float(module.beta)), r)
    if isinstance(module, nn.GELU) and module.approximate == "none":
        return lambda u, r: smooth_activation(u, _GELU, r)
    if isinstance(module, nn.SiLU):
        return lambda u, r: smooth_activation(u, _SILU, r)
    if isinstance(module, nn.ReLU):
        return lambda u, r: piecewise_linear(u, 0.0, 1.0, r)
    if isinstance(module, nn.LeakyReLU):
        return lambda u, r: piecewise_linear(u, float(module.negative_slope), 1.0, r)
    return None


_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)


def supported_modules() -> tuple[str, ...]:
    """The module types with a bound rule (for messages and docs)."""
    return ("Sequential", "Linear", "Flatten", "Unflatten", "Identity", "Tanh", "Sigmoid", "Softplus",
            "GELU(approximate='none')", "SiLU", "ReLU", "LeakyReLU")


def _leaves(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    if isinstance(model, nn.Sequential):
        out = []
        for name, child in model.named_children():
            out.extend(_leaves(child, f"{prefix}.{name}" if prefix else name))
        return out
    return [(prefix or type(model).__name__, model)]


def _unsupported(path: str, module: nn.Module) -> NotImplementedError:
    return NotImplementedError(
        f"AutoBound has no bound rule for module {path!r} ({module!r}); supported: {', '.join(supported_modules())} "
        "(nested nn.Sequential of these)")


def check_supported(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's leaf modules in order (a lone supported module counts as a one-layer model);
    ``NotImplementedError`` naming the first one without a rule."""
    lone = isinstance(model, (nn.Linear, *_RESHAPES)) or _activation_rule(model) is not None
    if not isinstance(model, nn.Sequential) and not lone:
        raise NotImplementedError(
            f"AutoBound bounds nn.Sequential models (nested allowed); got {type(model).__name__}, whose forward it "
            f"cannot read. Supported modules: {', '.join(supported_modules())}")
    leaves = _leaves(model)
    for path, module in leaves:
        if not (isinstance(module, (nn.Linear, *_RESHAPES)) or _activation_rule(module) is not None):
            raise _unsupported(path, module)
    return leaves


def module_enclosure(module: nn.Module, h: Enclosure, directions: dict[int, Tensor], radius: float,
                     dtype: torch.dtype | None = None, path: str = "") -> Enclosure:
    """The enclosure of ``module(h(t))`` with its parameters moving along ``directions`` (keyed by ``id(param)``;
    missing = not moving); parameters and directions are cast to ``dtype`` (default: h's)."""
    dtype = dtype or h.value.dtype

    def cast(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.detach().to(dtype)

    if isinstance(module, nn.Linear):
        w, b = module.weight, module.bias
        return linear(h, cast(w), cast(directions.get(id(w))), cast(b),
                      None if b is None else cast(directions.get(id(b))), radius)
    if isinstance(module, _RESHAPES):
        return h.map(module)
    rule = _activation_rule(module)
    if rule is None:
        raise _unsupported(path or type(module).__name__, module)
    return rule(h, radius)


def sequential_enclosure(model: nn.Module, inputs: Tensor, directions: dict[int, Tensor], radius: float,
                         dtype: torch.dtype | None = None) -> Enclosure:
    """The enclosure of ``model(inputs)`` at θ + tΔ, t ∈ [0, radius] (``model``: nested ``nn.Sequential``)."""
    leaves = check_supported(model)
    dtype = dtype or inputs.dtype
    h = constant(inputs.detach().to(dtype))
    for path, module in leaves:
        h = module_enclosure(module, h, directions, radius, dtype, path)
    return h


# ---------------------------------------------------------------------------------------------------- losses
class LossBound(NamedTuple):
    """L(t) ∈ value + slope·t + [lo, hi]·t² on [0, radius] (0-d tensors)."""

    value: Tensor
    slope: Tensor
    lo: Tensor
    hi: Tensor
    radius: float

    def upper(self, t: float) -> float:
        return float(self.value + self.slope * t + self.hi * t * t)

    def minimiser(self) -> float:
        """argmin of the upper bound over [0, radius] (the smallest such t on ties; 0 when nothing beats t = 0)."""
        slope, curv, radius = float(self.slope), float(self.hi), self.radius
        if not (math.isfinite(slope) and math.isfinite(curv)):
            return 0.0
        candidates = [0.0, radius]
        if curv > 0:
            candidates.append(min(max(-slope / (2 * curv), 0.0), radius))
        best = min(candidates, key=lambda t: (slope * t + curv * t * t, t))
        return best if slope * best + curv * best * best < 0 else 0.0


def mse_enclosure(z: Enclosure, target: Tensor, radius: float) -> LossBound:
    """mean((z(t) − target)²) (``F.mse_loss`` with reduction='mean')."""
    e0 = z.value - target.to(z.value.dtype)
    dlo, dhi = z.quotient(radius)
    slo, shi = _square(dlo, dhi)
    llo, lhi = _scale(2 * e0, z.lo, z.hi)
    n = e0.numel()
    return LossBound((e0 * e0).sum() / n, (2 * e0 * z.slope).sum() / n, (llo + slo).sum() / n,
                     (lhi + shi).sum() / n, radius)


def cross_entropy_enclosure(z: Enclosure, target: Tensor, radius: float) -> LossBound:
    """mean over the batch of LSE(z(t)) − z_y(t) (``F.cross_entropy`` with class-index targets, reduction='mean');
    ``z`` has shape (N, C), ``target`` (N,)."""
    if z.value.ndim != 2:
        raise NotImplementedError(f"cross_entropy bounds logits of shape (N, C); got {tuple(z.value.shape)}")
    target = target.long()
    n = z.value.shape[0]
    z0 = z.value
    p0 = torch.softmax(z0, dim=1)
    onehot = F.one_hot(target, z0.shape[1]).to(z0.dtype)
    value = torch.logsumexp(z0, dim=1) - z0.gather(1, target[:, None])[:, 0]
    weight = p0 - onehot
    slope = (weight * z.slope).sum(1)
    lin_lo, lin_hi = _scale(weight, z.lo, z.hi)
    dlo, dhi = z.quotient(radius)
    # the logits reachable from z₀ over the trust region, and each class's largest softmax weight on that box
    xlo, xhi = z0 + (dlo * radius).clamp(max=0.0), z0 + (dhi * radius).clamp(min=0.0)
    # p_k ≤ σ(x_k^hi − log Σ_{j≠k} exp(x_j^lo)), the rest summed in log space (an empty rest gives p_k ≤ 1)
    shift = xlo.amax(1, keepdim=True)
    e = torch.exp(xlo - shift)
    rest = torch.log((e.sum(1, keepdim=True) - e).clamp_min(0.0)) + shift
    p_max = torch.sigmoid(xhi - rest)
    centre = (p0 * (dlo + dhi) / 2).sum(1, keepdim=True)
    spread = torch.maximum((dlo - centre) ** 2, (dhi - centre) ** 2)
    popoviciu = (dhi.amax(1) - dlo.amin(1)) ** 2 / 4
    weighted = torch.nan_to_num((p_max * spread).sum(1), nan=math.inf)
    variance = torch.minimum(torch.minimum(popoviciu, weighted), spread.amax(1))
    curv_hi = variance / 2
    return LossBound(value.sum() / n, slope.sum() / n, lin_lo.sum() / n, (lin_hi.sum(1) + curv_hi).sum() / n,
                     radius)


LOSSES: dict[str, Callable[[Enclosure, Tensor, float], LossBound]] = {
    "mse": mse_enclosure,
    "cross_entropy": cross_entropy_enclosure,
}


def loss_enclosure(model: nn.Module, inputs: Tensor, targets: Tensor, loss: str, directions: dict[int, Tensor],
                   radius: float, dtype: torch.dtype | None = None) -> LossBound:
    """The quadratic enclosure of ``loss(model(inputs), targets)`` at θ + tΔ over t ∈ [0, radius]."""
    if loss not in LOSSES:
        raise ValueError(f"Invalid loss: {loss!r} (choose one of {', '.join(map(repr, LOSSES))})")
    z = sequential_enclosure(model, inputs, directions, radius, dtype)
    return LOSSES[loss](z, targets, radius)
