"""AdaFisher and AdaFisherW (Gomes et al., ICLR 2025, arXiv 2405.16397): bias-corrected momentum divided by a
diagonal Kronecker-factored (K-FAC) Fisher, built from statistics that hooks on the model's layers collect.

For a supported layer with input ``a`` (``ā`` = ``a`` with a ones column when the layer has a bias) and output
gradient ``δ = ∂L/∂out``, during the forward/backward that precedes step ``t+1`` whenever ``t % t_cov == 0``::

    Ĥ = MinMax(mean over rows of ā²)      Ŝ = MinMax(mean over rows of δ²)     (rows = batch × positions)
    H ← 0.1γ·H + 0.01γ·Ĥ,   S ← 0.1γ·S + 0.01γ·Ŝ        (factor_ema="released"; H = S = 1 before the first)
    H ← γ·H + (1−γ)·Ĥ                                     (factor_ema="standard", the textbook EMA)
    F̃ = kron(H, S) + λ, reshaped to the weight (out, in·kh·kw) and the bias (the ones column)

    m ← β m + (1−β) g                     AdaFisher: g ← g + λ_wd θ first (coupled L2)
    θ ← θ − η/(1−βᵗ) · m / F̃              AdaFisherW: θ ← θ(1 − η λ_wd) first (decoupled)

with ``MinMax(x) = (x − min x) / (max x − min x + 1e-6)`` and no square root on ``F̃`` (as released). Parameters
outside supported layers get ``F̃ = 1``: without a ``model`` AdaFisher is exactly bias-corrected EMA-momentum SGD.
That update is still well defined (momentum, decay, state_dict and resume stay correct), so bare parameters are
accepted, with an ``AdaFisherWithoutModelWarning`` (also when a model is given but none of its supported layers owns
a parameter); what cannot work without the hooks raises: loading a state that holds curvature factors.

Supported layers (``isinstance``): ``nn.Linear`` (rows = all leading dims), ``nn.Conv2d`` (rows = batch × output
positions × groups; ``ā`` is the im2col patch with padding, stride and dilation), ``nn.BatchNorm2d`` and
``nn.LayerNorm`` (the released "summed statistics": ``u_c = Σ_{b,T} x_c / |T|²``, ``Ĥ = MinMax([Σ_c u_c², C] / B²)``
– one entry for the gain, one for the bias – and ``Ŝ_c = MinMax((Σ_{b,T} δ_c)² / B)``; ``T`` = the positions
between the batch and the feature dims; the released code reduces LayerNorm over dim 1 instead).

Module ↔ parameter mapping is by identity: a layer's ``weight``/``bias`` objects are looked up among the
optimizer's parameters, so order, grouping and unsupported modules in between do not matter. A parameter owned
by two supported modules (tied weights), complex parameters and layers whose hooks never see both an input and an
output gradient (e.g. ``MultiheadAttention.out_proj``, which is used through its weight) stay at ``F̃ = 1``.
Statistics of every grad-enabled forward/backward since the last step are averaged (gradient accumulation,
activation checkpointing and reused layers are fine) and folded into H, S at ``step()``, after the non-finite
check; the hooks keep only O(in+out) sums, never activations. In-place ops after a layer are fine (the output
gradient is taken by a tensor hook on the layer's output). ``remove_hooks()`` detaches them and freezes H, S.
The hooks are picklable objects holding a weak reference to the optimizer: ``copy.deepcopy((model, opt))`` and
pickling the pair give a copy whose model feeds the copied optimizer.
"""

from __future__ import annotations

import math
import warnings
import weakref
from typing import Any

import torch
import torch.nn.functional as NF
from torch import Tensor, nn

from . import _features as F
from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer

__all__ = ["AdaFisher", "AdaFisherW", "AdaFisherWithoutModelWarning"]

SUPPORTED_MODULES = (nn.Linear, nn.Conv2d, nn.BatchNorm2d, nn.LayerNorm)
FACTOR_EMAS = ("released", "standard")
_MINMAX_EPS = 1e-6


def _stat_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _minmax(x: Tensor) -> Tensor:
    """``(x − min)/(max − min + 1e-6)``; ``+inf`` entries (overflowed squares) count as 1 as in the release."""
    x = torch.where(x == math.inf, torch.ones_like(x), x)
    lo, hi = x.min(), x.max()
    return (x - lo) / (hi - lo + _MINMAX_EPS)


class AdaFisherWithoutModelWarning(UserWarning):
    """AdaFisher preconditions no parameter (no ``model``, or no supported layer of it owns one): it runs as
    bias-corrected momentum SGD."""


class _Layer:
    """One supported module: its parameters by role, the factors H, S and the pending sums of this step."""

    def __init__(self, name: str, module: nn.Module, roles: dict[str, Tensor], key: int, group_index: int) -> None:
        self.name, self.module, self.roles, self.key, self.group_index = name, module, roles, key, group_index
        self.kind = "linear" if isinstance(module, nn.Linear) else "conv" if isinstance(module, nn.Conv2d) else "norm"
        self.has_bias = getattr(module, "bias", None) is not None
        self.fan_in = module.weight[0].numel() if self.kind != "norm" else 1
        # lengths of H and S: (in·kh·kw [+1], out) for Linear/Conv2d, (2, C) for the norm layers
        self.sizes = ((2, module.weight.numel()) if self.kind == "norm"
                      else (self.fan_in + self.has_bias, module.weight.shape[0]))
        self.H: Tensor | None = None
        self.S: Tensor | None = None
        self.pending: dict[str, list] = {}
        self.handles: list = []

    def add(self, which: str, total: Tensor, rows: float) -> None:
        acc = self.pending.get(which)
        self.pending[which] = [total, rows] if acc is None else [acc[0] + total, acc[1] + rows]

    # ---------------------------------------------------------------------------------------- statistics
    def input_stats(self, x: Tensor) -> tuple[Tensor, float]:
        """(Σ over rows of ā², number of rows); for norm layers (Ĥ before MinMax, 1)."""
        x = x.detach().to(_stat_dtype(x))
        if self.kind == "linear":
            x = x.reshape(-1, x.shape[-1])
            total = x.square().sum(0)
            rows = x.shape[0]
        elif self.kind == "conv":
            total, rows = self._conv_input(x if x.ndim == 4 else x.unsqueeze(0))
        else:
            b, u, c = self._norm_split(x)
            u = u.sum(0) / float(u.shape[0] // b) ** 2
            return torch.stack([u.square().sum(), u.new_tensor(float(c))]) / b**2, 1.0
        if self.has_bias:
            total = torch.cat([total, total.new_tensor([float(rows)])])
        return total, float(rows)

    def output_stats(self, d: Tensor) -> tuple[Tensor, float]:
        """(Σ over rows of δ², number of rows); for norm layers (Ŝ before MinMax, 1)."""
        d = d.detach().to(_stat_dtype(d))
        if self.kind == "linear":
            d = d.reshape(-1, d.shape[-1])
            return d.square().sum(0), float(d.shape[0])
        if self.kind == "conv":
            d = d if d.ndim == 4 else d.unsqueeze(0)
            return d.square().sum((0, 2, 3)), float(d.shape[0] * d.shape[2] * d.shape[3])
        b, u, _ = self._norm_split(d)
        return u.sum(0).square() / b, 1.0

    def _conv_input(self, x: Tensor) -> tuple[Tensor, int]:
        m = self.module
        if isinstance(m.padding, str) or m.padding_mode != "zeros":
            mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
            x = NF.pad(x, m._reversed_padding_repeated_twice, mode=mode)
        else:
            ph, pw = m.padding
            x = NF.pad(x, (pw, pw, ph, ph))
        x2 = x.square()
        (kh, kw), (sh, sw), (dh, dw), g = m.kernel_size, m.stride, m.dilation, m.groups
        oh = (x2.shape[2] - dh * (kh - 1) - 1) // sh + 1
        ow = (x2.shape[3] - dw * (kw - 1) - 1) // sw + 1
        cols = []
        for i in range(kh):  # mean of the squared im2col patches, one kernel offset at a time (no unfold copy)
            for j in range(kw):
                patch = x2[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                cols.append(patch.sum((0, 2, 3)).view(g, -1).sum(0))
        return torch.stack(cols, 1).reshape(-1), x2.shape[0] * oh * ow * g

    def _norm_split(self, x: Tensor) -> tuple[int, Tensor, int]:
        """(batch size B, x as (B·|T|, C), C) for BatchNorm2d (C = channels) and LayerNorm (C = normalized size)."""
        if isinstance(self.module, nn.BatchNorm2d):
            x = x if x.ndim == 4 else x.unsqueeze(0)
            c = x.shape[1]
            return x.shape[0], x.movedim(1, -1).reshape(-1, c), c
        k = len(self.module.normalized_shape)
        c = math.prod(self.module.normalized_shape)
        b = x.shape[0] if x.ndim > k else 1
        return b, x.reshape(-1, c), c

    # -------------------------------------------------------------------------------------------- F̃
    def fisher(self, role: str, p: Tensor, damping: float) -> Tensor | None:
        H, S = self.H, self.S
        if H is None or S is None:
            return None
        if self.kind == "norm":
            return (S * H[0 if role == "weight" else 1]).add_(damping).view(p.shape)
        if role == "weight":
            return torch.outer(S, H[: self.fan_in]).add_(damping).view(p.shape)
        return (S * H[self.fan_in]).add_(damping)

    def remove_hooks(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class AdaFisher(ElementwiseOptimizer):
    """AdaFisher; pass ``model=`` (or the model itself as ``params``) to precondition its supported layers.

    ``beta`` momentum, ``damping`` λ added to the Fisher, ``gamma``/``factor_ema`` the factor EMA (released
    constants by default), ``t_cov`` how often the statistics are collected, ``weight_decay`` coupled L2
    (``AdaFisherW``: decoupled).
    """

    default_decay_mode = "coupled"
    needs_model = True

    def __init__(self, params: Any, lr: float = 1e-3, beta: float = 0.9, damping: float = 1e-3, gamma: float = 0.8,
                 t_cov: int = 100, weight_decay: float = 0.0, factor_ema: str = "released",
                 model: nn.Module | None = None, **options: Any) -> None:
        if isinstance(params, nn.Module):
            model = params if model is None else model
            params = [p for p in params.parameters() if p.requires_grad]
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (the network owning the parameters), "
                            f"got {type(model).__name__}")
        self._init_fisher_attrs()
        super().__init__(params, dict(lr=lr, beta=beta, damping=damping, gamma=gamma, t_cov=t_cov,
                                      weight_decay=weight_decay, factor_ema=factor_ema), **options)
        self._model = model
        if model is not None:
            self._attach()
        self._warn_if_unpreconditioned()

    def _warn_if_unpreconditioned(self) -> None:
        name = type(self).__name__
        same = "every parameter gets F̃ = 1: the update is plain bias-corrected momentum SGD"
        if self._model is None:
            message = (f"{name} was given parameters but no model, so it cannot hook the layers its Fisher is built "
                       f"from; {same}. Pass model= (optfit.create_optimizer(model, ...) does), or the model itself")
        elif not self._layers:
            kinds = ", ".join(t.__name__ for t in SUPPORTED_MODULES)
            message = (f"{name} hooks no layer of the given model (it preconditions {kinds} layers that own its "
                       f"parameters, untied); {same}")
        else:
            return
        warnings.warn(message, AdaFisherWithoutModelWarning, stacklevel=3)

    def _init_fisher_attrs(self) -> None:
        self._layers: list[_Layer] = []
        self._roles: dict[int, tuple[_Layer, str]] = {}
        self._model: nn.Module | None = None
        self._fisher_now: dict[int, Tensor] = {}
        self.fisher_steps = 0  # completed (not skipped) steps: the clock of t_cov

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.beta("beta", group["beta"])
        V.positive("damping", group["damping"])
        V.beta("gamma", group["gamma"])
        V.integer("t_cov", group["t_cov"], 1)
        V.nonneg("weight_decay", group["weight_decay"])
        V.choice("factor_ema", group["factor_ema"], FACTOR_EMAS)

    # ------------------------------------------------------------------------------------------- hooks
    def _attach(self) -> None:
        """Hook every supported module of the model that owns (by identity) a parameter of this optimizer."""
        flat = [p for g in self.param_groups for p in g["params"]]
        index = {id(p): i for i, p in enumerate(flat)}
        group_of = {id(p): gi for gi, g in enumerate(self.param_groups) for p in g["params"]}
        hooked = {id(layer.module) for layer in self._layers}
        found, owners = [], {}
        for name, module in self._model.named_modules():
            if not isinstance(module, SUPPORTED_MODULES) or id(module) in hooked:
                continue
            roles = {r: getattr(module, r, None) for r in ("weight", "bias")}
            roles = {r: p for r, p in roles.items() if isinstance(p, Tensor) and id(p) in index}
            if roles:
                found.append((name, module, roles))
                for p in roles.values():
                    owners[id(p)] = owners.get(id(p), 0) + 1
        ref = _WeakOwner(self)
        for name, module, roles in found:
            ps = list(roles.values())
            if any(owners[id(p)] > 1 or id(p) in self._roles for p in ps):
                warnings.warn(f"AdaFisher: {name!r} shares a parameter with another supported module; "
                              "its parameters are treated as unsupported (F̃ = 1)", stacklevel=3)
                continue
            if any(not p.is_floating_point() for p in ps):
                continue  # complex layers: plain momentum
            key = min(index[id(p)] for p in ps)
            layer = _Layer(name or type(module).__name__, module, roles, key, group_of[id(flat[key])])
            layer.handles.append(module.register_forward_hook(_ForwardHook(ref, layer), with_kwargs=True))
            self._layers.append(layer)
            for role, p in roles.items():
                self._roles[id(p)] = (layer, role)

    def remove_hooks(self) -> None:
        """Detach every hook from the model; H and S stay frozen at their current values."""
        for layer in self._layers:
            layer.remove_hooks()
            layer.pending = {}
        self._model = None

    def __del__(self) -> None:
        for layer in self.__dict__.get("_layers", ()):
            layer.remove_hooks()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if self.__dict__.get("_model") is not None:
            self._attach()

    def _collecting(self, layer: _Layer) -> bool:
        return self.fisher_steps % self.param_groups[layer.group_index]["t_cov"] == 0

    # --------------------------------------------------------------------------------------- inspection
    @property
    def supported_modules(self) -> list[str]:
        """Names of the hooked modules (the ones preconditioned by F̃)."""
        return [layer.name for layer in self._layers]

    def factors(self, module: nn.Module) -> tuple[Tensor | None, Tensor | None]:
        """``(H, S)`` of a hooked module (``None`` before its first collection)."""
        for layer in self._layers:
            if layer.module is module:
                return layer.H, layer.S
        raise KeyError(f"{type(module).__name__} is not a module hooked by this optimizer")

    def fisher_diagonal(self, p: Tensor) -> Tensor | None:
        """The current ``F̃`` of parameter ``p`` (``None`` = 1: unsupported, or no statistics yet)."""
        entry = self._roles.get(id(p))
        if entry is None:
            return None
        group = next(g for g in self.param_groups if any(q is p for q in g["params"]))
        return entry[0].fisher(entry[1], p, group["damping"])

    # ---------------------------------------------------------------------------------------- stepping
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        skipped = self.skipped_steps
        try:
            loss = super().step(closure)
        finally:
            for layer in self._layers:
                layer.pending = {}
        if self.skipped_steps == skipped:
            self.fisher_steps += 1
        return loss

    def _finite_or_policy(self, work: list) -> bool:
        """The gradient check, then the same policy for this step's statistics; then fold them into H, S."""
        if not super()._finite_or_policy(work):
            return False
        pend = [(layer, k, v[0]) for layer in self._layers for k, v in layer.pending.items()]
        policies = [self.param_groups[layer.group_index]["nonfinite"] for layer, _, _ in pend]
        checked = [i for i, pol in enumerate(policies) if pol != "ignore"]
        if checked:
            ok = torch.stack([torch.isfinite(pend[i][2]).all() for i in checked]).tolist()
            bad = [i for i, fine in zip(checked, ok) if not fine]
            if any(policies[i] == "raise" for i in bad):
                layer = pend[next(i for i in bad if policies[i] == "raise")][0]
                raise FloatingPointError(f"non-finite curvature statistics in module {layer.name!r}; no parameter or "
                                         "state was modified (pass nonfinite='skip' to skip such steps)")
            if bad:
                self.skipped_steps += 1
                return False
        for layer, which, _ in pend:
            total, rows = layer.pending[which]
            group = self.param_groups[layer.group_index]
            gamma = group["gamma"]
            keep, new = (0.1 * gamma, 0.01 * gamma) if group["factor_ema"] == "released" else (gamma, 1.0 - gamma)
            fresh = _minmax(total / rows)
            old = getattr(layer, which)
            old = torch.ones_like(fresh) if old is None else old.to(fresh.dtype)
            setattr(layer, which, old * keep + fresh * new)
        return True

    def _step_group(self, group: dict[str, Any], items: list, loss: Any) -> None:
        fishers = {}
        for _, p, _ in items:
            entry = self._roles.get(id(p))
            f = entry[0].fisher(entry[1], p, group["damping"]) if entry is not None else None
            if f is not None:
                fishers[id(self.state[p])] = f
        self._fisher_now = fishers
        try:
            super()._step_group(group, items, loss)
        finally:
            self._fisher_now = {}

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        fis = [self._fisher_now.get(id(st)) for st in sts]
        if all(f is None for f in fis):
            return super()._run_kernel(group, ps, gs, sts, keys, c)
        cautious = group["cautious"]
        if self._impl(group, ps) == "reference":  # the ground-truth loop
            for p, g, st, f in zip(ps, gs, sts, fis):
                s = type(self)._update(p, g, st, c, ())
                if f is not None:
                    s = s / f.to(s.dtype)
                if cautious:
                    s = F.cautious(s, g)
                p.mul_(c["decay"])
                p.sub_(s)
            return None
        steps = self._directions(group, ps, gs, sts, keys, c)
        idx = [i for i, f in enumerate(fis) if f is not None]
        torch._foreach_div_([steps[i] for i in idx], [fis[i].to(steps[i].dtype) for i in idx])
        if cautious:
            steps = [F.cautious(s, g) for s, g in zip(steps, gs)]
        if c["decay"] != 1.0:
            torch._foreach_mul_(ps, c["decay"])
        torch._foreach_sub_(ps, steps)
        return None

    # ------------------------------------------------------------------------------------------ kernel
    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg",)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b = group["beta"]
        return {"lr": group["lr"], "b": b, "step_size": group["lr"] / (1 - b**step)}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m = st["exp_avg"]
        m.mul_(c["b"]).add_(g * (1 - c["b"]))
        return c["step_size"] * m

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m = st["exp_avg"]
        torch._foreach_mul_(m, c["b"])
        torch._foreach_add_(m, torch._foreach_mul(gs, 1 - c["b"]))
        return torch._foreach_mul(m, c["step_size"])

    # ------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """torch's state plus ``["optfit"]["adafisher"]``: the t_cov clock and H, S keyed by the flat index of
        each layer's first parameter in this optimizer."""
        sd = super().state_dict()
        factors = {layer.key: {k: getattr(layer, k) for k in ("H", "S") if getattr(layer, k) is not None}
                   for layer in self._layers}
        sd["optfit"]["adafisher"] = {"steps": self.fisher_steps, "factors": {k: v for k, v in factors.items() if v}}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        extra = state_dict.get("optfit", {}).get("adafisher", {}) if isinstance(state_dict, dict) else {}
        by_key = {layer.key: layer for layer in self._layers}
        factors = extra.get("factors", {})
        for key, fac in factors.items():
            layer = by_key.get(int(key))
            if layer is None:
                raise ValueError(f"load_state_dict: the state has curvature factors for parameter {key}, which no "
                                 "module hooked by this optimizer owns (build it with model=)")
            for which, t in fac.items():
                want = layer.sizes[0 if which == "H" else 1]
                if not isinstance(t, Tensor) or tuple(t.shape) != (want,):
                    raise ValueError(f"load_state_dict: factor {which} of {layer.name!r} should have shape ({want},), "
                                     f"got {tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__}")
        super().load_state_dict(state_dict)
        self.fisher_steps = int(extra.get("steps", 0))
        for layer in self._layers:
            fac = factors.get(layer.key, {})
            ref = next(iter(layer.roles.values()))
            for which in ("H", "S"):
                t = fac.get(which)
                setattr(layer, which, None if t is None else
                        t.to(device=ref.device, dtype=_stat_dtype(ref), copy=True))

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled or deep-copied (with the model, whose hooks then feed this copy): the parameter → layer map is
        keyed by identity, so it is rebuilt from the layers."""
        super().__setstate__(state)
        if "_layers" not in self.__dict__:
            self._init_fisher_attrs()
        self._roles = {id(p): (layer, role) for layer in self._layers for role, p in layer.roles.items()}
        self._fisher_now = {}


class AdaFisherW(AdaFisher):
    """AdaFisher with decoupled weight decay ``θ ← θ(1 − η λ_wd)`` (the released AdaFisherW)."""

    default_decay_mode = "decoupled"


def _nobody() -> None:
    return None


class _WeakOwner:
    """A weak reference to the optimizer that survives pickling and ``copy.deepcopy`` (a plain ``weakref.ref``
    does not): copied with the optimizer, it points at the copy; copied without it, at a copy nobody holds, so the
    copied hooks do nothing."""

    def __init__(self, owner: Any) -> None:
        self._ref = weakref.ref(owner)

    def __call__(self) -> Any:
        return self._ref()

    def __getstate__(self) -> dict[str, Any]:
        return {"owner": self._ref()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        owner = state["owner"]
        self._ref = weakref.ref(owner) if owner is not None else _nobody


class _ForwardHook:
    """The forward hook of one layer (a class, not a closure, so that a hooked model pickles and deep-copies)."""

    def __init__(self, ref: _WeakOwner, layer: _Layer) -> None:
        self.ref, self.layer = ref, layer

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        opt, layer = self.ref(), self.layer
        if opt is None or not torch.is_grad_enabled() or not opt._collecting(layer):
            return
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, Tensor):
            return
        layer.add("H", *layer.input_stats(x))
        if isinstance(output, Tensor) and output.requires_grad:
            output.register_hook(_grad_hook(self.ref, layer))


def _grad_hook(ref: _WeakOwner, layer: _Layer):
    def hook(grad: Tensor) -> None:
        opt = ref()
        if opt is not None and layer.handles:
            layer.add("S", *layer.output_stats(grad))

    return hook


_DOC = ("momentum divided by a diagonal K-FAC Fisher kron(H, S) + λ from hooks on Linear/Conv2d/BatchNorm2d/"
        "LayerNorm (pass the model; O(in+out) per layer); other params: momentum SGD")
# has_momentum=False: the momentum is "beta" (the released name), not a betas/momentum key cycle_momentum can set
_COMMON = dict(family="curvature", paper="arXiv:2405.16397", state_tensors=1, has_momentum=False,
               test_hparams={"lr": 0.1, "damping": 1.0, "t_cov": 5})
register(OptimizerInfo(name="adafisher", cls=AdaFisher, description=f"AdaFisher: {_DOC}; coupled L2 decay.",
                       **_COMMON))
register(OptimizerInfo(name="adafisherw", cls=AdaFisherW,
                       description=f"AdaFisherW: {_DOC}; decoupled decay θ ← θ(1 − ηλ).", **_COMMON))
