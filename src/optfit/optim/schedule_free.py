"""Schedule-Free SGD, AdamW and RAdam (Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less
Scheduled", arXiv 2405.15682), in the convention of the authors' ``schedulefree`` package (v1.4).

Three sequences: z (the base optimizer's iterate), x (a weighted average of the z's, the point to evaluate) and
y (where the gradient is taken). With β the interpolation momentum (``momentum`` for SGD, ``betas[0]`` else):

    y_t     = (1 − β) z_t + β x_t                       g_t = ∇f(y_t)
    d_t     = g_t                                       (SGD; RAdam before rectification)
            = g_t / (√(v_t / (1 − β₂ᵗ)) + ε),  v_t = β₂v_{t−1} + (1 − β₂)g_t²   (AdamW, rectified RAdam)
    γ_t     = η · min(1, t / T_warmup)                  (SGD, AdamW; ``warmup_steps`` = T_warmup)
            = η · ρ-rectifier_t   if ρ_t > 4, else η (or 0 with ``silent_sgd_phase``)   (RAdam)
    z_{t+1} = z_t − γ_t (d_t + λ y_t)                   (weight decay λ evaluated at y)
    w_t     = t^r · (max_{i≤t} γ_i)^p ;  c_{t+1} = w_t / Σ_{i≤t} w_i     (``r``, ``weight_lr_power`` = p)
    x_{t+1} = (1 − c_{t+1}) x_t + c_{t+1} z_{t+1}

Only z (plus v) is stored: the parameters hold y in train mode, and eliminating x gives the step actually taken,

    y_{t+1} = y_t − c_{t+1}(y_t − z_t) − (1 − β(1 − c_{t+1})) γ_t (d_t + λ y_t),

while ``eval()`` swaps in x = y + (1 − 1/β)(z − y) and ``train()`` swaps y back.

Where this follows the package rather than the paper's Algorithm 1:

* AdamW: the package bias-corrects v inside the root (√(v/(1−β₂ᵗ)) + ε) and weights the average by the
  warmup-scaled lr alone; Algorithm 1 puts √(1−β₂ᵗ) into γ_t (hence into the weights) and uses √v + ε.
  ``lr_bias_correction=True`` gives Algorithm 1 (the package's ``AdamWScheduleFreePaper``).
* The weights use the largest γ so far, as the package does (its ``AdamWScheduleFreePaper`` too): with a
  non-decreasing γ, r = 0 and p = 2 this is the paper's c_{t+1} = γ_t² / Σ_{i≤t} γ_i². The clock t counts
  optimizer steps per param group (not per parameter), as in the package.
* RAdam (not in the paper) is the package's: rectified when ρ_t > 4, silent (or SGD) steps before.

Deviations from the package, all on the side of the contract:

* Training mode is the starting mode (the package starts in eval mode and asks for ``train()``); ``step()`` in
  eval mode raises ``RuntimeError`` (the package raises a bare ``Exception``).
* ``eval()`` keeps y and ``train()`` puts that exact copy back, so an eval/train round trip is bit-exact (the
  package recomputes y from x and z, which drifts by rounding; it is still the fallback when the parameters were
  changed while in eval mode). This costs one parameter-sized tensor per parameter, in eval mode only.
* ``p.grad`` is never modified (the package adds the decay into it in place).
* ``decay_mode``: "decoupled" (the package's λy added to the normalised direction, default for AdamW/RAdam),
  "coupled" (L2: λy added to g before v; the package's SGD decay, identical there), "independent" (λ/η₀).
  ``cautious`` is rejected: the step is mostly an interpolation towards z, which a sign mask does not fit.

``recompute_bn_statistics`` re-estimates BatchNorm running statistics at x, as the package's README advises.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import LR0, ElementwiseOptimizer

__all__ = ["SGDScheduleFree", "AdamWScheduleFree", "RAdamScheduleFree", "recompute_bn_statistics"]

# the schedule's per-group bookkeeping, kept in the param group so that state_dict() carries it
_CLOCK = dict(k=0, train_mode=True, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)


def _real(p: Tensor) -> Tensor:
    return torch.view_as_real(p) if p.is_complex() else p


class _ScheduleFree(ElementwiseOptimizer):
    """The shared schedule-free machinery: the group clock (k, lr_max, weight_sum), the y-step kernel and the
    train/eval swap. Subclasses give ``_interpolation`` (β) and ``_scheduled_lr`` and their hyperparameters."""

    default_decay_mode = "decoupled"
    handles_weight_decay = True  # the decay λy enters z's step (and so y's), see _update
    adaptive = False  # keeps v and normalises by it

    def __init__(self, params: Any, defaults: dict[str, Any], **options: Any) -> None:
        self._clock_now: dict[int, tuple[float, float]] = {}
        super().__init__(params, {**defaults, **_CLOCK}, **options)

    # ------------------------------------------------------------------------------------- validation
    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("weight_decay", group["weight_decay"])
        V.nonneg("r", group["r"])
        V.nonneg("weight_lr_power", group["weight_lr_power"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (a schedule-free step is mostly the interpolation of y towards "
                             "z, which a gradient-sign mask does not fit)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """A group added later joins in the optimizer's current mode."""
        if self.param_groups and "train_mode" not in param_group:
            param_group = {**param_group, "train_mode": self.param_groups[0]["train_mode"]}
        super().add_param_group(param_group)

    # ------------------------------------------------------------------------------- subclass hooks
    @staticmethod
    def _interpolation(group: dict[str, Any]) -> float:
        """β: y = (1 − β)z + βx."""
        raise NotImplementedError

    def _scheduled_lr(self, group: dict[str, Any], t: int) -> float:
        """γ_t at the group's step t (1-based)."""
        raise NotImplementedError

    def _adaptive_coefficients(self, group: dict[str, Any], t: int) -> dict[str, Any]:
        return {}

    # ------------------------------------------------------------------------------------- the clock
    def _finite_or_policy(self, work: list) -> bool:
        """Once the step is known to go ahead, every group's clock advances (groups without gradients too, as
        in the package, whose k counts steps rather than gradients)."""
        if not super()._finite_or_policy(work):
            return False
        self._clock_now = {id(group): self._advance_clock(group) for group in self.param_groups}
        return True

    def _advance_clock(self, group: dict[str, Any]) -> tuple[float, float]:
        """Step k → k + 1: γ_t, the running max of γ, the weight sum; returns (γ_t, c_{t+1})."""
        t = group["k"] + 1
        lr = group["scheduled_lr"] = self._scheduled_lr(group, t)
        lr_max = group["lr_max"] = max(lr, group["lr_max"])
        weight = t ** group["r"] * lr_max ** group["weight_lr_power"]
        weight_sum = group["weight_sum"] = group["weight_sum"] + weight
        group["k"] = t
        return lr, (weight / weight_sum if weight_sum else 0.0)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One step at y; raises ``RuntimeError`` in eval mode (call ``train()`` first)."""
        if not all(group["train_mode"] for group in self.param_groups):
            raise RuntimeError(f"{type(self).__name__}.step() called in eval mode: the parameters hold the average "
                               "x, not y; call optimizer.train() before training (and optimizer.eval() before "
                               "evaluating or saving a checkpoint)")
        return super().step(closure)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        # ``step`` (the parameter's own count) is not used: the schedule follows the group's clock
        lr, ckp1 = self._clock_now[id(group)]
        beta = self._interpolation(group)
        wd, mode = group["weight_decay"], group["decay_mode"]
        if mode == "independent":
            wd = wd / group[LR0] if group[LR0] > 0 else 0.0
        return {"lr": lr, "ckp1": ckp1, "y_scale": 1.0 - beta * (1.0 - ckp1), "wd": wd,
                **self._adaptive_coefficients(group, group["k"])}

    def _flags(self, group: dict[str, Any]) -> tuple:  # type: ignore[override]
        decay_at = None if not group["weight_decay"] else ("grad" if group["decay_mode"] == "coupled" else "step")
        return (self.adaptive, decay_at)

    # ----------------------------------------------------------------------------------------- state
    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("z", "exp_avg_sq") if self.adaptive else ("z",)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["z"] = p.clone(memory_format=torch.preserve_format)  # x = y = z at the start
        if self.adaptive:
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # --------------------------------------------------------------------------------------- kernels
    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """Move z in place; return s with y ← y − s (``p`` holds y)."""
        adaptive, decay_at = flags
        if decay_at == "grad":
            g = g + c["wd"] * p
        d = g
        if adaptive:
            v = st["exp_avg_sq"]
            v.mul_(c["b2"]).add_(g * g * (1 - c["b2"]))
            if c["normalise"]:
                d = g / ((v / c["bc2"]).sqrt() + c["eps"])
        if decay_at == "step":
            d = d + c["wd"] * p
        u = c["lr"] * d  # z's step: computed once so that y and z move by the same bits when c = 1
        z = st["z"]
        s = c["ckp1"] * (p - z) + c["y_scale"] * u
        z.sub_(u)
        return s

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        adaptive, decay_at = flags
        if decay_at == "grad":
            gs = torch._foreach_add(gs, ps, alpha=c["wd"])
        d = gs
        if adaptive:
            v = st["exp_avg_sq"]
            torch._foreach_mul_(v, c["b2"])
            torch._foreach_add_(v, torch._foreach_mul(torch._foreach_mul(gs, gs), 1 - c["b2"]))
            if c["normalise"]:
                denom = torch._foreach_div(v, c["bc2"])
                torch._foreach_sqrt_(denom)
                torch._foreach_add_(denom, c["eps"])
                d = torch._foreach_div(gs, denom)
        if decay_at == "step":
            d = torch._foreach_add(d, ps, alpha=c["wd"])
        u = torch._foreach_mul(d, c["lr"])
        z = st["z"]
        s = torch._foreach_sub(ps, z)
        torch._foreach_mul_(s, c["ckp1"])
        torch._foreach_add_(s, torch._foreach_mul(u, c["y_scale"]))
        torch._foreach_sub_(z, u)
        return s

    # ------------------------------------------------------------------------------ train / eval swap
    @torch.no_grad()
    def eval(self) -> None:
        """Parameters ← x = y + (1 − 1/β)(z − y), the averaged iterate to evaluate or checkpoint; y is kept."""
        for group in self.param_groups:
            if group["train_mode"]:
                weight = 1.0 - 1.0 / self._interpolation(group)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "z" in st:
                        y = _real(p)
                        st["y"] = y.clone()
                        y.copy_(self._lerp(y, st["z"], weight))
                group["train_mode"] = False

    @torch.no_grad()
    def train(self) -> None:
        """Parameters ← y: the copy kept by ``eval()`` (exact), or y = x + (1 − β)(z − x) when the parameters
        changed in eval mode or there is no copy (a state saved by the ``schedulefree`` package)."""
        for group in self.param_groups:
            if not group["train_mode"]:
                beta = self._interpolation(group)
                for p in group["params"]:
                    st = self.state.get(p)
                    if st and "z" in st:
                        x, y = _real(p), st.pop("y", None)
                        if y is not None and torch.equal(x, self._lerp(y, st["z"], 1.0 - 1.0 / beta)):
                            x.copy_(y)
                        else:
                            x.copy_(self._lerp(x, st["z"], 1.0 - beta))
                group["train_mode"] = True

    @staticmethod
    def _lerp(a: Tensor, z: Tensor, weight: float) -> Tensor:
        """a + weight (z − a), computed in z's dtype (float32 state of bf16 parameters) and rounded to a's."""
        z = z.to(a.device)
        return a.to(z.dtype).lerp(z, weight).to(a.dtype)


class SGDScheduleFree(_ScheduleFree):
    """Schedule-Free SGD; the package's defaults (lr 1.0, momentum 0.9); ``weight_decay`` is L2 (coupled and
    decoupled coincide here)."""

    default_decay_mode = "coupled"

    def __init__(self, params: Any, lr: float = 1.0, momentum: float = 0.9, weight_decay: float = 0.0,
                 warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, warmup_steps=warmup_steps,
                                      r=r, weight_lr_power=weight_lr_power), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        super()._validate(group)
        V.in_range("momentum", group["momentum"], 0.0, 1.0, lo_open=True)
        V.integer("warmup_steps", group["warmup_steps"])

    @staticmethod
    def _interpolation(group: dict[str, Any]) -> float:
        return group["momentum"]

    def _scheduled_lr(self, group: dict[str, Any], t: int) -> float:
        return group["lr"] * (t / group["warmup_steps"] if t <= group["warmup_steps"] else 1.0)


class AdamWScheduleFree(_ScheduleFree):
    """Schedule-Free AdamW; the package's defaults (lr 0.0025, betas (0.9, 0.999)). ``lr_bias_correction=True``
    switches to the paper's Algorithm 1 (γ_t ∝ √(1 − β₂ᵗ), denominator √v + ε)."""

    adaptive = True

    def __init__(self, params: Any, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0, weight_lr_power: float = 2.0,
                 lr_bias_correction: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      warmup_steps=warmup_steps, r=r, weight_lr_power=weight_lr_power,
                                      lr_bias_correction=lr_bias_correction), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        super()._validate(group)
        _check_betas(group["betas"])
        V.nonneg("eps", group["eps"])
        V.integer("warmup_steps", group["warmup_steps"])
        V.flag("lr_bias_correction", group["lr_bias_correction"])

    @staticmethod
    def _interpolation(group: dict[str, Any]) -> float:
        return group["betas"][0]

    def _scheduled_lr(self, group: dict[str, Any], t: int) -> float:
        lr = group["lr"] * (t / group["warmup_steps"] if t <= group["warmup_steps"] else 1.0)
        return lr * math.sqrt(1 - group["betas"][1] ** t) if group["lr_bias_correction"] else lr

    def _adaptive_coefficients(self, group: dict[str, Any], t: int) -> dict[str, Any]:
        b2 = group["betas"][1]
        return {"b2": b2, "eps": group["eps"], "normalise": True,
                "bc2": 1.0 if group["lr_bias_correction"] else 1 - b2**t}


class RAdamScheduleFree(_ScheduleFree):
    """Schedule-Free RAdam: no warmup hyperparameter, the rectifier ramps γ up. While ρ_t ≤ 4 the steps are
    silent (γ = 0, only v accumulates) or, with ``silent_sgd_phase=False``, un-normalised SGD steps at η."""

    adaptive = True

    def __init__(self, params: Any, lr: float = 0.0025, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, r: float = 0.0, weight_lr_power: float = 2.0,
                 silent_sgd_phase: bool = True, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, r=r,
                                      weight_lr_power=weight_lr_power, silent_sgd_phase=silent_sgd_phase), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        super()._validate(group)
        _check_betas(group["betas"])
        V.nonneg("eps", group["eps"])
        V.flag("silent_sgd_phase", group["silent_sgd_phase"])

    @staticmethod
    def _interpolation(group: dict[str, Any]) -> float:
        return group["betas"][0]

    @staticmethod
    def rho(t: int, beta2: float) -> tuple[float, float]:
        """(ρ_t, ρ_∞): the length of the approximated simple moving average at step t, and its limit."""
        rho_inf = 2 / (1 - beta2) - 1
        return rho_inf - 2 * t * beta2**t / (1 - beta2**t), rho_inf

    def _scheduled_lr(self, group: dict[str, Any], t: int) -> float:
        rho_t, rho_inf = self.rho(t, group["betas"][1])
        if rho_t > 4.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        else:
            rect = 0.0 if group["silent_sgd_phase"] else 1.0
        return group["lr"] * rect

    def _adaptive_coefficients(self, group: dict[str, Any], t: int) -> dict[str, Any]:
        b2 = group["betas"][1]
        return {"b2": b2, "eps": group["eps"], "normalise": self.rho(t, b2)[0] > 4.0, "bc2": 1 - b2**t}


def _check_betas(betas: Any) -> None:
    V.betas(betas)
    if betas[0] == 0:
        raise ValueError(f"Invalid betas[0]: {betas[0]!r} (must lie in (0, 1): eval() recovers "
                         "x = (y − (1 − β₁)z)/β₁)")


@torch.no_grad()
def recompute_bn_statistics(model: nn.Module, optimizer: Any, batches: Iterable[Any]) -> int:
    """Re-estimate the BatchNorm running statistics at the averaged iterate x.

    Puts ``optimizer`` in eval mode (parameters = x; it stays there), resets the running mean/var of every
    BatchNorm layer that tracks them, and recomputes them as the plain average over ``batches`` (momentum None,
    like ``torch.optim.swa_utils.update_bn``; the README's recipe keeps the EMA) with the model in train mode and
    no gradients. Each batch is passed as ``model(batch)``, or ``model(batch[0])`` for a tuple/list
    (inputs, targets). The model's train/eval flags are restored. Returns the number of batches used; with no
    batches nothing is reset and ``ValueError`` is raised.
    """
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.running_mean is not None]
    optimizer.eval()
    if not norms:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    seen = 0
    try:
        model.train()
        for batch in batches:
            if seen == 0:
                for m in norms:
                    m.reset_running_stats()
                    m.momentum = None
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
            seen += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.train(training)
    if seen == 0:
        raise ValueError("recompute_bn_statistics: batches was empty (the running statistics were left as they were)")
    return seen


_SF = dict(family="learning-rate-free", paper="arXiv:2405.15682", has_momentum=True, supports_cautious=False)
register(OptimizerInfo(
    name="schedule-free-sgd", cls=SGDScheduleFree, state_tensors=1, test_hparams={"lr": 0.1},
    description="Schedule-Free SGD: gradient at y = (1−β)z + βx, z ← z − γg, x the weighted average of the "
                "z's (the parameters hold y; opt.eval() swaps in x).", **_SF))
register(OptimizerInfo(
    name="schedule-free-adamw", cls=AdamWScheduleFree, state_tensors=2, has_betas=True, test_hparams={"lr": 0.05},
    description="Schedule-Free AdamW: z takes AdamW steps (decay at y), x averages z, gradients at "
                "y = (1−β₁)z + β₁x; no lr schedule (warmup_steps only); opt.eval() swaps in x.", **_SF))
register(OptimizerInfo(
    name="schedule-free-radam", cls=RAdamScheduleFree, state_tensors=2, has_betas=True,
    test_hparams={"lr": 0.05, "silent_sgd_phase": False},
    description="Schedule-Free RAdam: Schedule-Free AdamW with the RAdam rectifier as its warmup (silent or SGD "
                "steps while ρ_t ≤ 4); opt.eval() swaps in x.", **_SF))
