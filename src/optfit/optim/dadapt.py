"""D-Adaptation (Defazio & Mishchenko, "Learning-Rate-Free Learning by D-Adaptation", ICML 2023,
arXiv 2301.07733): the step size is d·lr, where d is a running lower bound on the distance D = ‖x₀ − x*‖ from
the start to a solution, built from the gradients and steps seen so far (lr is a multiplier, default 1).

D-Adapt SGD (``dadapt-sgd``), dual averaging with momentum β (``momentum``):

    λ_k = lr·d_k / ‖g₀‖                      (‖g₀‖: the first step's gradient norm over every parameter)
    r_{k+1} = r_k + λ_k ⟨g_k, s_k⟩ ;  s_{k+1} = s_k + λ_k g_k
    x_{k+1} = β x_k + (1−β)(x₀ − s_{k+1})
    d̂ = 2 r_{k+1} / ‖s_{k+1}‖₂ ;  d_{k+1} = max(d_k, min(d̂, d_k·growth_rate))

D-Adapt Adam (``dadapt-adam``), with λ_k = lr·d_k·bc_k (bc_k = √(1−β₂ᵏ)/(1−β₁ᵏ) if ``use_bias_correction``
else 1) and A_k = √v_k + ε:

    r_{k+1} = √β₂ r_k + (1−√β₂) λ_k ⟨g_k, s_k / A_k⟩        (s_k and A_k before this step's update)
    m_{k+1} = β₁m_k + (1−β₁) λ_k g_k ;  v_{k+1} = β₂v_k + (1−β₂) g_k²
    s_{k+1} = √β₂ s_k + (1−√β₂) λ_k g_k
    x_{k+1} = x_k − m_{k+1} / (√v_{k+1} + ε)
    d̂ = r_{k+1} / ((1−√β₂) ‖s_{k+1}‖₁) ;  d_{k+1} = max(d_k, min(d̂, d_k·growth_rate))

d is one number for the whole model: r and ‖s‖ are summed over every parameter of every param group (a two-pass
step: each group's share is collected, then d is updated once). The estimate's state lives in the param groups,
as in the authors' package (``dadaptation`` 3.2): ``group["d"]`` (the same in every group; d·lr is the effective
learning rate), ``group["numerator_weighted"]`` (r) and, for SGD, ``group["g0_norm"]``; torch's state_dict
carries them, so a resumed run continues bit for bit. ``d0``, ``growth_rate`` (and Adam's ``betas``, whose √β₂
is the estimate's decay) shape that single estimate and must be equal in every group.

Where this follows or leaves the package, and why:

* The SGD and Adam variants (the paper's Section 6) follow the package, the authors' own code for them: the
  (1−√β₂) factors, r built from s_k and A_k of before the step, the factor 2 in SGD's d̂ (so the convexity
  bound is d ≤ 2D rather than the D of the paper's dual-averaging analysis), ``growth_rate`` (∞ = off).
* Param-group lr: the package takes lr = the largest group lr for every group and allows other groups only
  lr = 0 (such a group adds nothing to d's sums and keeps its state). Here λ_k uses each group's own lr, which
  is the same whenever the lrs are equal or 0, and a group at lr = 0 is skipped entirely: no statistics, no
  state update, no move, no decay (the package still decays it with ``decouple=True``, and SGD's momentum
  still pulls it toward x₀ − s). ``layer_scale`` (Adam) is the package's per-group multiplier: it scales the
  group's step and its weight in r and ‖s‖₁ (not s itself), exactly as the package.
* Weight decay: Adam's ``decouple`` (the package's flag) sets ``decay_mode``: False (the package's default) =
  "coupled" (L2 into g, before every statistic), True = "decoupled" θ ← θ(1 − λ_wd·lr·d·bc); "independent"
  is θ ← θ(1 − λ_wd·lr/initial_lr). SGD supports only L2 (coupled): x is rebuilt from x₀ − s every step, so a
  multiplicative decay would not accumulate. The package decays every group by the first group's
  weight_decay; here each group uses its own (``create_optimizer`` gives biases and norms 0).
* SGD's ‖g₀‖ includes the L2 term (the package means to add it but the non-in-place ``grad.add`` drops it, so
  the two agree only when λ_wd = 0 or x₀ = 0). A first step with ‖g₀‖ = 0 moves nothing and ‖g₀‖ is taken again
  at the next step (the package divides by zero). SGD keeps s and x₀ (2 tensors); z = x₀ − s is recomputed.
* When ‖s‖ is 0 (no gradient yet) d and r are left unchanged (the package returns early there).
* Left out: ``fsdp_in_use`` (sharded parameters: d would need an all-reduce of r and ‖s‖; not supported) and
  ``log_every`` (read ``group["d"]``).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import _LOW_PRECISION, ElementwiseOptimizer

__all__ = ["DAdaptAdam", "DAdaptSGD"]


# ----------------------------------------------------------------------------------- shared helpers
def check_growth_rate(value: Any) -> None:
    """``growth_rate`` ≥ 1 (∞ allowed): d may then never shrink."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < 1:
        raise ValueError(f"Invalid growth_rate: {value!r} (must be >= 1; float('inf') for no limit)")


def apply_decouple(group: dict[str, Any]) -> None:
    """The package's ``decouple`` flag, when given (not None), sets ``decay_mode``."""
    if group["decouple"] is not None:
        V.flag("decouple", group["decouple"])
        group["decay_mode"] = "decoupled" if group["decouple"] else "coupled"


def _acc(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _LOW_PRECISION else t


def dots(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    """⟨x_i, y_i⟩ of each pair as a float64 vector, summed in float64 (so every impl agrees to ~1e-16; products of
    low-precision tensors are taken in float32)."""
    dev = xs[0].device
    return torch.stack([torch.sum(_acc(x) * _acc(y), dtype=torch.float64).to(dev) for x, y in zip(xs, ys)])


def l1_norms(xs: list[Tensor], foreach: bool) -> Tensor:
    """‖x_i‖₁ of each tensor as a float64 vector, summed in float64."""
    dev = xs[0].device
    if foreach and len({x.device for x in xs}) == 1:
        norms = torch._foreach_norm(xs, 1, dtype=torch.float64)
    else:
        norms = [torch.sum(x.abs(), dtype=torch.float64) for x in xs]
    return torch.stack([n.to(dev) for n in norms])


def scaled_add_(dst: list[Tensor], src: list[Tensor], decay: float | None, scale: float, foreach: bool) -> None:
    """``dst ← decay·dst + scale·src`` (no decay when ``decay`` is None), per tensor or with foreach ops. The product
    is formed first: ``scale`` (Prodigy's (d/d₀)·λ) may exceed the float32 range, which ``alpha=`` refuses."""
    if foreach:
        if decay is not None:
            torch._foreach_mul_(dst, decay)
        torch._foreach_add_(dst, torch._foreach_mul(src, scale))
        return
    for d, s in zip(dst, src):
        if decay is not None:
            d.mul_(decay)
        d.add_(s * scale)


def pending_totals(pending: list[Tensor]) -> list[float]:
    """Sum the per-bucket float64 vectors collected by the first pass (one host sync per step)."""
    dev = pending[0].device
    return torch.stack([x.to(dev) for x in pending]).sum(0).tolist()


class DistanceEstimator(ElementwiseOptimizer):
    """Shared by D-Adaptation and Prodigy: one estimate d for all param groups, stored (the same) in every group.

    ``GLOBAL_KEYS`` are hyperparameters of that estimate, which must agree across groups; ``initial_estimate``
    gives the estimate's state keys and starting values (read from the first group, written to all)."""

    two_pass = True
    GLOBAL_KEYS: ClassVar[tuple[str, ...]] = ("d0", "growth_rate")

    @staticmethod
    def initial_estimate(d0: float) -> dict[str, Any]:
        return {"d": d0}

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if self.param_groups:
            first = self.param_groups[0]
            for key in self.GLOBAL_KEYS:
                value = param_group.get(key, self.defaults[key])
                if value != first[key]:
                    raise ValueError(f"Invalid {key}: {value!r} ({type(self).__name__}'s estimate d spans all param "
                                     f"groups, so {key} must equal the first group's {first[key]!r})")
            param_group = {**param_group, **{k: first[k] for k in self.initial_estimate(1.0)}}
        super().add_param_group(param_group)

    @property
    def estimate(self) -> dict[str, Any]:
        """The estimate's current values (``d`` and its running sums), as stored in the param groups."""
        return {k: self.param_groups[0][k] for k in self.initial_estimate(1.0)}

    def effective_lr(self) -> float:
        """The next step's size as a learning rate: d·lr of the first param group (Adam's bias correction aside)."""
        first = self.param_groups[0]
        return float(first["d"] * first["lr"])

    def _store_estimate(self, **values: Any) -> None:
        for group in self.param_groups:
            group.update(values)


# ---------------------------------------------------------------------------------------------- Adam
class DAdaptAdam(DistanceEstimator):
    """Adam with D-Adapted step size d·lr (lr a multiplier, default 1); ``group["d"]`` holds d."""

    default_decay_mode = "coupled"
    GLOBAL_KEYS = ("d0", "growth_rate", "betas")

    @staticmethod
    def initial_estimate(d0: float) -> dict[str, Any]:
        return {"d": d0, "numerator_weighted": 0.0}

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, decouple: bool | None = None, use_bias_correction: bool = False,
                 d0: float = 1e-6, growth_rate: float = float("inf"), layer_scale: float = 1.0,
                 **options: Any) -> None:
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, decouple=decouple,
                        use_bias_correction=use_bias_correction, d0=d0, growth_rate=growth_rate,
                        layer_scale=layer_scale)
        super().__init__(params, {**defaults, **self.initial_estimate(d0)}, **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "weight_decay")
        V.positive("eps", group["eps"])
        V.positive("d0", group["d0"])
        check_growth_rate(group["growth_rate"])
        V.nonneg("layer_scale", group["layer_scale"])
        V.flag("use_bias_correction", group["use_bias_correction"])
        apply_decouple(group)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "s")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        sqrt_b2 = math.sqrt(b2)
        bc = math.sqrt(1 - b2**step) / (1 - b1**step) if group["use_bias_correction"] else 1.0
        dlr = self.param_groups[0]["d"] * group["lr"] * bc
        r = group["layer_scale"]
        return {"lr": group["lr"], "dlr": dlr, "b1": b1, "b2": b2, "eps": group["eps"], "sqrt_b2": sqrt_b2,
                "m_scale": r * dlr * (1 - b1), "s_scale": dlr * (1 - sqrt_b2), "r_weight": r * dlr, "l1_weight": r}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """Adam's moments (m carries λ) and the step ``m / (√v + ε)``; s and r are the first pass's."""
        m, v = st["exp_avg"], st["exp_avg_sq"]
        m.mul_(c["b1"]).add_(g * c["m_scale"])
        v.mul_(c["b2"]).add_(g * g * (1 - c["b2"]))
        return m / (v.sqrt() + c["eps"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = st["exp_avg"], st["exp_avg_sq"]
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, torch._foreach_mul(gs, c["m_scale"]))
        sq = torch._foreach_mul(gs, gs)
        torch._foreach_mul_(sq, 1 - c["b2"])
        torch._foreach_mul_(v, c["b2"])
        torch._foreach_add_(v, sq)
        denom = torch._foreach_sqrt(v)
        torch._foreach_add_(denom, c["eps"])
        return torch._foreach_div(m, denom)

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """This bucket's share of r (with s and A before the step), the Adam step, then s and its ‖·‖₁."""
        if group["lr"] == 0:
            return  # lr = 0: the group is frozen (no statistics, state, move or decay)
        foreach = self._impl(group, ps) == "foreach"
        ss = [st["s"] for st in sts]
        if foreach:
            denom = torch._foreach_sqrt([st["exp_avg_sq"] for st in sts])
            torch._foreach_add_(denom, c["eps"])
            ratios = torch._foreach_div(ss, denom)
        else:
            ratios = [s / (st["exp_avg_sq"].sqrt() + c["eps"]) for s, st in zip(ss, sts)]
        r_share = c["r_weight"] * dots(gs, ratios).sum()
        if group["decay_mode"] == "decoupled":
            c["decay"] = 1.0 - group["weight_decay"] * c["dlr"]
        super()._run_kernel(group, ps, gs, sts, keys, c)
        scaled_add_(ss, gs, c["sqrt_b2"], c["s_scale"], foreach)
        self._pending.append(torch.stack([r_share, c["l1_weight"] * l1_norms(ss, foreach).sum()]))

    def _second_pass(self, pending: list, loss: Any) -> None:
        r_share, s_l1 = pending_totals(pending)
        first = self.param_groups[0]
        sqrt_b2 = math.sqrt(first["betas"][1])
        r = sqrt_b2 * first["numerator_weighted"] + (1 - sqrt_b2) * r_share
        if s_l1 == 0:
            return
        d = first["d"]
        d_hat = r / ((1 - sqrt_b2) * s_l1)
        self._store_estimate(d=max(d, min(d_hat, d * first["growth_rate"])), numerator_weighted=r)


# ----------------------------------------------------------------------------------------------- SGD
class DAdaptSGD(DistanceEstimator):
    """SGD (dual averaging, with momentum) with D-Adapted step size lr·d/‖g₀‖; ``group["d"]`` holds d."""

    default_decay_mode = "coupled"
    handles_weight_decay = True  # L2 only, added in _run_kernel (a multiplicative decay would not accumulate)

    @staticmethod
    def initial_estimate(d0: float) -> dict[str, Any]:
        return {"d": d0, "numerator_weighted": 0.0, "g0_norm": None}

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.0, weight_decay: float = 0.0,
                 d0: float = 1e-6, growth_rate: float = float("inf"), **options: Any) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, d0=d0, growth_rate=growth_rate)
        super().__init__(params, {**defaults, **self.initial_estimate(d0)}, **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "weight_decay")
        V.beta("momentum", group["momentum"])
        V.positive("d0", group["d0"])
        check_growth_rate(group["growth_rate"])
        if group.get("decay_mode", "coupled") != "coupled":
            raise ValueError(f"Invalid decay_mode: {group['decay_mode']!r} (DAdaptSGD supports only 'coupled' "
                             "(L2): x is rebuilt from x₀ − s each step, so a multiplicative decay would not add up)")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["s"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["x0"] = p.detach().clone(memory_format=torch.preserve_format)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("s", "x0")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {"lr": group["lr"], "ck": 1.0 - group["momentum"], "dlr": 0.0}  # dlr set once ‖g₀‖ is known

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """``s ← s + λg``; the step ``(1−β)(x − z)`` with ``z = x₀ − s`` (so x ← βx + (1−β)z)."""
        s = st["s"]
        s.add_(g * c["dlr"])
        return (p - (st["x0"] - s)) * c["ck"]

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        s = st["s"]
        torch._foreach_add_(s, torch._foreach_mul(gs, c["dlr"]))
        z = torch._foreach_sub(st["x0"], s)
        steps = torch._foreach_sub(ps, z)
        torch._foreach_mul_(steps, c["ck"])
        return steps

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        if group["lr"] == 0:
            return  # lr = 0: the group is frozen (no statistics, state, move or decay)
        if group["weight_decay"]:
            gs = torch._foreach_add(gs, ps, alpha=group["weight_decay"])
        g0_norm = self.param_groups[0]["g0_norm"]
        if g0_norm is None:  # the first step: the step size needs ‖g₀‖ over every group first
            self._pending.append(("first", group, ps, gs, sts, keys, c, dots(gs, gs).sum()))
            return
        self._pending.append(self._step_bucket(group, ps, gs, sts, keys, c, g0_norm))

    def _step_bucket(self, group, ps, gs, sts, keys, c, g0_norm: float) -> Tensor:
        """r's share λ⟨g, s⟩ (s before the step), the step itself, then ‖s‖² after it."""
        c["dlr"] = self.param_groups[0]["d"] * group["lr"] / g0_norm
        r_share = c["dlr"] * dots(gs, [st["s"] for st in sts]).sum()
        super()._run_kernel(group, ps, gs, sts, keys, c)
        ss = [st["s"] for st in sts]
        return torch.stack([r_share, dots(ss, ss).sum()])

    def _second_pass(self, pending: list, loss: Any) -> None:
        if isinstance(pending[0], tuple):  # first step: ‖g₀‖, then the deferred buckets
            g0_norm = math.sqrt(pending_totals([p[-1].reshape(1) for p in pending])[0])
            if g0_norm == 0:
                return  # nothing to scale by yet: nothing moves, ‖g₀‖ is measured again next step
            self._store_estimate(g0_norm=g0_norm)
            pending = [self._step_bucket(*p[1:-1], g0_norm) for p in pending]
        r_share, s_sq = pending_totals(pending)
        if s_sq == 0:
            return
        first = self.param_groups[0]
        d, r = first["d"], first["numerator_weighted"] + r_share
        d_hat = 2 * r / math.sqrt(s_sq)
        self._store_estimate(d=max(d, min(d_hat, d * first["growth_rate"])), numerator_weighted=r)


_COMMON = dict(family="learning-rate-free", paper="arXiv:2301.07733")
register(OptimizerInfo(
    name="dadapt-adam", cls=DAdaptAdam, has_betas=True, has_momentum=True, state_tensors=3, test_hparams={},
    description="D-Adaptation Adam: Adam with step d·lr, d a lower bound on ‖x₀ − x*‖ from √β₂-weighted sums over "
                "all parameters (lr a multiplier, default 1); L2 decay unless decouple=True.", **_COMMON))
register(OptimizerInfo(
    name="dadapt-sgd", cls=DAdaptSGD, has_momentum=True, state_tensors=2, test_hparams={"momentum": 0.9},
    description="D-Adaptation SGD: dual averaging with momentum, step lr·d/‖g₀‖, d a lower bound on ‖x₀ − x*‖ "
                "over all parameters (lr a multiplier, default 1); L2 decay only.", **_COMMON))
