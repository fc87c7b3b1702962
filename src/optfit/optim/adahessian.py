"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney, arXiv 2006.00719): Adam whose second moment is the
squared, spatially averaged Hutchinson estimate of the Hessian diagonal instead of g².

    z ~ Rademacher (one ±1 vector over every parameter; a CPU generator seeded by ``seed``, in the state_dict)
    D = |z ⊙ Hz|    (Hz = ∂(gᵀz)/∂θ: one extra reverse pass through the gradients' graph, all groups at once)
    D ← mean of D over each output row (2-D), the last dim (3-D) or a conv kernel's spatial dims (4-D)
    m ← β₁m + (1−β₁)g ;  v ← β₂v + (1−β₂)D²                 (v only on Hessian steps, see update_period)
    θ ← θ − η ( m/(1−β₁ᵗ) / ((√v/√(1−β₂ⁿ))ᵏ + ε) )          k = hessian_power ∈ (0, 1], n = Hessian steps so far

The gradients must carry their graph: call ``loss.backward(create_graph=True)`` (or give ``step`` a closure that
does); ``needs_create_graph = True`` tells trainers so, and a Hessian step on graph-less gradients raises
(``next_step_needs_graph()`` says whether the coming step is one; the others accept a plain backward). After the step
``p.grad`` is replaced by its detached value (same numbers), which frees the graph and breaks the
parameter ↔ gradient reference cycle ``create_graph`` creates.

``update_period = K`` estimates the Hessian at steps 1, K+1, 2K+1, … only (θ still moves every step); the bias
correction of v counts those n = ⌊(t−1)/K⌋ + 1 updates, not t (the kozistr port divides by 1−β₂ᵗ, which
underestimates v for K > 1). Other deliberate departures from the reference code (catalog D1): z is truly
Rademacher (randint with high=2, not kozistr's high=1 that gives z ≡ −1), one HVP covers every param group (the
reference indexes gradients per group), and there is no multi-GPU averaging (the reference averages a temporary).
Decay is decoupled by default (the reference folds ηλθ into the step, which is the same update); with
``decay_mode="coupled"`` the L2 term is part of the objective, so its curvature λ enters D = |z⊙Hz + λ|.
Non-finite Hessian estimates follow the ``nonfinite`` policy like gradients (``skip`` rewinds the generator).
``maximize=True``: the gradients are negated with their graph, so the HVP is that of −f (D = |z⊙(−H)z + λ|).

``torch.compile(opt.step)`` runs this step eagerly (``torch.compiler.disable``): traced, the Hessian pass's
hand-off of D between the two halves of the step is lost and v stays 0 (steps of lr/ε); a compiled step is
therefore the eager one, bit for bit (``fullgraph=True`` refuses it with dynamo's error).
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
from ._base import ElementwiseOptimizer

__all__ = ["AdaHessian", "spatial_average"]


def spatial_average(d: Tensor) -> Tensor:
    """D1's averaging (instruction/ version, full blocks): 2-D mean over dim 1, 3-D over the last dim, 4-D over
    dims (2, 3); other ranks unchanged. Same shape as ``d``."""
    dims = {2: (1,), 3: (-1,), 4: (2, 3)}.get(d.ndim)
    return d if dims is None else d.mean(dim=dims, keepdim=True).expand_as(d).contiguous()


def _absolute_diagonal(group: dict[str, Any], sample: Tensor) -> Tensor:
    """AdaHessian's D: |z ⊙ Hz|, averaged over spatial blocks where the group asks for it."""
    d = sample.abs()
    return spatial_average(d) if group["spatial_average"] else d


class AdaHessian(_hvp.HutchinsonState, ElementwiseOptimizer):
    """AdaHessian; gradients from ``loss.backward(create_graph=True)``. ``seed`` seeds the Rademacher draws."""

    default_decay_mode = "decoupled"
    supports_complex = False
    needs_create_graph = True

    def __init__(self, params: Any, lr: float = 0.15, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-4,
                 weight_decay: float = 0.0, hessian_power: float = 1.0, update_period: int = 1,
                 spatial_average: bool = True, seed: int = 0, **options: Any) -> None:
        V.integer("seed", seed)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      hessian_power=hessian_power, update_period=update_period,
                                      spatial_average=spatial_average), **options)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._hessians: dict[int, Tensor] = {}
        self._hessians_by_state: dict[int, Tensor] = {}

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.in_range("hessian_power", group["hessian_power"], 0.0, 1.0, lo_open=True, hi_open=False)
        V.integer("update_period", group["update_period"], minimum=1)
        V.flag("spatial_average", group["spatial_average"])

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_hessian_diag_sq")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        n = (step - 1) // group["update_period"] + 1  # Hessian updates of v so far
        return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"], "power": group["hessian_power"],
                "step_size": group["lr"] / (1 - b1**step), "bc2_sqrt": math.sqrt(1 - b2**n)}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = st["exp_avg"], st["exp_hessian_diag_sq"]
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        if "hessian" in st:
            d = st["hessian"]
            v.mul_(c["b2"]).add_(d * d * (1 - c["b2"]))
        denom = (v.sqrt() / c["bc2_sqrt"]) ** c["power"] + c["eps"]
        return c["step_size"] * m / denom

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = st["exp_avg"], st["exp_hessian_diag_sq"]
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, torch._foreach_mul(gs, 1 - c["b1"]))
        if "hessian" in st:
            d = st["hessian"]
            sq = torch._foreach_mul(d, d)
            torch._foreach_mul_(sq, 1 - c["b2"])
            torch._foreach_mul_(v, c["b2"])
            torch._foreach_add_(v, sq)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, c["bc2_sqrt"])
        torch._foreach_pow_(denom, c["power"])
        torch._foreach_add_(denom, c["eps"])
        steps = torch._foreach_div(m, denom)
        torch._foreach_mul_(steps, c["step_size"])
        return steps

    # ------------------------------------------------------------------------------------ the Hessian pass
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; the gradients (from ``closure`` if given) must come from ``backward(create_graph=True)``."""
        return _hvp.curvature_step(self, closure, lambda work: (self._estimate(work), work))

    def _estimate(self, work: list) -> bool:
        """D for every parameter due a Hessian estimate this step (one HVP over all groups); ``False`` = skip."""
        due = [(group, index, p, g) for group, items in work for index, p, g in items if self._due(group, p)]
        if not due:
            return True
        estimates = _hvp.hutchinson_estimates(self, due, _absolute_diagonal)
        if estimates is None:
            return False
        self._hessians = {id(p): d for (_, _, p, _), d in zip(due, estimates)}
        return True

    def _due(self, group: dict[str, Any], p: Tensor) -> bool:
        st = self.state.get(p)
        t = int(st["step"]) + 1 if st else 1
        return (t - 1) % group["update_period"] == 0

    def next_step_needs_graph(self) -> bool:
        """Whether the next ``step()`` estimates the Hessian (then the gradients need ``create_graph=True``; on
        the other steps of ``update_period > 1`` a plain ``backward()`` is enough and cheaper)."""
        return any(self._due(group, p) for group in self.param_groups for p in group["params"])

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        ds = [self._hessians_by_state.get(id(st)) for st in sts]
        if any(d is not None for d in ds):  # a bucket shares its step, so all or none are Hessian steps
            sts = [{**st, "hessian": d} for st, d in zip(sts, ds)]
            keys = (*keys, "hessian")
        super()._run_kernel(group, ps, gs, sts, keys, c)


register(OptimizerInfo(
    name="adahessian", cls=AdaHessian, family="curvature", paper="arXiv:2006.00719",
    description="AdaHessian: Adam with v = EMA of the spatially averaged Hutchinson diagonal |z⊙Hz|²; needs "
                "loss.backward(create_graph=True).",
    state_tensors=2, has_betas=True, has_momentum=True, supports_complex=False, deterministic=True,
    test_hparams={"lr": 0.1},
))
