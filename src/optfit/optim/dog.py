"""DoG and L-DoG (Ivgi, Hinder & Carmon, "DoG is SGD's Best Friend: A Parameter-Free Dynamic Step Size
Schedule", ICML 2023, arXiv 2302.12022): SGD whose step size is the distance travelled from the start over the
root of the summed squared gradient norms, plus the polynomial-decay iterate averaging the paper pairs it with.

    r_ε  = reps_rel · (1 + ‖x₀‖)                      (0 when init_eta is given)
    r̄_t  = max(r_ε, max_{i≤t} ‖x_i − x₀‖)
    G_t  = eps + Σ_{i≤t} ‖g_i‖²
    η_t  = r̄_t / √G_t                                  (η₀ = init_eta when given)
    x_{t+1} = x_t − c·η_t·g_t                           (c = lr, a multiplier, default 1)

DoG (``dog``) takes the norms over every parameter of the optimizer, all param groups together, as the paper's
x is the whole model; each group then scales η_t by its own lr. L-DoG (``ldog``) keeps r̄, G and η per parameter
tensor (the paper's "layer"). r̄, G and η are float64 numbers kept in the state_dict (DoG's under
``["optfit"]["dog"]``, L-DoG's in each parameter's state), with the start point x₀ as a state tensor (one
parameter-sized copy; the foreach path also makes a transient x − x₀ of every tensor of a bucket).

Weight decay λ: ``decay_mode="coupled"`` (the default, as the package): g ← g + λx before G sees it;
``"decoupled"``: x ← x(1 − c·η_t·λ), outside G; ``"independent"``: x ← x(1 − λ·lr/initial_lr).

Where this differs from the authors' package (``dog-optimizer`` 1.0.3), and why:

* The package keeps DoG's r̄ and G per param group. With one group that is the paper's DoG; with several (as
  ``create_optimizer`` makes: a decay and a no-decay group) it would run separate DoGs on arbitrary blocks.
  Here they are global, so ``reps_rel``, ``eps`` and ``init_eta`` must be the same in every group.
* ``lr`` also multiplies ``init_eta`` (the package ignores lr on that first step) and may be 0 (the package
  needs > 0): a group scheduled to lr 0 must not move.
* ``eps`` is added to G once, at the first step (as the package; the paper has no eps). With ``init_eta``
  given, r_ε = 0 (as the package), so r̄ is the distance reached after that first step.
* Parameters without a gradient are skipped (the package fails on them); DoG's distance still counts every
  parameter that moved earlier.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import _LOW_PRECISION, ElementwiseOptimizer

__all__ = ["DoG", "LDoG", "PolyAverager"]

GLOBAL_KEYS = ("reps_rel", "eps", "init_eta")  # DoG: one r̄ and G for all groups, so one value of these


def _sq_norms(ts: list[Tensor], foreach: bool) -> Tensor:
    """‖t‖² of each tensor as a float64 vector (norms of low-precision tensors taken in float32)."""
    dev = ts[0].device

    def acc(t: Tensor) -> torch.dtype:
        return torch.float32 if t.dtype in _LOW_PRECISION else t.dtype

    if foreach and len({(t.dtype, t.device) for t in ts}) == 1:
        norms = torch._foreach_norm(ts, 2, dtype=acc(ts[0]))
    else:
        norms = [torch.linalg.vector_norm(t, dtype=acc(t)) for t in ts]
    return torch.stack([n.to(device=dev, dtype=torch.float64) for n in norms]).square()


def _eta(rbar: float, G: float) -> float:
    return rbar / math.sqrt(G) if G > 0 else 0.0


class DoG(ElementwiseOptimizer):
    """Distance over Gradients: ``x ← x − lr·η_t·g`` with η_t = r̄_t/√G_t over all parameters together.
    Pair it with iterate averaging (``PolyAverager``). ``eta`` is the latest η_t (before lr)."""

    default_decay_mode = "coupled"
    two_pass = True
    layerwise: ClassVar[bool] = False
    IMPLS = ("auto", "reference", "foreach")  # the step is x − s·g: nothing for torch.compile to fuse

    def __init__(self, params: Any, lr: float = 1.0, reps_rel: float = 1e-6, eps: float = 1e-8,
                 init_eta: float | None = None, weight_decay: float = 0.0, **options: Any) -> None:
        self.dog_state: dict[str, float | None] = {"rbar": None, "G": 0.0, "eta": None}
        super().__init__(params, dict(lr=lr, reps_rel=reps_rel, eps=eps, init_eta=init_eta,
                                      weight_decay=weight_decay), **options)

    @property
    def eta(self) -> float | None:
        return self.dog_state["eta"]

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["init_eta"] is None:
            V.positive("reps_rel", group["reps_rel"])
        else:
            V.positive("init_eta", group["init_eta"])
            V.nonneg("reps_rel", group["reps_rel"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (DoG steps along −g, which always agrees in sign with g)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self.layerwise and self.param_groups:
            for key in GLOBAL_KEYS:
                value, first = param_group.get(key, self.defaults[key]), self.param_groups[0][key]
                if value != first:
                    raise ValueError(f"Invalid {key}: {value!r} (DoG's r̄ and G span all param groups, so {key} "
                                     f"must equal the first group's {first!r}; LDoG allows per-group values)")
        super().add_param_group(param_group)

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["x0"] = p.detach().clone(memory_format=torch.preserve_format)
        if self.layerwise:
            state.update(rbar=0.0, G=0.0, eta=0.0)

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("x0",)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, Any]:
        return {"lr": group["lr"], "step": step}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        """The direction before the step size: the gradient itself (η needs sums over many tensors)."""
        return g

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        return gs

    # ------------------------------------------------------------------------- sums, then the step
    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """Squared norms of this bucket's g, x − x₀ and (at its first step) x₀; DoG defers the step to
        ``_second_pass``, L-DoG takes it here."""
        foreach = self._impl(group, ps) == "foreach"
        first = c["step"] == 1 if self.layerwise else self.dog_state["rbar"] is None
        x0s = [st["x0"] for st in sts]
        sums = [_sq_norms(gs, foreach), _sq_norms(torch._foreach_sub(ps, x0s), foreach)]
        sums.append(_sq_norms(x0s, foreach) if first else torch.zeros_like(sums[0]))
        if not self.layerwise:
            self._pending.append((group, ps, gs, sts, c, torch.stack(sums).sum(1)))
            return
        etas = []
        for st, (g_sq, d_sq, x0_sq) in zip(sts, torch.stack(sums, 1).tolist()):
            st["rbar"], st["G"] = self._advance(group, first, st["rbar"], st["G"], g_sq, d_sq, x0_sq)
            st["eta"] = group["init_eta"] if first and group["init_eta"] is not None else _eta(st["rbar"], st["G"])
            etas.append(st["eta"])
        self._apply(group, ps, gs, c, etas)

    @staticmethod
    def _advance(group, first: bool, rbar: float, G: float, g_sq: float, d_sq: float,
                 x0_sq: float) -> tuple[float, float]:
        """(r̄_t, G_t) from (r̄_{t−1}, G_{t−1}) and this step's squared norms."""
        if first:
            r_eps = 0.0 if group["init_eta"] is not None else group["reps_rel"] * (1.0 + math.sqrt(x0_sq))
            return r_eps, group["eps"] + g_sq
        return max(rbar, math.sqrt(d_sq)), G + g_sq

    def _second_pass(self, pending: list, loss: Any) -> None:
        dev = pending[0][-1].device
        g_sq, d_sq, x0_sq = torch.stack([s.to(dev) for *_, s in pending]).sum(0).tolist()
        d_sq += self._distance_of_absent({id(st) for _, _, _, sts, *_ in pending for st in sts})
        st, group0 = self.dog_state, self.param_groups[0]
        first = st["rbar"] is None
        st["rbar"], st["G"] = self._advance(group0, first, st["rbar"], st["G"], g_sq, d_sq, x0_sq)
        init_eta = group0["init_eta"]
        st["eta"] = init_eta if first and init_eta is not None else _eta(st["rbar"], st["G"])
        for group, ps, gs, _, c, _ in pending:
            self._apply(group, ps, gs, c, [st["eta"]] * len(ps))

    def _distance_of_absent(self, present: set[int]) -> float:
        """Σ‖x − x₀‖² of the parameters that moved before but have no gradient now."""
        total = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if st and "x0" in st and id(st) not in present:
                    x = torch.view_as_real(p) if p.is_complex() else p
                    total += float(torch.linalg.vector_norm(x.to(st["x0"].dtype) - st["x0"], dtype=torch.float64)) ** 2
        return total

    def _apply(self, group, ps, gs, c, etas: list[float]) -> None:
        """x ← x·decay − lr·η·g, per tensor η (one value repeated for DoG)."""
        sizes = [c["lr"] * e for e in etas]
        if group["decay_mode"] == "decoupled":
            decays = [1.0 - s * group["weight_decay"] for s in sizes]
        else:
            decays = [c["decay"]] * len(ps)
        if self._impl(group, ps) == "foreach":
            if any(d != 1.0 for d in decays):
                torch._foreach_mul_(ps, decays)
            torch._foreach_sub_(ps, torch._foreach_mul(gs, sizes))
            return
        for p, g, s, d in zip(ps, gs, sizes, decays):
            if d != 1.0:
                p.mul_(d)
            p.sub_(g * s)

    # ----------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if not self.layerwise:
            sd["optfit"]["dog"] = dict(self.dog_state)
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("optfit", {}).get("dog", {})
        self.dog_state = {"rbar": saved.get("rbar"), "G": float(saved.get("G", 0.0)), "eta": saved.get("eta")}


class LDoG(DoG):
    """Layer-wise DoG: r̄, G and η per parameter tensor (``state[p]["eta"]`` is its latest η, before lr)."""

    two_pass = False
    layerwise = True


# ------------------------------------------------------------------------------------------ averaging
class PolyAverager:
    """Polynomial-decay iterate averaging (Shamir & Zhang 2013), the averaging the DoG paper evaluates with:

        x̄₁ = x₁ ;  x̄_t = (1 − w_t)·x̄_{t−1} + w_t·x_t ,  w_t = (1 + γ)/(t + γ)

    over a module's parameters and floating buffers (integer buffers, e.g. BatchNorm's counter, are copied) or
    over a list of tensors. Call ``step()`` after each optimizer step; ``swapped()`` puts the averages into the
    live tensors for a ``with`` block (evaluation, saving); ``copy_to`` writes them into another model."""

    def __init__(self, model_or_params: nn.Module | Iterable[Tensor], gamma: float = 8.0) -> None:
        V.nonneg("gamma", gamma)
        self.gamma = float(gamma)
        self.t = 1
        if isinstance(model_or_params, nn.Module):
            self.module: nn.Module | None = model_or_params
            self._tensors: list[Tensor] = []
        else:
            self.module, self._tensors = None, list(model_or_params)
        self.averages: dict[str, Tensor] = {k: v.detach().clone() for k, v in self._sources().items()}

    def _sources(self) -> dict[str, Tensor]:
        """Looked up afresh each time: ``module.to(...)`` replaces buffer tensors."""
        if self.module is not None:
            return dict(self.module.state_dict(keep_vars=True))
        return {str(i): t for i, t in enumerate(self._tensors)}

    @torch.no_grad()
    def step(self) -> None:
        w = (1.0 + self.gamma) / (self.t + self.gamma)
        for k, x in self._sources().items():
            avg = self.averages[k]
            if avg.device != x.device:
                avg = self.averages[k] = avg.to(x.device)
            if x.is_floating_point() or x.is_complex():
                avg.mul_(1.0 - w).add_(x.detach(), alpha=w)
            else:
                avg.copy_(x)
        self.t += 1

    def averaged_parameters(self) -> list[Tensor]:
        """The averages, in the order of the module's state_dict (or of the tensors given)."""
        return list(self.averages.values())

    @torch.no_grad()
    def copy_to(self, target: nn.Module | Iterable[Tensor]) -> None:
        dst = dict(target.state_dict(keep_vars=True)) if isinstance(target, nn.Module) else \
            {str(i): t for i, t in enumerate(target)}
        for k, avg in self.averages.items():
            dst[k].copy_(avg)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Within the block the live tensors hold the averages; the trained values come back after it."""
        with torch.no_grad():
            sources = self._sources()
            kept = {k: x.detach().clone() for k, x in sources.items()}
            for k, x in sources.items():
                x.copy_(self.averages[k])
        try:
            yield
        finally:
            with torch.no_grad():
                for k, x in sources.items():
                    x.copy_(kept[k])

    def reset(self) -> None:
        """Restart the weights (the next ``step`` copies the current values)."""
        self.t = 1

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "gamma": self.gamma, "averages": dict(self.averages)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.t, self.gamma = int(state_dict["t"]), float(state_dict["gamma"])
        for k, v in state_dict["averages"].items():
            self.averages[k].copy_(v)


register(OptimizerInfo(
    name="dog", cls=DoG, family="learning-rate-free", paper="arXiv:2302.12022",
    description="DoG: SGD with η_t = max‖x_i − x₀‖ / √Σ‖g_i‖² over all parameters (lr a multiplier, default 1); "
                "pair with PolyAverager.",
    state_tensors=1, has_betas=False, has_momentum=False, supports_cautious=False, test_hparams={},
))
register(OptimizerInfo(
    name="ldog", cls=LDoG, family="learning-rate-free", paper="arXiv:2302.12022",
    description="Layer-wise DoG: DoG's distance-over-gradients step size per parameter tensor.",
    state_tensors=1, has_betas=False, has_momentum=False, supports_cautious=False, test_hparams={},
))
