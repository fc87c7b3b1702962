"""What the matrix optimizers (Muon, AdaMuon, ROOT) share: two kinds of param group, batching by shape,
and an internal AdamW, so that one ``torch.optim.Optimizer`` with one ``state_dict`` trains a whole model.

Every param group has a ``kind``:

* ``"matrix"``: ≥2-D tensors. A tensor of shape (out, *rest) is the matrix (out, prod(rest)), so a conv
  kernel (out, in, kh, kw) is (out, in·kh·kw). Each step the subclass's ``_kernel`` maps the gradients
  of a stack of same-shape matrices to directions D (updating the state in place), and

      θ ← θ·δ − η·D          δ = 1 − ηλ (``decay_mode="decoupled"``, the default) or 1 − λη/η₀ ("independent");
                              ``"coupled"`` adds λθ to the gradient instead.

* ``"adamw"``: everything else (embeddings, output heads, biases, norm gains, scalars): AdamW in
  torch.optim's convention, ``θ ← θ·δ − η/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + ε)``, with its own ``lr``, ``betas``,
  ``eps``, ``weight_decay`` (defaults: the constructor's ``adamw_*``; ``adamw_lr=None`` /
  ``adamw_weight_decay=None`` mean "the same as ``lr`` / ``weight_decay``").

A group given without ``kind`` (e.g. a plain list of tensors) is split by dimension: ≥2-D tensors → matrix,
the rest → adamw. Keys set in such a group apply to both halves (``{"params": ..., "lr": 0.0}`` freezes
both); ``adamw_lr``/``adamw_betas``/``adamw_eps``/``adamw_weight_decay`` set in it apply to the AdamW half
only and win there. ``optfit.create_optimizer(model, name)`` routes a model with
``optfit.params.split_params`` instead (embeddings and the output head go to AdamW too).

``impl``: ``"foreach"`` stacks the same-shape matrices of a group and runs one batched kernel per shape (one
batched Newton–Schulz: the DASH idea; a stack holds at most ``MAX_STACK_NUMEL`` elements, which bounds the
extra memory); ``"reference"`` is a plain loop over parameters, the same kernel on a stack of one.
``"auto"`` picks the loop on a single CPU thread, where one matrix at a time stays in cache and the stack
copies are pure cost (the stacks measured 5–25 % slower there), and the stacks otherwise (1.3–4× faster
with 2 CPU threads; on accelerators they save kernel launches, not measured here). See
``benchmarks/matrix_step.py``. Options: ``nonfinite``, ``impl``, ``state_dtype``,
``decay_mode``, ``maximize`` as in ``ElementwiseOptimizer``; complex parameters are rejected.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor

from . import _features as F
from . import _validation as V
from ._base import LR0, ElementwiseOptimizer
from ._moments import adam_moments, adam_moments_foreach, adam_step, adam_step_foreach

KINDS = ("matrix", "adamw")
ADJUST_LR_FNS = ("original", "match_rms_adamw")
_ADAMW_KEYS = ("lr", "betas", "eps", "weight_decay")
_SHARED = ("nonfinite", "impl", "state_dtype", "decay_mode", "cautious", "grad_filter", "maximize", LR0)
MAX_STACK_NUMEL = 1 << 26  # a stack holds at most this many elements (256 MB in fp32) to bound peak memory


def matrix_shape(t: Tensor) -> tuple[int, int]:
    """The 2-D shape a ≥2-D tensor is treated as: (size(0), numel/size(0))."""
    return t.shape[0], math.prod(t.shape[1:])


def shape_scale(rule: str, rows: int, cols: int) -> float:
    """Muon's shape factor: ``"original"`` √max(1, rows/cols) (Keller Jordan: the step is η in spectral norm);
    ``"match_rms_adamw"`` 0.2·√max(rows, cols) (Moonlight, arXiv 2502.16982: update RMS ≈ 0.2, AdamW's)."""
    if rule == "original":
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"Invalid adjust_lr_fn: {rule!r} (choose one of {', '.join(map(repr, ADJUST_LR_FNS))})")


class MatrixOptimizer(ElementwiseOptimizer):
    """Base class: a subclass sets ``matrix_state`` (its per-parameter state names), ``_validate`` (its
    hyperparameters) and ``_kernel``; routing, batching, decay and the AdamW part are here."""

    OPTIONS: ClassVar[tuple[str, ...]] = ("nonfinite", "impl", "state_dtype", "decay_mode", "maximize")
    IMPLS: ClassVar[tuple[str, ...]] = ("auto", "reference", "foreach")
    supports_complex: ClassVar[bool] = False
    routes_params: ClassVar[bool] = True  # create_optimizer(model, ...) splits the model with split_params
    matrix_state: ClassVar[tuple[str, ...]] = ("momentum_buffer",)

    def __init__(self, params: Any, defaults: dict[str, Any], *, adamw_lr: float | None,
                 adamw_betas: tuple[float, float], adamw_eps: float, adamw_weight_decay: float | None,
                 **options: Any) -> None:
        defaults = {**defaults, "adamw_lr": adamw_lr, "adamw_betas": adamw_betas, "adamw_eps": adamw_eps,
                    "adamw_weight_decay": adamw_weight_decay}
        super().__init__(params, defaults, **options)

    # ---------------------------------------------------------------------------------- kernel (subclass)
    @staticmethod
    def _kernel(G: Tensor, S: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
        """``G`` is a (B, rows, cols) stack of gradients and ``S[k]`` the stack of state ``k`` (a state of the
        parameter's shape is seen as (rows, cols) too); update ``S`` in place, return the directions D."""
        raise NotImplementedError

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """AdamW groups: the base's state; matrix groups: ``_init_matrix_state``."""
        if group["kind"] == "adamw":
            super()._init_state(group, p, state)
        else:
            self._init_matrix_state(group, p, state)

    def _init_matrix_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """Create the ``matrix_state`` tensors of ``p`` (the working view): zeros of its shape by default;
        any other shape works too (e.g. (rows, rows) preconditioners), same-shape parameters stack alike."""
        for key in self.matrix_state:
            state[key] = torch.zeros_like(p, memory_format=torch.contiguous_format)

    # ------------------------------------------------------------------------------------------ validation
    @staticmethod
    def _check_adamw(group: dict[str, Any], prefix: str) -> None:
        for key in ("lr", "weight_decay"):
            if group[prefix + key] is not None or not prefix:
                V.nonneg(prefix + key, group[prefix + key])
        V.betas(group[prefix + "betas"], name=prefix + "betas")
        V.nonneg(prefix + "eps", group[prefix + "eps"])

    def _check_group(self, group: dict[str, Any]) -> None:
        kind = group.get("kind")
        if kind in (None, "matrix"):
            self._validate(group)
        if kind is None:  # the constructor's defaults
            self._check_adamw(group, "adamw_")
        elif kind == "adamw":
            self._check_adamw(group, "")
        V.choice("nonfinite", group["nonfinite"], F.NONFINITE_POLICIES)
        V.choice("impl", group["impl"], self._offered_impls())
        V.choice("state_dtype", group["state_dtype"], (None, "float32"))
        V.choice("decay_mode", group["decay_mode"], F.DECAY_MODES)
        self._check_maximize(group)

    # ------------------------------------------------------------------------------------------ routing
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        group = dict(param_group)
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        kind = group.pop("kind", None)
        if kind is None:
            halves = [("matrix", [p for p in params if p.ndim >= 2]), ("adamw", [p for p in params if p.ndim < 2])]
            halves = [(k, ps) for k, ps in halves if ps] or [("matrix", [])]
            for k, ps in halves:
                keys = group if k == "adamw" else {n: v for n, v in group.items() if not n.startswith("adamw_")}
                self.add_param_group({**keys, "params": ps, "kind": k})
            return
        V.choice("kind", kind, KINDS)
        overrides = {k: group.pop("adamw_" + k) for k in _ADAMW_KEYS if "adamw_" + k in group}
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if kind == "matrix":
            if overrides:
                raise ValueError(f"Invalid {', '.join('adamw_' + k for k in overrides)} in a kind='matrix' group "
                                 "(the adamw_* keys configure the AdamW part; use lr, weight_decay, ...)")
            for p in params:
                if isinstance(p, Tensor) and p.ndim < 2:
                    raise ValueError(f"Invalid kind: 'matrix' for a tensor of shape {tuple(p.shape)} ("
                                     f"{type(self).__name__} orthogonalises ≥2-D tensors only; put it in a "
                                     "kind='adamw' group)")
        else:
            for key, value in overrides.items():
                if key == "betas":
                    V.betas(value, name="adamw_betas")
                else:
                    V.nonneg("adamw_" + key, value)
            group.update(overrides)
            for key in _ADAMW_KEYS:
                if key not in group:
                    value = self.defaults["adamw_" + key]
                    group[key] = self.defaults[key] if value is None else value
        super().add_param_group({**group, "params": params, "kind": kind})
        added = self.param_groups[-1]  # keep only the keys that drive this kind of group (and the user's own)
        if kind == "adamw":
            drop = [k for k in added if k in self.defaults and k not in _ADAMW_KEYS and k not in _SHARED]
        else:
            drop = [k for k in added if k.startswith("adamw_") and k in self.defaults]
        for key in drop:
            del added[key]

    # ---------------------------------------------------------------------------------- AdamW part (base)
    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        b1, b2 = group["betas"]
        return {"lr": group["lr"], "b1": b1, "b2": b2, "eps": group["eps"],
                "step_size": group["lr"] / (1 - b1**step), "bc2_sqrt": math.sqrt(1 - b2**step)}

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        m, v = adam_moments(g, st, c)
        return adam_step(m, v, c)

    @staticmethod
    def _update_foreach(ps, gs, st, c, flags):
        m, v = adam_moments_foreach(gs, st, c)
        return adam_step_foreach(m, v, c)

    # ------------------------------------------------------------------------------------------ matrix part
    def _step_group(self, group: dict[str, Any], items: list, loss: Any) -> None:
        if group["kind"] == "adamw":
            super()._step_group(group, items, loss)
            return
        targets, params, grads, states = self._working_set(group, items)
        for st in states:
            for key in self.matrix_state:  # the kernels take views of the state
                if not st[key].is_contiguous():
                    st[key] = st[key].contiguous()
        lr, wd = group["lr"], group["weight_decay"]
        if group["decay_mode"] == "coupled" and wd:
            grads = torch._foreach_add(grads, params, alpha=wd)
        torch._foreach_add_([st["step"] for st in states], 1.0)
        directions = self._directions_by_shape(group, grads, states)
        decay = F.decay_multiplier(group["decay_mode"], lr, wd, group[LR0])
        for p, d in zip(params, directions):
            if decay != 1.0:
                p.mul_(decay)
            p.add_(d, alpha=-lr)
        self._write_back([(t, wp) for t, wp in zip(targets, params) if wp is not t])

    def _directions_by_shape(self, group: dict[str, Any], grads: list[Tensor], states: list[dict]) -> list[Tensor]:
        """D for every parameter: one kernel call per parameter ("reference") or per shape ("foreach")."""
        keys, kernel = self.matrix_state, type(self)._kernel
        out: list[Tensor] = [torch.zeros_like(g) if not g.numel() else None for g in grads]  # type: ignore[misc]
        todo = [i for i, g in enumerate(grads) if g.numel()]  # empty tensors: nothing to orthogonalise
        if self._matrix_impl(group, grads) == "reference":
            for i in todo:
                g, shape = grads[i], matrix_shape(grads[i])
                S = {k: _as_matrix(states[i][k], g, shape).unsqueeze(0) for k in keys}
                out[i] = kernel(g.reshape(1, *shape), S, group).view(g.shape)
            return out
        buckets: dict[tuple, list[int]] = {}
        for i in todo:
            buckets.setdefault((matrix_shape(grads[i]), grads[i].dtype, grads[i].device), []).append(i)
        for (shape, _, _), bucket in buckets.items():
            per_stack = max(1, MAX_STACK_NUMEL // math.prod(shape))
            for start in range(0, len(bucket), per_stack):
                idx = bucket[start:start + per_stack]
                G = torch.stack([grads[i].reshape(shape) for i in idx])
                views = {k: [_as_matrix(states[i][k], grads[i], shape) for i in idx] for k in keys}
                S = {k: torch.stack(ts) for k, ts in views.items()}
                D = kernel(G, S, group)
                for k in keys:
                    torch._foreach_copy_(views[k], list(S[k].unbind(0)))
                for j, i in enumerate(idx):
                    out[i] = D[j].view(grads[i].shape)
        return out


    @staticmethod
    def _matrix_impl(group: dict[str, Any], grads: list[Tensor]) -> str:
        """``"auto"``: the loop on a single CPU thread (one matrix at a time stays in cache; measured 5–25 %
        faster there), else the stacks (fewer calls and parallel regions: 1.3–4× faster with 2 threads)."""
        impl = group["impl"]
        if impl == "auto":
            one_cpu_thread = torch.get_num_threads() == 1 and all(g.device.type == "cpu" for g in grads)
            impl = "reference" if one_cpu_thread else "foreach"
        return impl


def _as_matrix(state: Tensor, grad: Tensor, shape: tuple[int, int]) -> Tensor:
    """A state of the parameter's shape, viewed as its (rows, cols) matrix; other states as they are."""
    return state.view(shape) if state.shape == grad.shape else state
