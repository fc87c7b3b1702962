"""Optimistic AMSGrad (Wang, Li, Karimi & Li, "An Optimistic Acceleration of AMSGrad for Nonconvex Optimization",
ACML 2021; first as "Optimistic Adaptive Acceleration for Optimization", arXiv 1903.01435): AMSGrad that also
takes an optimistic step along a guess of the next gradient, extrapolated from the past ones.

The paper's Algorithm 2 keeps a second sequence w_{t−½}; g_t is the gradient at w_t, m_{t+1} the guess of g_{t+1}:

    θ_t = β₁ θ_{t−1} + (1−β₁) g_t ;  v_t = β₂ v_{t−1} + (1−β₂) g_t² ;  v̂_t = max(v̂_{t−1}, v_t)
    w_{t+½} = w_{t−½} − η θ̂_t / D_t
    w_{t+1}  = w_{t+½} − η ĥ_{t+1} / D_t ,   h_{t+1} = β₁ θ_{t−1} + (1−β₁) m_{t+1}

(θ_{t−1} in h, as printed and as the experiments' code computes it, not θ_t).

with Adam's bias corrections as in torch's AMSGrad and the authors' code: θ̂ = θ/(1−β₁ᵗ), ĥ = h/(1−β₁ᵗ) (h has
the mass 1−β₁ᵗ of θ_t), D_t = √v̂_t/√(1−β₂ᵗ) + ε (the paper writes √v̂_t with v₀ = ε). w_{t−½} is not stored:
the state keeps the optimistic offset u_t = ĥ_t/D_{t−1} (without η), w_{t−½} = w_t + η u_t, so one step is

    w_{t+1} = w_t − s ,   s = η (θ̂_t + ĥ_{t+1})/D_t − δ η u_t ,   u_{t+1} = ĥ_{t+1}/D_t

(δ: the decoupled weight-decay factor, which shrinks w_{t−½}). η is the step's lr, also for the offset taken at
the step before — the paper's own indexing (w_t = w_{t−½} − η_t ĥ_t/D_{t−1} uses η_t): exactly the paper for a
constant lr, and an lr scheduled to 0 freezes the parameters.

The guess m_{t+1} is the paper's Algorithm 3, regularized approximate minimal polynomial extrapolation (RMPE,
Scieur, d'Aspremont & Bach 2016), of the last r+1 gradients x_0..x_r = g_{t−r}..g_t of each tensor:

    U = [x_1 − x_0, …, x_r − x_{r−1}] ;  (UᵀU/‖UᵀU‖_F + λI) z = 1 ;  c = z/(1ᵀz) ;  m_{t+1} = Σ_{i<r} c_i x_i

r = ``span`` = 5 (the authors' setting), λ = ``reg``. While fewer than r gradients are stored the same formula
runs on those there are, and at the first step (no history) the guess is g_t itself.

Where this departs from the paper or the authors' code, and why:

* λ is relative to ‖UᵀU‖_F (the normalisation of Scieur et al.), so the guess does not depend on the loss's
  scale; the paper leaves λ unspecified. The extrapolation runs per tensor (as the authors' code keeps its
  history per parameter), not over the concatenated model.
* The code released with the paper's experiments (github Hintonthu/optimistic-amsgrad) departs from the
  paper: it extrapolates the *iterates* and uses the gradient of a second model at the extrapolated point, and
  builds v from (guess − g)². This follows the paper: RMPE of the gradients, v from g².
* Defaults: η = 1e-3, β = (0.9, 0.99), span = 5, as in the authors' experiments; λ = 1e-3. Weight decay is
  coupled (L2), as in torch's AMSGrad.

The extrapolation runs in float64 (its solve amplifies rounding by up to 1/λ); the ``foreach`` path batches the
small solves of all tensors into one. There is no ``compiled`` path: the guess is sensitive enough that a fused
kernel's different rounding would not track the reference to the project's 1e-6 (a 1-ulp change of one
parameter already moves u by ~1e-6 within 10 steps).

State per tensor: ``exp_avg`` (θ), ``exp_avg_sq`` (v), ``max_exp_avg_sq`` (v̂), ``optimistic_step`` (u) and
``grad_history`` (the last r gradients, oldest first: r × the tensor's shape).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer, as_number

__all__ = ["OptimisticAMSGrad", "rmpe_weights"]

_TINY = 1e-30


def _points(history: Tensor, g: Tensor) -> Tensor:
    """x_0..x_r as float64 rows: the stored gradients, oldest first, then g. The extrapolation runs in float64:
    its solve amplifies the rounding of UᵀU by up to 1/λ and its weights may alternate in sign, so in float32 the
    guess would depend on the summation order of the kernel that computes it."""
    return torch.cat([history, g.unsqueeze(0)]).reshape(history.shape[0] + 1, -1).double()


def _gram(pts: Tensor) -> Tensor:
    """UᵀU of the consecutive differences U = [x_1 − x_0, …]."""
    u = pts[1:] - pts[:-1]
    return u @ u.T


def rmpe_weights(grams: Tensor, filled: Any, reg: Any) -> Tensor:
    """RMPE's coefficients c (…, r) from UᵀU (…, r, r), batched over leading dimensions.

    Only the last ``filled`` columns hold stored gradients: the others get c = 0. With none filled, c = 0 (the
    caller then falls back to g). λ is relative: the system is UᵀU/‖UᵀU‖_F + λI.
    """
    r = grams.shape[-1]
    idx = torch.arange(r, device=grams.device)
    valid = idx >= r - torch.as_tensor(filled, device=grams.device)
    both = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    g = torch.where(both, grams, torch.zeros((), dtype=grams.dtype, device=grams.device))
    scale = torch.linalg.matrix_norm(g).clamp_min(_TINY)
    eye = torch.eye(r, dtype=grams.dtype, device=grams.device)
    # empty slots: an identity row and column with right-hand side 0, so their z (and c) is 0
    diag = torch.where(valid, torch.as_tensor(reg, dtype=grams.dtype, device=grams.device),
                       torch.ones((), dtype=grams.dtype, device=grams.device))
    a = g / scale[..., None, None] + eye * diag
    z = torch.linalg.solve(a, valid.to(grams.dtype).expand(grams.shape[:-1]).unsqueeze(-1)).squeeze(-1)
    total = z.sum(-1, keepdim=True)
    return z / torch.where(total == 0, torch.ones_like(total), total)


def _guess(pts: Tensor, weights: Tensor, g: Tensor, filled: Any) -> Tensor:
    """m_{t+1} = Σ c_i x_i in g's shape and dtype; g itself when nothing is stored yet."""
    guess = (weights @ pts[:-1]).reshape(g.shape).to(g.dtype)
    return torch.where(torch.as_tensor(filled, device=g.device) > 0, guess, g)


class OptimisticAMSGrad(ElementwiseOptimizer):
    """Optimistic AMSGrad with the RMPE gradient guess over the last ``span`` gradients of each tensor."""

    default_decay_mode = "coupled"
    IMPLS = ("auto", "reference", "foreach")

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.99), eps: float = 1e-8,
                 weight_decay: float = 0.0, span: int = 5, reg: float = 1e-3, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, span=span, reg=reg),
                         **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.integer("span", group["span"], minimum=1)
        V.positive("reg", group["reg"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "optimistic_step", "grad_history")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "optimistic_step"):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["grad_history"] = p.new_zeros((group["span"], *p.shape))

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        return {"lr": as_number(group["lr"]), "b1": b1, "b2": b2, "eps": group["eps"], "reg": group["reg"],
                "bc1": 1 - b1**step, "bc2_sqrt": math.sqrt(1 - b2**step),
                "filled": min(step - 1, group["span"])}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        history = st["grad_history"]
        pts = _points(history, g)
        weights = rmpe_weights(_gram(pts), c["filled"], c["reg"])
        guess = _guess(pts, weights, g, c["filled"])
        return OptimisticAMSGrad._moments_and_step(g, guess, st, c)

    @staticmethod
    def _moments_and_step(g: Tensor, guess: Tensor, st: dict[str, Tensor], c: dict[str, Any]) -> Tensor:
        """Everything after the guess, for one tensor: h, the moments, s, the new offset, the history shift."""
        m, v, vmax, u, history = (st["exp_avg"], st["exp_avg_sq"], st["max_exp_avg_sq"], st["optimistic_step"],
                                  st["grad_history"])
        h = m * c["b1"] + guess * (1 - c["b1"])  # h_{t+1} = β₁θ_{t−1} + (1−β₁)m_{t+1}
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        v.mul_(c["b2"]).add_(g * g * (1 - c["b2"]))
        vmax.copy_(torch.maximum(vmax, v))
        denom = (vmax.sqrt() / c["bc2_sqrt"] + c["eps"]) * c["bc1"]
        offset = h / denom
        s = (m / denom + offset - u * c["decay"]) * c["lr"]
        u.copy_(offset)
        history.copy_(torch.cat([history[1:], g.unsqueeze(0)]))
        return s

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        """The guesses with one batched solve for every tensor's RMPE system, then the reference's per-tensor
        arithmetic (the same operations in the same order)."""
        histories = st["grad_history"]
        grams = torch.stack([_gram(_points(hist, g)) for hist, g in zip(histories, gs)])  # points freed one by one
        weights = rmpe_weights(grams, c["filled"], c["reg"])
        keys = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "optimistic_step", "grad_history")
        return [OptimisticAMSGrad._moments_and_step(g, _guess(_points(hist, g), w, g, c["filled"]),
                                                    {k: st[k][i] for k in keys}, c)
                for i, (g, hist, w) in enumerate(zip(gs, histories, weights))]


register(OptimizerInfo(
    name="opt-amsgrad", cls=OptimisticAMSGrad, family="adaptive", paper="arXiv:1903.01435",
    description="Optimistic AMSGrad: AMSGrad plus an optimistic step along a guess of the next gradient "
                "(RMPE extrapolation of the last `span` gradients per tensor).",
    state_tensors=9, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
