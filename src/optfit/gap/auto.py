"""``auto``: Adam with no learning rate to choose — the step size and its schedule set during training by the greedy
alignment principle at the horizons it can measure (the derivation, its oracles and what it measures: docs/auto.md).

Direction: Adam's, bias-corrected, u_k = m_k / (√v_k + d_k ε) with (β₁, β₂) = (0.9, 0.999). Step:

    x_{k+1} = x_k (1 − λ_wd η_k) − η_k · u_k ,    η_k = lr · d_k · ψ_k · √(1−β₂ᵏ)/(1−β₁ᵏ)

1. **Whole-run horizon — the scale d_k.** Scaling every past step by (1+ε) moves x_k to x₀ + (1+ε)(x_k − x₀)
   (Jacobian of later steps on earlier ones taken as I), so the loss along the path falls with a larger scale
   exactly when ⟨g_k, x₀ − x_k⟩ > 0: the greedy alignment of each gradient with the whole displacement so far.
   Accumulated with Prodigy's weights (arXiv 2306.06101) it is r_k = Σ_j (d_j/d₀)η_j ⟨g_j, x₀ − x_j⟩, and
   d = r/‖s‖₁ (s the same weighted sum of gradients) is the largest scale the observed alignment supports — on a
   convex loss a lower bound of ‖x₀ − x*‖_∞. d only grows. This part is optfit's ``Prodigy`` with bias correction
   (``use_bias_correction=True``; equal to it step for step when ψ ≡ 1, tested).
2. **The horizon left — the schedule ψ_k.** With ``total_steps`` = T known, ψ_k = 1 − (k−1)/T: linear decay to 0,
   the worst-case optimal last-iterate schedule for a known horizon (Defazio et al., arXiv 2310.07831). Without it
   (anytime), the statistics choose the phase: ψ stays constant while the iterate demonstrably progresses and is
   halved when ``theory.StationarityTest`` can no longer show progress on the fluctuation–dissipation statistic
   Δ_k = ⟨g_k, x_k − x₀⟩ − (1+β₁)/(2(1−β₁))·⟨m_k, s_k⟩/d_k (0 in mean at stationarity; derived in
   ``theory.stationarity``). Halving at each detected stationarity tracks the 1/(hk) schedule that is optimal on
   a noisy quadratic (each stationary phase lasts ∝ 1/(ηh), so η halves at doubling intervals).
3. **One step — measured and left out.** The one-step alignment ⟨g_{k+1}, u_k⟩ (the hypergradient) is biased
   towards too-small steps (arXiv 1803.02021) and, used as an edge guard (cut η to the greedy optimum when the
   step raised the loss along itself), it made the scale estimate unstable on the quick suite (docs/auto.md); it
   does not act here.

Everything chosen is visible: ``selection()`` and ``gap_stats()`` (step size, d, schedule factor, phase,
stationarity statistics; ``gap.attach_summary_writer`` sends the numbers to TensorBoard). All of it
lives in the param groups (the same in every group), so ``state_dict`` carries it and a resumed run continues bit
for bit. ``lr`` is a multiplier (default 1), as in Prodigy; β₁ must be in (0, 1) (the test reads the first
moment). Not exposed: Prodigy's ``slice_p``, ``safeguard_warmup``, ``d_coef`` and ``growth_rate`` (their defaults).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

from ..optim import _validation as V
from ..optim._base import ElementwiseOptimizer
from ..optim.dadapt import DistanceEstimator, pending_totals
from ..optim.prodigy import Prodigy
from ..registry import OptimizerInfo, register
from ..theory.stationarity import StationarityTest

__all__ = ["Auto"]


class Auto(Prodigy):
    """Adam whose step size and schedule are set during training (module docstring); no learning rate."""

    GLOBAL_KEYS = Prodigy.GLOBAL_KEYS + ("total_steps", "decay_factor", "confidence", "min_samples")

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, total_steps: int | None = None, decay_factor: float = 0.5, confidence: float = 0.95, min_samples: int = 32, d0: float = 1e-6,
                 **options: Any) -> None:
        defaults = dict(lr=lr, betas=betas, beta3=None, eps=eps, weight_decay=weight_decay, decouple=None,
                        use_bias_correction=True, safeguard_warmup=False, d0=d0, d_coef=1.0,
                        growth_rate=float("inf"), slice_p=1, total_steps=total_steps,
                        decay_factor=decay_factor, confidence=confidence, min_samples=min_samples)
        DistanceEstimator.__init__(self, params, {**defaults, **self.initial_estimate(d0)}, **options)

    @staticmethod
    def initial_estimate(d0: float) -> dict[str, Any]:
        return {**Prodigy.initial_estimate(d0), "anytime_scale": 1.0, "decays": 0, "last_decay": 0,
                "stationarity": StationarityTest().state()}

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        super()._validate(group)
        b1 = group["betas"][0]
        if not 0 < b1 < 1:
            raise ValueError(f"Invalid betas[0]: {b1!r} (auto needs a first moment: 0 < beta1 < 1)")
        if group["total_steps"] is not None:
            V.integer("total_steps", group["total_steps"], minimum=1)
        factor = group["decay_factor"]
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor < 1:
            raise ValueError(f"Invalid decay_factor: {factor!r} (must be in (0, 1))")
        StationarityTest(group["confidence"], group["min_samples"])  # raises naming the argument

    # ------------------------------------------------------------------------------- the multiplier ψ
    def _schedule(self, step: int) -> float:
        first = self.param_groups[0]
        total = first["total_steps"]
        return max(0.0, 1.0 - (step - 1) / total) if total else first["anytime_scale"]

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        total = self.param_groups[0]["total_steps"]
        if total and step > total and not getattr(self, "_warned_past_total", False):
            self._warned_past_total = True
            warnings.warn(f"auto: step {step} is past total_steps={total}; the schedule has ended and the step size is 0 "
                          "(pass a larger total_steps, or none for the anytime schedule, to train longer)",
                          RuntimeWarning, stacklevel=4)
        c = super()._coefficients(group, step)
        psi = self._schedule(step)
        for key in ("dlr", "r_weight", "s_scale"):
            c[key] *= psi
        c["fdr_weight"] = (1 + c["b1"]) / (2 * (1 - c["b1"])) * c["dlr"] / self.param_groups[0]["d"]
        return c

    # ------------------------------------------------------------------------------------ first pass
    def _step_bucket(self, group, ps, gs, sts, keys, c, to_start) -> list:
        """The Adam step, and the bucket's share of Δ_k for the second pass: ⟨g_k, x_k − x₀⟩ (Prodigy's dot, taken
        before the step) and the weighted ⟨m_k, s_k⟩/d_k after it (s_k = dlr·m_k/(√v_k + d_kε))."""
        ms = [st["exp_avg"] for st in sts]
        if self._impl(group, ps) == "foreach" and not group["cautious"]:  # the steps are at hand: ⟨m, s⟩ from them
            steps = self._directions(group, ps, gs, sts, keys, c)
            if c["decay"] != 1.0:
                torch._foreach_mul_(ps, c["decay"])
            torch._foreach_sub_(ps, steps)
            torch._foreach_mul_(steps, ms)
            weighted, weight = steps, c["fdr_weight"] / c["dlr"] if c["dlr"] else 0.0
        else:
            ElementwiseOptimizer._run_kernel(self, group, ps, gs, sts, keys, c)
            vs = [st["exp_avg_sq"] for st in sts]
            weighted, weight = [m * m / (v.sqrt() + c["d_eps"]) for m, v in zip(ms, vs)], c["fdr_weight"]
        momentum_step = torch.stack([torch.sum(w, dtype=torch.float64) for w in weighted]).sum() * weight
        return [-to_start, momentum_step.to(to_start.device)]

    # ----------------------------------------------------------------------------------- second pass
    def _second_pass(self, pending: list, loss: Any) -> None:
        r_share, s_l1, displacement, momentum_step = pending_totals(pending)
        self._update_distance(r_share, s_l1)
        first = self.param_groups[0]
        if first["total_steps"] is not None or not (math.isfinite(displacement) and math.isfinite(momentum_step)):
            return
        est = {k: first[k] for k in ("anytime_scale", "decays", "last_decay")}
        test = StationarityTest(first["confidence"], first["min_samples"])
        test.load(first["stationarity"])
        test.add(displacement - momentum_step)  # Δ_k (each bucket's (1+β₁)/(2(1−β₁)) applied in the kernel)
        # a phase lasts at least as long as the run before it: the halvings never outpace the 1/k schedule
        if test.stationary(at_least=first["last_decay"]):
            est["anytime_scale"] *= first["decay_factor"]
            est["decays"] += 1
            est["last_decay"] = self._step_count()
            test.reset()
        self._store_estimate(**est, stationarity=test.state())

    # ------------------------------------------------------------------------------------ visibility
    def _phase(self) -> str:
        first = self.param_groups[0]
        if first["total_steps"]:
            return f"linear decay to step {first['total_steps']}"
        if first["decays"] == 0:
            return "constant (progressing)"
        return f"decayed {first['decays']}x by {first['decay_factor']:g} (stationarity detected)"

    def _step_count(self) -> int:
        steps = [int(st["step"]) for st in self.state.values() if "step" in st]
        return max(steps, default=0)

    def effective_lr(self) -> float:
        """The next step's size as a learning rate: lr·d·ψ of the first param group."""
        first = self.param_groups[0]
        return float(first["lr"] * first["d"] * self._schedule(self._step_count() + 1))

    def selection(self) -> list[dict[str, Any]]:
        """Per param group, what auto uses now: ``step_size`` (lr·d·ψ, before Adam's bias correction), ``d``,
        ``schedule`` (the factor ψ), ``beta1``, ``beta2`` and the ``phase``."""
        first = self.param_groups[0]
        schedule = self._schedule(self._step_count() + 1)
        return [{"step_size": g["lr"] * first["d"] * schedule, "d": first["d"], "schedule": schedule,
                 "beta1": g["betas"][0], "beta2": g["betas"][1], "phase": self._phase()} for g in self.param_groups]

    def gap_stats(self) -> list[dict[str, Any]]:
        """``selection()`` plus the anytime schedule's evidence: the number of ``decays`` and the stationarity
        test's ``stationarity_mean`` / ``stationarity_se`` / ``stationarity_n`` (its recent half)."""
        first = self.param_groups[0]
        test = StationarityTest(first["confidence"], first["min_samples"])
        test.load(first["stationarity"])
        summary = test.summary()
        extra = {"decays": first["decays"], "stationarity_mean": summary["mean"], "stationarity_se": summary["se"],
                 "stationarity_n": summary["n"]}
        return [{**sel, **extra} for sel in self.selection()]


register(OptimizerInfo(
    name="auto", cls=Auto, family="learning-rate-free", paper="optfit (docs/auto.md); arXiv:2306.06101, 2310.07831",
    description="No learning rate: Adam with step scale from the whole-run alignment (Prodigy's d), linear decay "
                "over total_steps or, anytime, halving when a fluctuation–dissipation test finds no progress.",
    state_tensors=4, has_betas=True, has_momentum=True, test_hparams={},
))
register(OptimizerInfo(
    name="auto-anytime", cls=Auto, family="learning-rate-free", paper="optfit (docs/auto.md); arXiv:2306.06101",
    description="auto without a planned length: the step halves whenever a fluctuation–dissipation test finds no "
                "progress (total_steps=None fixed, so trainers and the showdown cannot pass one).",
    state_tensors=4, preset={"total_steps": None}, has_betas=True, has_momentum=True, test_hparams={},
))
