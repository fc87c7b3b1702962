"""Sophia (Liu, Li, Hall, Liang & Ma, arXiv 2305.14342): a clipped, diagonal-Hessian-preconditioned momentum method.

    m ← β₁m + (1−β₁)g
    every k steps (t = 1, k+1, 2k+1, …):  h ← β₂h + (1−β₂)ĥ      ĥ: an estimate of diag ∇²f(θ); else h unchanged
    θ ← θ(1 − ηλ) − η · clip(m / max(γh, ε), 1)                   clip(x, 1) = max(−1, min(x, 1)), elementwise

Every coordinate moves by at most η; where h ≤ ε/γ (flat or negative curvature) the step is η·sign(m). Weight decay
is decoupled by default (the paper's); with ``decay_mode="coupled"`` λ joins the objective, so ĥ + λ is its
curvature. No bias correction (the paper has none): h starts at 0, so the first steps are sign steps.

The estimators (``estimator=``):

* ``"hutchinson"`` (Sophia-H, the default): ĥ = z ⊙ Hz with z ~ N(0, I) (``distribution="rademacher"``: ±1), one z
  over every parameter of every group, drawn from a CPU generator seeded by ``seed`` (saved in the state_dict).
  E[z ⊙ Hz] = diag H. Hz comes from the gradients' autograd graph when they carry one (``loss.backward(
  create_graph=True)`` on the steps where ``next_step_needs_graph()`` is true; ``needs_create_graph = True`` tells
  trainers so). **With a plain closure** (gradients without a graph) Hz is the forward difference
  (∇f(θ + δz) − ∇f(θ))/δ from one extra closure call at θ + δz (δ = √u·(1 + ‖θ‖)/‖z‖, u the dtype's unit roundoff;
  θ and ``p.grad`` are restored exactly): exact on quadratics, O(δ) otherwise, and the closure must be
  deterministic (same batch, same dropout masks). Without either, a Hessian step raises.
* ``"gnb"`` (Sophia-G, Gauss-Newton-Bartlett): ĥ = B · ĝ ⊙ ĝ, ĝ = ∇ (1/B) Σ_b CE(logits_b, ŷ_b) with ŷ_b sampled
  from softmax(logits_b). It needs the model's logits, which a closure does not return, so it is an explicit
  hook: ``if opt.hessian_due(): opt.update_hessian_gnb(logits)`` before ``step()`` (the graph of ``logits`` is
  kept, so the training loss from the same forward can still be back-propagated). ``step()`` never estimates.

``update_hessian(estimates)`` takes any estimates (one per parameter in param-group order, ``None`` to skip); the
next ``step()`` call uses them (whatever its outcome; they are not part of the state dict) in place of its own
estimate, for the parameters that have a gradient then. Non-finite estimates follow the ``nonfinite`` policy like
gradients. ``p.grad`` is detached after each step (same numbers).

Parameterisation: the paper's (η, γ, ε). pytorch_optimizer 4.1.0's ``SophiaH`` (the parity reference) steps
lr·clip(m / max(h, eps), p); that is this update with η = lr·p, γ = p, ε = eps·p (its decoupled decay lr·wd
becomes ηλ). Defaults: β = (0.96, 0.99), ε = 1e-12, k = 10 (the paper's experiments), γ = 0.01 and η = 6e-4
(pytorch_optimizer's p = 0.01 and lr = 6e-2, mapped; γ and η are tuned per task in the paper). The authors'
Sophia-G code divides by γ·B·h + ε rather than max(γh, ε) and puts B in that denominator instead of in ĥ; with GNB's
ĥ ≥ 0 these agree up to ε.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as nnf
from torch import Tensor

from . import _features as F
from . import _hvp
from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["Sophia"]

ESTIMATORS = ("hutchinson", "gnb")
DISTRIBUTIONS = ("gaussian", "rademacher")


def _probe_vector(g: Tensor, generator: torch.Generator, distribution: str) -> Tensor:
    """A Hutchinson probe shaped like ``g``: N(0, 1) (drawn in float32/float64) or ±1."""
    if distribution == "rademacher":
        return _hvp.rademacher_like(g, generator)
    dtype = g.dtype if g.dtype in (torch.float32, torch.float64) else torch.float32
    z = torch.randn(g.shape, generator=generator, dtype=dtype, device=generator.device)
    return z.to(device=g.device, dtype=g.dtype)


def _norm(tensors: list[Tensor]) -> float:
    return math.sqrt(sum(float(torch.linalg.vector_norm(t.float() if t.dtype.itemsize < 4 else t)) ** 2
                         for t in tensors))


class Sophia(_hvp.HutchinsonState, ElementwiseOptimizer):
    """Sophia (module docstring): Sophia-H by default; ``estimator="gnb"`` with ``update_hessian_gnb`` is Sophia-G."""

    default_decay_mode = "decoupled"
    supports_complex = False
    needs_create_graph = True

    def __init__(self, params: Any, lr: float = 6e-4, betas: tuple[float, float] = (0.96, 0.99),
                 gamma: float = 0.01, eps: float = 1e-12, weight_decay: float = 0.0, update_period: int = 10,
                 estimator: str = "hutchinson", distribution: str = "gaussian", seed: int = 0,
                 **options: Any) -> None:
        V.choice("estimator", estimator, ESTIMATORS)
        V.choice("distribution", distribution, DISTRIBUTIONS)
        V.integer("seed", seed)
        super().__init__(params, dict(lr=lr, betas=betas, gamma=gamma, eps=eps, weight_decay=weight_decay,
                                      update_period=update_period), **options)
        self.estimator, self.distribution, self.seed = estimator, distribution, seed
        self.generator = torch.Generator().manual_seed(seed)
        self._manual: dict[int, Tensor] = {}  # flat parameter index -> estimate given to update_hessian
        self._hessians: dict[int, Tensor] = {}
        self._hessians_by_state: dict[int, Tensor] = {}

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        V.nonneg("gamma", group["gamma"])
        V.integer("update_period", group["update_period"], minimum=1)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_hessian_diag")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        return {"lr": group["lr"], "b1": b1, "b2": b2, "gamma": group["gamma"], "eps": group["eps"]}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, h = st["exp_avg"], st["exp_hessian_diag"]
        m.mul_(c["b1"]).add_(g * (1 - c["b1"]))
        if "hessian" in st:
            h.mul_(c["b2"]).add_(st["hessian"] * (1 - c["b2"]))
        ratio = m / torch.clamp(h * c["gamma"], min=c["eps"])
        return c["lr"] * torch.clamp(ratio, min=-1.0, max=1.0)

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, h = st["exp_avg"], st["exp_hessian_diag"]
        torch._foreach_mul_(m, c["b1"])
        torch._foreach_add_(m, torch._foreach_mul(gs, 1 - c["b1"]))
        if "hessian" in st:
            torch._foreach_mul_(h, c["b2"])
            torch._foreach_add_(h, torch._foreach_mul(st["hessian"], 1 - c["b2"]))
        denom = torch._foreach_mul(h, c["gamma"])
        torch._foreach_clamp_min_(denom, c["eps"])
        steps = torch._foreach_div(m, denom)
        torch._foreach_clamp_min_(steps, -1.0)
        torch._foreach_clamp_max_(steps, 1.0)
        torch._foreach_mul_(steps, c["lr"])
        return steps

    # ------------------------------------------------------------------------------------------- step
    @torch.compiler.disable
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; on Hessian steps (Sophia-H) the gradients carry their graph or ``closure`` is given."""
        manual, self._manual = self._manual, {}
        return _hvp.curvature_step(self, closure, lambda work: self._estimate(work, manual, closure))

    def _estimate(self, work: list, manual: dict[int, Tensor], closure: Callable[[], Any] | None) -> tuple[bool, list]:
        """ĥ for the parameters due one (``update_hessian``'s first); ``(False, work)`` = skip the step."""
        entries = [(group, index, p, g) for group, items in work for index, p, g in items]
        auto = [e for e in entries if e[1] not in manual and self.estimator == "hutchinson" and self._due(e[0], e[2])]
        estimates: dict[int, tuple[dict[str, Any], int, Tensor, Tensor]] = {}
        if auto:
            grads = [g for *_, g in auto]
            zs = [_probe_vector(g, self.generator, self.distribution) for g in grads]
            if _hvp.has_graph(grads):
                hz = _hvp.hvp([p for _, _, p, _ in auto], grads, zs, retain_graph=False)
            elif closure is not None:
                hz, work = self._finite_difference(auto, zs, closure)
            else:
                raise RuntimeError(f"{type(self).__name__} estimates the Hessian at this step but the gradients have "
                                   f"no autograd graph and step() got no closure: {_hvp.GRAPH_HINT}, or pass a "
                                   "closure (a finite difference is used then)")
            for (group, index, p, _), z, h in zip(auto, zs, hz):
                estimates[index] = (group, index, p, z * h)
        for group, index, p, _ in entries:
            if index in manual:
                estimates[index] = (group, index, p, manual[index].to(device=p.device, dtype=p.dtype))
        if not estimates:
            return True, work
        due = list(estimates.values())
        for i, (group, index, p, d) in enumerate(due):
            if group["decay_mode"] == "coupled" and group["weight_decay"]:
                due[i] = (group, index, p, d + group["weight_decay"])
        checked = [i for i, (group, *_) in enumerate(due) if group["nonfinite"] != "ignore"]
        bad = F.first_nonfinite([due[i][3] for i in checked])
        if bad is not None:
            group, index, p, _ = due[checked[bad]]
            if group["nonfinite"] == "raise":
                raise FloatingPointError(f"non-finite Hessian estimate in {self._describe(index, p)}; no parameter "
                                         "or state was modified (pass nonfinite='skip' to skip such steps)")
            return False, work
        self._hessians = {id(p): d for _, _, p, d in due}
        return True, work

    def _finite_difference(self, auto: list, zs: list[Tensor], closure: Callable[[], Any]) -> tuple[list[Tensor], list]:
        """Hz ≈ (∇f(θ + δz) − ∇f(θ))/δ from one closure call; θ and every ``p.grad`` restored. Returns the
        products and the work list gathered afresh."""
        params = [p for _, _, p, _ in auto]
        before = [g.detach().clone() for *_, g in auto]
        kept = [(p, None if p.grad is None else p.grad.detach().clone())
                for group in self.param_groups for p in group["params"]]
        thetas = [p.detach().clone() for p in params]
        unit = max(torch.finfo(p.dtype).eps for p in params)
        delta = math.sqrt(unit) * (1.0 + _norm(thetas)) / max(_norm(zs), 1e-30)
        try:
            for p, z in zip(params, zs):
                p.add_(z, alpha=delta)
            with torch.enable_grad():
                closure()
            after = {id(p): g for _, items in self._gather() for _, p, g in items}
        finally:
            for p, theta in zip(params, thetas):
                p.copy_(theta)
            for p, g in kept:
                p.grad = g
        products = []
        for p, g0 in zip(params, before):
            g1 = after.get(id(p))
            if g1 is None:
                products.append(torch.zeros_like(g0))
                continue
            wide = torch.promote_types(g0.dtype, torch.float32)
            products.append(((g1.to(wide) - g0.to(wide)) / delta).to(g0.dtype))
        return products, self._gather()

    def _due(self, group: dict[str, Any], p: Tensor) -> bool:
        st = self.state.get(p)
        t = int(st["step"]) + 1 if st else 1
        return (t - 1) % group["update_period"] == 0

    def hessian_due(self) -> bool:
        """Whether the next ``step()`` is a Hessian step (t = 1, k+1, …): when to call ``update_hessian_gnb``."""
        return any(self._due(group, p) for group in self.param_groups for p in group["params"] if p.requires_grad)

    def next_step_needs_graph(self) -> bool:
        """Whether the next step estimates Hz from the gradients' graph (Sophia-H on a Hessian step)."""
        return self.estimator == "hutchinson" and self.hessian_due()

    # ------------------------------------------------------------------------------- explicit estimates
    def update_hessian(self, estimates: Sequence[Tensor | None]) -> None:
        """Estimates of diag ∇²f, one per parameter in param-group order (``None``: none for it), used by the
        next ``step()`` as its ĥ."""
        params = [p for group in self.param_groups for p in group["params"]]
        if len(estimates) != len(params):
            raise ValueError(f"Invalid estimates: expected {len(params)} (one per parameter), got {len(estimates)}")
        for index, (p, d) in enumerate(zip(params, estimates)):
            if d is None:
                continue
            if tuple(d.shape) != tuple(p.shape):
                raise ValueError(f"Invalid estimates: {self._describe(index, p)} got an estimate of shape "
                                 f"{tuple(d.shape)}")
            self._manual[index] = d.detach()

    def update_hessian_gnb(self, logits: Tensor, *, batch_size: int | None = None) -> None:
        """Sophia-G's Gauss-Newton-Bartlett estimate from the model's ``logits`` (last dim = classes):
        ĥ = B·ĝ⊙ĝ, ĝ = ∇ mean_b CE(logits_b, ŷ_b), ŷ_b ~ softmax(logits_b); B = rows of ``logits`` unless
        ``batch_size`` says otherwise. The graph of ``logits`` is kept. Used by the next ``step()``."""
        if logits.grad_fn is None:
            raise ValueError("Invalid logits: they carry no autograd graph (compute them with gradients enabled)")
        if any(group["maximize"] for group in self.param_groups):
            raise ValueError("Invalid maximize: True (the Gauss-Newton-Bartlett estimate is the curvature of a "
                             "cross-entropy being minimised)")
        flat = logits.reshape(-1, logits.shape[-1])
        count = flat.shape[0] if batch_size is None else V.integer("batch_size", batch_size, minimum=1)
        with torch.no_grad():
            probs = torch.softmax(flat.detach().float(), dim=-1)
            labels = torch.multinomial(probs, 1, generator=self._generator_on(flat.device)).squeeze(-1)
        params = [p for group in self.param_groups for p in group["params"]]
        trainable = [p for p in params if p.requires_grad]
        with torch.enable_grad():
            sampled = nnf.cross_entropy(flat, labels)
            grads = torch.autograd.grad(sampled, trainable, retain_graph=True, allow_unused=True)
        by_param = {id(p): g for p, g in zip(trainable, grads)}
        self.update_hessian([None if by_param.get(id(p)) is None else count * by_param[id(p)].square()
                             for p in params])

    def _generator_on(self, device: torch.device) -> torch.Generator:
        """The CPU generator itself, or a generator on ``device`` seeded from it (so the state_dict's generator
        state determines every draw)."""
        if device.type == "cpu":
            return self.generator
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.Generator(device=device).manual_seed(seed)

    # ----------------------------------------------------------------------------- kernel plumbing
    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """The kernel with ``st["hessian"] = ĥ`` for the parameters that have an estimate (a bucket shares its step,
        so the Hutchinson ones are all or none; ``update_hessian`` may give some only), without it for the rest."""
        ds = [self._hessians_by_state.get(id(st)) for st in sts]
        fresh = [i for i, d in enumerate(ds) if d is not None]
        rest = [i for i, d in enumerate(ds) if d is None]
        if fresh:
            super()._run_kernel(group, [ps[i] for i in fresh], [gs[i] for i in fresh],
                                [{**sts[i], "hessian": ds[i]} for i in fresh], (*keys, "hessian"), c)
        if rest:
            super()._run_kernel(group, [ps[i] for i in rest], [gs[i] for i in rest], [sts[i] for i in rest], keys, c)

    # ------------------------------------------------------------------------------------------ state
    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_manual", {})


register(OptimizerInfo(
    name="sophia", cls=Sophia, family="second-order", paper="arXiv:2305.14342",
    description="Sophia: θ ← θ − η·clip(m / max(γh, ε), 1), h = EMA of a diagonal-Hessian estimate refreshed every "
                "k steps (Hutchinson z⊙Hz by default: backward(create_graph=True) or a closure; Gauss-Newton-Bartlett "
                "via update_hessian_gnb).",
    state_tensors=2, has_betas=True, has_momentum=True, supports_complex=False, deterministic=True,
    test_hparams={"lr": 0.02},
))
