"""Universal majorization–minimization (Streeter, "Universal Majorization-Minimization Algorithms", arXiv
2308.00190) with AutoBound's enclosures (Streeter & Dillon, arXiv 2212.11429; ``optfit.theory.autobound``):
each step takes the step size that minimises an automatically derived quadratic upper bound of the loss along
the update direction, so there is no learning rate to tune and, on a fixed batch, the loss never goes up.

One step, with g = ∇L(θ) from the closure and the batch given by ``set_batch``:

    Δ_p  = −lr_group · g_p                                   (``direction="gradient"``, the paper's basic MM)
    Δ_p  = −lr_group · g_p / (√(v_p / (1 − β₂^k)) + ε),  v_p ← β₂ v_p + (1 − β₂) g_p²      (``direction="rmsprop"``)
    L(θ + tΔ) ≤ U(t) = L₀ + L₁ t + Q t²   for all t ∈ [0, R]        (AutoBound through the model and the loss)
    η    = argmin_{t ∈ [0, R]} U(t)                             (0 if no t gives U(t) < L₀)
    θ   ← θ + η Δ
    R   ← 2η if η > 0;  R/2 if η = 0 while L₁ < 0 (the bound was too loose);  unchanged otherwise

L₀ is the loss at θ, L₁ = ⟨∇L, Δ⟩ exactly, and Q the upper end of the interval that encloses the t² coefficient
(the module docstring of ``optfit.theory.autobound`` lists the rules). Since U(0) = L₀ and U majorises the loss on
[0, R], L(θ + ηΔ) ≤ U(η) ≤ L₀: on the batch the bound was built from, the loss decreases monotonically (up to
rounding errors). ``last_bound`` records (L₀, L₁, [Q_lo, Q], R, η, U(η)) of the latest step.

Usage (the closure is the usual one; the batch must be the one the closure's loss is computed on)::

    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = UniversalMM(model.parameters(), model=model, loss="cross_entropy")
    for x, y in loader:
        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
        opt.set_batch(x, y)
        opt.step(closure)

``optfit.create_optimizer(model, "universal-mm", loss=...)`` passes ``model`` itself (``needs_model``). The model
must be a (nested) ``nn.Sequential`` of the modules that ``optfit.theory.autobound`` has rules for (Linear,
Flatten, Unflatten, Identity, Tanh, Sigmoid, Softplus, GELU, SiLU, ReLU, LeakyReLU); anything else raises
``NotImplementedError`` naming the module, at construction. ``loss`` is ``"mse"`` (``F.mse_loss``, mean over all
elements) or ``"cross_entropy"`` (``F.cross_entropy`` with class indices, mean over the batch). Before each
step the closure's loss is compared with the bound's L₀: a mismatch (another loss, a regulariser, dropout, another
batch) raises ``RuntimeError``, since the bound would not be a bound of what is being minimised.

Where this departs from the papers, and why:

* The trust region: the paper's SafeRate adapts the maximum step from the previous steps; here R ← 2η (so R
  doubles while the bound's minimiser sits on the boundary, and follows the step otherwise). ``trust_radius`` is
  only R's starting value (in units of the direction; R adapts geometrically, so a poor start costs a few steps).
* Only quadratic (degree-2) bounds and a scalar step along one direction (the paper's SafeRate); the per-layer
  learning rates of its SafeCombination and higher-degree bounds are not implemented.
* Smooth activations use AutoBound's valid interval-Taylor remainder (the range of σ'' on the reachable interval)
  rather than its sharp per-function enclosures; ReLU/LeakyReLU and the losses use sharp or near-sharp rules.
* ``lr`` (default 1) scales each group's direction before the bound is built, so the guarantee holds for any lr;
  with one group it only rescales R and η. A group at lr = 0 does not move.
* No weight decay (it is not part of the model graph), no ``maximize``, no complex or sparse parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from . import _validation as V
from ..registry import OptimizerInfo, register
from ..theory import autobound

__all__ = ["UniversalMM", "BoundRecord"]

DIRECTIONS = ("gradient", "rmsprop")


class BoundRecord(NamedTuple):
    """The bound of one step: L(θ + tΔ) ≤ loss + slope·t + curvature_hi·t² on t ∈ [0, radius]."""

    loss: float
    slope: float
    curvature_lo: float
    curvature_hi: float
    radius: float
    step_size: float
    predicted: float  # the upper bound at t = step_size: the loss after the step is at most this


class UniversalMM(Optimizer):
    """Universal MM: steps along −lr·g (optionally RMSprop-scaled) by the minimiser of an AutoBound quadratic
    upper bound of the loss (module docstring). Needs ``model`` (a nested ``nn.Sequential``) and, before each
    ``step(closure)``, ``set_batch(inputs, targets)``."""

    needs_closure = True
    needs_model = True
    supports_complex = False
    maximize_unsupported = "the majorizer bounds the loss from above; maximising would need a lower bound"

    def __init__(self, params: Any, model: nn.Module | None = None, loss: str = "mse", lr: float = 1.0,
                 direction: str = "gradient", trust_radius: float = 1.0, beta2: float = 0.999, eps: float = 1e-8,
                 nonfinite: str = "raise", maximize: bool = False) -> None:
        if isinstance(params, nn.Module):
            model = params if model is None else model
            params = params.parameters()
        V.nonneg("lr", lr)
        V.choice("loss", loss, tuple(autobound.LOSSES))
        V.choice("direction", direction, DIRECTIONS)
        V.positive("trust_radius", trust_radius)
        V.beta("beta2", beta2)
        V.nonneg("eps", eps)
        V.choice("nonfinite", nonfinite, ("raise", "skip"))
        V.flag("maximize", maximize)
        if maximize:
            raise ValueError(f"Invalid maximize: True (UniversalMM: {self.maximize_unsupported})")
        if model is None:
            raise TypeError("UniversalMM needs model=: the nn.Sequential whose graph its bound is derived from "
                            "(optfit.create_optimizer(model, 'universal-mm') passes it)")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        autobound.check_supported(model)  # NotImplementedError naming the first module without a rule
        super().__init__(params, dict(lr=lr))
        owned = {id(p) for p in model.parameters()}
        for i, p in enumerate(p for g in self.param_groups for p in g["params"]):
            if id(p) not in owned:
                raise ValueError(f"parameter {i} (shape {tuple(p.shape)}) does not belong to the model; UniversalMM "
                                 "can only bound the loss along parameters of the model's graph")
        self.model, self.loss = model, loss
        self.direction, self.beta2, self.eps, self.nonfinite = direction, float(beta2), float(eps), nonfinite
        self.trust_radius = float(trust_radius)
        self.skipped_steps = 0
        self.last_bound: BoundRecord | None = None
        self._batch: tuple[Tensor, Tensor] | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        V.nonneg("lr", param_group["lr"])
        for p in param_group["params"]:
            if torch.is_complex(p):
                raise RuntimeError("UniversalMM does not support complex parameters (its bound rules are real)")

    def set_batch(self, inputs: Tensor, targets: Tensor) -> None:
        """The batch the next ``step``'s closure computes its loss on (kept until replaced)."""
        self._batch = (inputs, targets)

    # ------------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One MM step; ``closure`` re-evaluates the loss on the ``set_batch`` batch and its gradients."""
        if closure is None:
            raise RuntimeError("UniversalMM.step() needs a closure that computes the loss on the set_batch batch and "
                               "its gradients, e.g. `def closure(): opt.zero_grad(); l = F.mse_loss(model(x), y); "
                               "l.backward(); return l`")
        if self._batch is None:
            raise RuntimeError("UniversalMM.step(): call opt.set_batch(inputs, targets) first (the bound is "
                               "propagated through the model on that batch)")
        with torch.enable_grad():
            loss = closure()
        items = self._gather()
        if not self._finite(items):
            return loss
        directions = self._directions(items)
        for _, p, _ in items:
            self.state[p]["step"] += 1
        if not directions:
            return loss
        dtype = torch.promote_types(next(iter(directions.values())).dtype, torch.float32)
        inputs, targets = self._batch
        bound = autobound.loss_enclosure(self.model, inputs, targets, self.loss, directions, self.trust_radius, dtype)
        self._check_loss(loss, bound)
        eta = bound.minimiser()
        self.last_bound = BoundRecord(float(bound.value), float(bound.slope), float(bound.lo), float(bound.hi),
                                      self.trust_radius, eta, bound.upper(eta))
        if eta > 0:
            for _, p, _ in items:
                d = directions.get(id(p))
                if d is not None:
                    p.add_(d.to(p.dtype), alpha=eta)
            self.trust_radius = 2 * eta
        elif float(bound.slope) < 0:
            self.trust_radius /= 2
        return loss

    def _gather(self) -> list[tuple[dict[str, Any], Tensor, Tensor]]:
        items, index = [], 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"UniversalMM does not support sparse gradients (parameter {index})")
                    items.append((group, p, p.grad))
                index += 1
        return items

    def _finite(self, items: list) -> bool:
        flat = [p for g in self.param_groups for p in g["params"]]
        for _, p, g in items:
            if not bool(torch.isfinite(g).all()):
                if self.nonfinite == "skip":
                    self.skipped_steps += 1
                    return False
                index = next(i for i, q in enumerate(flat) if q is p)
                raise FloatingPointError(f"UniversalMM: non-finite gradient in parameter {index} (shape "
                                         f"{tuple(p.shape)}); nothing was modified (nonfinite='skip' skips such steps)")
        return True

    def _directions(self, items: list) -> dict[int, Tensor]:
        """Δ for each parameter with a gradient (keyed by id); updates the RMSprop state and creates ``step``."""
        out: dict[int, Tensor] = {}
        for group, p, g in items:
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0)
                if self.direction == "rmsprop":
                    st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            lr = float(group["lr"])
            if self.direction == "rmsprop":
                v = st["exp_avg_sq"]
                v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                correction = 1 - self.beta2 ** (float(st["step"]) + 1)
                d = g / ((v / correction).sqrt() + self.eps)
            else:
                d = g
            if lr != 0:
                out[id(p)] = d * -lr
        return out

    def _check_loss(self, loss: Any, bound: autobound.LossBound) -> None:
        if not isinstance(loss, (Tensor, float, int)):
            return
        got, want = float(loss.detach() if isinstance(loss, Tensor) else loss), float(bound.value)
        tol = (1e-9 if bound.value.dtype == torch.float64 and torch.as_tensor(loss).dtype == torch.float64
               else 1e-4) * max(1.0, abs(want))
        if not abs(got - want) <= tol:
            raise RuntimeError(f"UniversalMM: the closure's loss {got!r} differs from {self.loss} of the model on the "
                               f"set_batch batch ({want!r}); the closure must compute exactly that loss on that batch "
                               "(no regulariser, no dropout), or the bound would not bound it")

    # ---------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optfit"] = {"optimizer": type(self).__name__, "trust_radius": self.trust_radius,
                        "skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim, and restore the trust radius."""
        extra = state_dict.get("optfit", {})
        writer = extra.get("optimizer")
        if writer is not None and writer != type(self).__name__:
            raise ValueError(f"UniversalMM.load_state_dict: this state dict was written by {writer}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "optfit"})
        if "trust_radius" in extra:
            self.trust_radius = float(extra["trust_radius"])
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        for st in self.state.values():
            if "step" in st and not isinstance(st["step"], Tensor):
                st["step"] = torch.tensor(float(st["step"]))


register(OptimizerInfo(
    name="universal-mm", cls=UniversalMM, family="learning-rate-free", paper="arXiv:2308.00190",
    description="Universal majorization–minimization: steps along −g by the minimiser of an AutoBound quadratic upper "
                "bound of the loss (derived from a Sequential model's graph, MSE or cross-entropy); no learning rate, "
                "monotone on a fixed batch; needs model= and set_batch(x, y).",
    state_tensors=0, needs_closure=True, needs_batch=True, supports_cautious=False, supports_complex=False, supports_foreach=False,
    test_hparams={}))
