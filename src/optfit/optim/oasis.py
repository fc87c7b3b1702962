"""OASIS (Jahani, Rusakov, Shi, Richtárik, Mahoney & Takáč, "Doubly Adaptive Scaled Algorithm for Machine Learning
Using Second-Order Information", ICLR 2022, arXiv 2109.05198): gradient steps scaled by a truncated Hutchinson
estimate of the Hessian diagonal, with a step size read off the local smoothness in that preconditioner's norm,
so there is no learning rate to tune. Algorithm 1 (adaptive learning rate, the default):

    v_k = z_k ⊙ ∇²F(w_k) z_k         z_k Rademacher: one ±1 vector over every parameter (a seeded CPU generator)
    D_0 = v_0 ;  D_k = β₂ D_{k−1} + (1−β₂) v_k
    D̂_k = max(|D_k|, α)              (elementwise truncation: positive definite, never below α)
    η_0 = ``eta0`` ;  θ_0 = +∞
    η_k = min{ √(1+θ_{k−1}) η_{k−1} ,  ‖w_k − w_{k−1}‖_{D̂_k} / (2 ‖∇F(w_k) − ∇F(w_{k−1})‖*_{D̂_k}) }     (k ≥ 1)
    w_{k+1} = w_k − lr · η_k D̂_k⁻¹ ∇F(w_k) ;  θ_k = η_k / η_{k−1}

with ‖x‖²_D = xᵀDx and ‖x‖*²_D = xᵀD⁻¹x summed over every parameter of every param group (a two-pass step: each
group's share of both norms is collected, then η_k is set once). ``lr`` is a multiplier (default 1, the paper's
algorithm), as SANIA's and D-Adaptation's are: a group at lr = 0 does not move, and LR schedules scale the
adaptive step. The step size reached is ``last_step_size`` (η_k). On a quadratic with an exact diagonal Hessian
(D̂ = H) the local term is exactly ½: η_k = ½ = 1/(2L) for the smoothness constant L = 1 of the D̂-norm.

``adaptive_lr=False`` is the paper's fixed-step OASIS, w_{k+1} = w_k − lr · D̂_k⁻¹ ∇F(w_k): then ``lr`` is the step.

The gradients must carry their graph, as for AdaHessian: ``loss.backward(create_graph=True)`` (or a closure that
does); ``needs_create_graph = True`` tells trainers so (every step estimates the Hessian). After the step ``p.grad``
is replaced by its detached value.

Where this departs from the paper, and why:

* D_0 is one Hutchinson sample at w_0 (the paper takes D_0 as an input). ∇F(w_{k−1}) is the previous step's
  gradient: with mini-batches it came from another batch, where the paper's stochastic variant evaluates both
  gradients on the batch of step k (a second gradient per step); the batch noise enlarges the denominator in
  expectation, so η_k tends to be smaller (more cautious).
* Degenerate steps: when no parameter moved since the last step (‖w_k − w_{k−1}‖ = 0, e.g. every lr scheduled to
  0) the local term is undefined (0/0, or 0 with stochastic gradients, which would pin η at 0 for ever): η and θ
  are kept. When the gradient did not change while the parameters moved the local term is +∞ (Malitsky &
  Mishchenko's convention) and only the growth bound applies. Groups at lr = 0 add nothing to the two norms
  (they carry no displacement).
* Weight decay is coupled (L2 part of F, the paper's regularised objectives) by default: its curvature λ enters
  the Hessian sample (v = z⊙Hz + λ). ``decay_mode="decoupled"`` shrinks w by 1 − lr·η_k·λ.
* ``maximize=True`` works on −F (gradients negated with their graph, so the Hessian is that of −F).
* Defaults: β₂ = 0.99, α = 1e-5, η₀ = 1e-3. η₀ only sizes the very first step (θ_0 = ∞ makes η_1 purely
  local). With ``adaptive_lr=False`` a small α lets near-flat coordinates take steps of g/α: raise it there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import _hvp
from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import _LOW_PRECISION, ElementwiseOptimizer, as_number

__all__ = ["OASIS", "oasis_step_size"]


def oasis_step_size(eta: float, theta: float, displacement_sq: float, gradient_change_sq: float) -> tuple[float, float]:
    """OASIS's (η_k, θ_k) from (η_{k−1}, θ_{k−1}) and the two squared norms ‖w_k − w_{k−1}‖²_{D̂} and
    ‖∇F(w_k) − ∇F(w_{k−1})‖*²_{D̂}; (η, θ) unchanged when the displacement is 0 or the result is not finite."""
    if not displacement_sq > 0:
        return eta, theta
    local = 0.5 * math.sqrt(displacement_sq / gradient_change_sq) if gradient_change_sq > 0 else math.inf
    growth = math.sqrt(1.0 + theta) * eta
    new = min(growth, local)
    if not math.isfinite(new) or new <= 0:
        return eta, theta
    return new, new / eta


class OASIS(_hvp.HutchinsonState, ElementwiseOptimizer):
    """OASIS; gradients from ``loss.backward(create_graph=True)``. ``seed`` seeds the Rademacher draws."""

    default_decay_mode = "coupled"
    supports_complex = False
    needs_create_graph = True
    two_pass = True

    def __init__(self, params: Any, lr: float = 1.0, beta2: float = 0.99, alpha: float = 1e-5,
                 weight_decay: float = 0.0, eta0: float = 1e-3, adaptive_lr: bool = True, seed: int = 0,
                 **options: Any) -> None:
        V.positive("eta0", eta0)
        V.flag("adaptive_lr", adaptive_lr)
        V.integer("seed", seed)
        super().__init__(params, dict(lr=lr, beta2=beta2, alpha=alpha, weight_decay=weight_decay), **options)
        self.eta0, self.adaptive_lr, self.seed = float(eta0), adaptive_lr, seed
        self.generator = torch.Generator().manual_seed(seed)
        self.last_step_size: float | None = None  # η_k of the latest step (None before the first)
        self.theta = math.inf  # θ_k of the latest step
        self._hessians: dict[int, Tensor] = {}
        self._hessians_by_state: dict[int, Tensor] = {}

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "weight_decay")
        V.beta("beta2", group["beta2"])
        V.positive("alpha", group["alpha"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (OASIS's direction D̂⁻¹g always agrees in sign with g, so the "
                             "mask would only rescale)")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_hessian_diag", "prev_param", "prev_grad")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        # at step 1 the EMA weight is 0: D_0 is the first sample itself
        return {"lr": as_number(group["lr"]), "b2": 0.0 if step == 1 else group["beta2"], "alpha": group["alpha"],
                "first": step == 1}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """Update D with this step's Hutchinson sample and return the direction D̂⁻¹g (η is global)."""
        d = st["exp_hessian_diag"]
        d.mul_(c["b2"]).add_(st["hessian"] * (1 - c["b2"]))
        return g / d.abs().clamp_min(c["alpha"])

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        d = st["exp_hessian_diag"]
        torch._foreach_mul_(d, c["b2"])
        torch._foreach_add_(d, torch._foreach_mul(st["hessian"], 1 - c["b2"]))
        dhat = torch._foreach_abs(d)
        torch._foreach_clamp_min_(dhat, c["alpha"])
        return torch._foreach_div(gs, dhat)

    # ---------------------------------------------------------------------------- the step and its two passes
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; the gradients (from ``closure`` if given) must come from ``backward(create_graph=True)``."""
        return _hvp.curvature_step(self, closure, lambda work: (self._estimate(work), work))

    def _estimate(self, work: list) -> bool:
        """One Hutchinson sample z⊙Hz per parameter with a gradient (one HVP over all groups); ``False`` = skip."""
        due = [(group, index, p, g) for group, items in work for index, p, g in items]
        if not due:
            return True
        samples = _hvp.hutchinson_estimates(self, due)
        if samples is None:
            return False
        self._hessians = {id(p): v for (_, _, p, _), v in zip(due, samples)}
        return True

    def next_step_needs_graph(self) -> bool:
        """Always: every OASIS step estimates the Hessian diagonal."""
        return True

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """First pass: D and the directions D̂⁻¹g, this bucket's share of ‖Δw‖²_{D̂} and ‖Δg‖*²_{D̂}, and the
        current (w, g) kept for the next step. Nothing moves yet."""
        extended = [{**st, "hessian": self._hessians_by_state[id(st)]} for st in sts]
        ds = self._directions(group, ps, gs, extended, (*keys, "hessian"), c)
        shares = None
        if self.adaptive_lr and not c["first"] and c["lr"] != 0:
            shares = [_norm_shares(p, g, st, c["alpha"]) for p, g, st in zip(ps, gs, sts)]
        torch._foreach_copy_([st["prev_param"] for st in sts], ps)
        torch._foreach_copy_([st["prev_grad"] for st in sts], gs)
        self._pending.append((group, ps, ds, c, shares))

    def _second_pass(self, pending: list, loss: Any) -> None:
        eta = self._advance([shares for *_, shares in pending if shares is not None])
        for group, ps, ds, c, _ in pending:
            scale = c["lr"] * eta
            decay = c["decay"]
            if group["decay_mode"] == "decoupled" and group["weight_decay"]:
                decay = 1.0 - scale * group["weight_decay"]
            steps = torch._foreach_mul(ds, scale)
            if decay != 1.0:
                torch._foreach_mul_(ps, decay)
            torch._foreach_sub_(ps, steps)

    def _advance(self, shares: list[list[tuple[Tensor, Tensor]]]) -> float:
        """η_k for this step (1 in the fixed-step variant); records it and θ_k."""
        if not self.adaptive_lr:
            return 1.0
        if self.last_step_size is None:
            self.last_step_size = self.eta0
            return self.eta0
        flat = [pair for bucket in shares for pair in bucket]
        if flat:
            sums = torch.stack([torch.stack([a, b]) for a, b in flat]).sum(0).tolist()
            self.last_step_size, self.theta = oasis_step_size(self.last_step_size, self.theta, sums[0], sums[1])
        return self.last_step_size

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optfit"].update(last_step_size=self.last_step_size, theta=self.theta)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim, and restore the generator and the step-size sequence (η, θ)."""
        super().load_state_dict(state_dict)
        extra = state_dict.get("optfit", {})
        if "last_step_size" in extra:
            self.last_step_size = extra["last_step_size"]
            self.theta = float(extra.get("theta", math.inf))


def _norm_shares(p: Tensor, g: Tensor, st: dict[str, Tensor], alpha: float) -> tuple[Tensor, Tensor]:
    """(Σ (w − w_prev)² D̂, Σ (g − g_prev)² / D̂) for one tensor, as float64 0-d tensors (D̂ already this step's)."""
    wide = torch.float32 if p.dtype in _LOW_PRECISION else p.dtype
    dhat = st["exp_hessian_diag"].to(wide).abs().clamp_min(alpha)
    dw = p.to(wide) - st["prev_param"].to(wide)
    dg = g.to(wide) - st["prev_grad"].to(wide)
    return (dw * dw * dhat).sum(dtype=torch.float64), (dg * dg / dhat).sum(dtype=torch.float64)


register(OptimizerInfo(
    name="oasis", cls=OASIS, family="curvature", paper="arXiv:2109.05198",
    description="OASIS: θ ← θ − η_k·D̂⁻¹g, D̂ = max(|EMA of Hutchinson z⊙Hz|, α), η_k from the local smoothness in "
                "the D̂-norm (no lr to tune; lr is a multiplier); needs loss.backward(create_graph=True).",
    state_tensors=3, supports_cautious=False, supports_complex=False, test_hparams={},
))
