"""``step_in_backward``: run an elementwise optimizer's step inside ``loss.backward()``, one tensor at a time.

    handle = optfit.step_in_backward(model, optimizer)
    for x, y in data:
        loss_fn(model(x), y).backward()    # each parameter is stepped, and its gradient freed, as it arrives
        scheduler.step()                   # LR schedulers keep working (they edit param_groups)
    handle.remove()                        # back to loss.backward(); optimizer.step(); optimizer.zero_grad()

**What happens.** For every trainable parameter of ``model_or_params`` that the optimizer holds, a hook is
registered with ``Tensor.register_post_accumulate_grad_hook``. When autograd has finished accumulating that
parameter's gradient, the hook performs the optimizer's update for that one tensor: the parameter's own param
group (read at that moment, so a scheduler's ``lr`` is seen), its own state and its own ``step`` count, through
the optimizer's own per-group machinery (``_step_group`` with one item), and then sets ``p.grad = None``.
The whole model's gradients therefore never exist at once, nor do the step's multi-tensor temporaries: peak
memory drops by up to one gradient set (more with ``impl="foreach"``) where the peak is the step after backward,
and by nothing where it is the end of the forward pass (activations much larger than the parameters).
``benchmarks/step_in_backward.py``, 8.2 M-parameter transformer stack, AdamW, CPU, peak RSS of the later steps:
152.0 → 120.5 MiB at batch 1 × 32 (−31.5 MiB, one gradient set), 157.6 → 155.6 at 4 × 64, 462.4 → 460.1 at
16 × 128; with ``impl="foreach"`` 211.6 → 124.1 MiB at 1 × 32.

**Equal to the normal step, bit for bit.** An elementwise optimizer's update of one tensor reads only that
tensor, its gradient, its state and its group's scalars, and ``ElementwiseOptimizer.step()`` already steps
only the parameters whose ``.grad`` is set, bucketed by their own step count. So stepping tensor by tensor
gives the parameters and state (and ``state_dict()``) that ``optimizer.step()`` gives.
``tests/optim/test_in_backward.py`` checks this for every registry name that qualifies. One detail
is handled here: ``impl="auto"``/``"fused"`` choose per param group between torch's fused kernel, the foreach
kernel and the reference loop, from the dtype, layout and devices of *all* the group's tensors. One tensor on its
own may qualify for a path its group does not (a float32 tensor in a group that also holds a bfloat16 one; one
device of a multi-device group). The hook then runs the path the whole group would take, on a copy of the
group dict with ``impl`` pinned (keys the step writes to the copy are written back). The fused kernels
themselves are elementwise per tensor, so one tensor through them equals the same tensor in a whole group's call
(tested for adam/adamw/sgd/adagrad). This relies on every parameter of the group getting a gradient; a group
whose mixed tensors get gradients only some of the time may take a different (equally correct, not
bit-identical) path.

**What is refused**, with the reason and the alternative (:func:`in_backward_unsupported` gives the reason
without raising). ``TypeError`` for optimizers that need all gradients before any parameter moves:

* optimizers that are not :class:`~optfit.optim._base.ElementwiseOptimizer` subclasses (torch.optim's, the
  wrappers Lookahead/SAM/ASAM/GSAM, FOSI, Universal MM): their ``step()`` is not a per-tensor update;
* matrix optimizers (Muon, AdaMuon, ROOT, Shampoo, SOAP, DASH): they stack same-shape matrices of a group into
  one batched kernel, which one tensor at a time would not reproduce;
* ``two_pass`` optimizers (Prodigy, D-Adaptation, DoG, Auto, AdAdaGrad-Norm, induced-metric, OASIS, Celo,
  the gap family, ...): their step needs a quantity summed over every parameter (distance estimates, γ, the gap
  scores of ``mode="global"``) before any parameter may move. The gap family is refused in
  ``mode="per_param"`` too: its first pass runs on flat buffers shared by a group's tensors, and a one-tensor
  layout per hook would copy the state back and forth;
* optimizers that need a closure (``needs_closure``: SANIA, GradAvg, ...) or Hessian-vector products through
  the gradients (``needs_create_graph``: AdaHessian, Sophia), and classes whose ``step()``/``_gather``/
  ``_finite_or_policy`` do work once per step beyond the per-tensor update (Schedule-Free's group clock,
  AdaFisher's layer statistics).

``ValueError`` naming the param group, for settings under which an otherwise per-tensor optimizer couples its
tensors or cannot keep the contract (checked at ``step_in_backward`` and again in each hook, since a group may
be edited later):

* ``nonfinite="skip"``: a skipped step must leave every parameter alone, but by the time a later gradient
  turns out non-finite the earlier ones of this backward pass have been applied; use "raise" or "ignore";
* ``impl="compiled"``: one compiled call per tensor recompiles per shape and need not round like the compiled
  whole-group call; use "auto";
* couplings inside ``_run_kernel`` that no generic check can see: AdamCM with ``priority_scope="group"`` (its
  default: the priority is Σ‖g‖ over the group's tensors; use "tensor") and small_fc_lopt with an ``impl``
  other than "reference" (its MLP runs on batches of several tensors' elements, whose rounding depends on the
  batch). A class may declare its own with a method ``_in_backward_problem(group) -> str | None``, which is
  consulted first (suggested for those two classes, so this module need not know them).

**Non-finite gradients** (``nonfinite="raise"``, the default): the hook checks its tensor's gradient before
touching anything and raises ``FloatingPointError`` naming the parameter out of ``loss.backward()``; that
parameter, its state and its ``.grad`` (left in place, for inspection) are unchanged, but parameters whose hooks ran
earlier in the same backward pass have already been stepped (the normal step would have moved none). Sparse
gradients and complex parameters of classes without complex support raise as ``step()`` does.

**Step hooks.** No ``optimizer.step()`` happens, so ``register_step_pre_hook``/``register_step_post_hook``
hooks (and torch's global optimizer hooks) are **not** called; ``step_in_backward`` warns when the optimizer has
any. Calling ``optimizer.step()`` / ``zero_grad()`` anyway is harmless (the stepped parameters have no
gradient, so ``step()`` leaves them alone and runs the hooks), which keeps an existing loop correct. The hook sets
``optimizer._opt_called`` as torch's LR-scheduler wrapper of ``step()`` does, so ``scheduler.step()`` does not
warn that it ran before ``optimizer.step()``.

**What cannot work in backward**: anything that needs all gradients before the step: global gradient-norm
clipping, ``GradScaler`` (unscale and the inf check), gradient accumulation over several backward passes
(each backward steps). Use ``handle.remove()`` and the normal loop for those. Parameters added to the optimizer
later (``add_param_group``) get no hook (they keep their gradients and need ``optimizer.step()``; a warning
says so); call ``remove()`` and ``step_in_backward`` again to include them. A parameter can be attached to one
handle at a time (a second ``step_in_backward`` on it raises ``RuntimeError``). The hooks touch the optimizer
from autograd's thread; don't call ``optimizer.step()`` concurrently with a backward pass.

**``handle.remove()``** removes the hooks; the optimizer then works as before, with the state the in-backward
steps left (a run of in-backward steps followed by normal steps equals a run of normal steps, bit for bit).
The handle is also a context manager (``with step_in_backward(model, opt): ...`` removes on exit).

One tensor's work item is ``_gather``'s own (``ElementwiseOptimizer._work_item``: the sparse/complex checks and the
``maximize`` negation). Left as it is: pinning the fused decision by copying the group with ``impl`` set, where a
``fused`` argument of ``_step_group`` would be more direct.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim import optimizer as _optim_module

from . import _features as F
from . import _fused
from ._base import ElementwiseOptimizer

__all__ = ["step_in_backward", "InBackwardStep", "in_backward_unsupported"]

# id(param) → weakref to the handle that steps it in backward (one at a time)
_ATTACHED: dict[int, weakref.ReferenceType] = {}
# methods whose override means the class's step does more than the per-tensor update
_STEP_METHODS = ("step", "_gather", "_finite_or_policy")


def in_backward_unsupported(optimizer: Optimizer) -> str | None:
    """Why ``optimizer``, with its current param-group settings, cannot step inside backward (one sentence), or
    ``None`` when it can."""
    reason = _class_problem(optimizer)
    if reason is not None:
        return reason
    return next((p for gi, g in enumerate(optimizer.param_groups) if (p := _group_problem(optimizer, g, gi))), None)


def _class_problem(optimizer: Optimizer) -> str | None:
    """Why no optimizer of this class (or two-pass mode) can step inside backward, or ``None``."""
    cls = type(optimizer)
    if not isinstance(optimizer, ElementwiseOptimizer):
        return (f"{cls.__name__} is not an optfit elementwise optimizer: its step() is not a per-tensor update "
                "(wrappers such as Lookahead/SAM and torch.optim's classes do their own work once per step)")
    from ._matrix import MatrixOptimizer
    if isinstance(optimizer, MatrixOptimizer):
        return (f"{cls.__name__} is a matrix optimizer: it stacks the same-shape matrices of a param group into one "
                "batched kernel, which stepping one tensor at a time would not reproduce")
    if cls.needs_closure:
        return f"{cls.__name__}.step() needs a closure that re-evaluates the loss"
    if cls.two_pass:
        modes = {group.get("mode") for group in optimizer.param_groups}
        if "global" in modes:
            what = "the gap scores summed over every parameter of the mode='global' groups"
        elif modes == {"per_param"}:
            what = ("every group's first pass (even in mode='per_param', where that pass runs on flat buffers "
                    "shared by a group's tensors)")
        else:
            what = "a quantity summed over every parameter of every group"
        return f"{cls.__name__} is a two-pass optimizer: its step needs {what} before any parameter may move"
    if getattr(cls, "needs_create_graph", False):
        return f"{cls.__name__} needs Hessian-vector products through every gradient (create_graph) in its step"
    for name in _STEP_METHODS:
        if _unwrapped(getattr(cls, name)) is not _unwrapped(getattr(ElementwiseOptimizer, name)):
            return (f"{cls.__name__} overrides {name}(): its step does work once per step beyond the per-tensor "
                    "update (e.g. a clock or statistics shared by all parameters)")
    return None


def _unwrapped(fn: Any) -> Any:
    """The function under decorators (``torch.no_grad``, torch's per-class step-hook wrapper of ``step``)."""
    while hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return fn


def _coupled_tensors(optimizer: Optimizer, group: dict[str, Any]) -> str | None:
    """Why this group's step couples its tensors inside ``_run_kernel`` (where the generic checks cannot see it),
    or ``None``. A class may say so itself with a method ``_in_backward_problem(group) -> str | None``; these
    are the known ones."""
    own = getattr(optimizer, "_in_backward_problem", None)
    if own is not None:
        return own(group)
    from ..learned.small_fc_lopt import SmallFCLOpt
    from .adam_cm import AdamCM
    if isinstance(optimizer, AdamCM) and group.get("priority_scope") == "group":
        return ("has priority_scope='group': its priority is Σ‖g‖ over the group's tensors stepping together; use "
                "priority_scope='tensor'")
    if isinstance(optimizer, SmallFCLOpt) and group.get("impl") != "reference":
        return (f"has impl={group.get('impl')!r}: the learned MLP runs on batches of several tensors' elements, whose "
                "rounding depends on the batch; use impl='reference'")
    return None


def _group_problem(optimizer: Optimizer, group: dict[str, Any], index: int) -> str | None:
    if group.get("nonfinite") == "skip":
        return (f"param group {index} has nonfinite='skip': a skipped step must leave every parameter alone, but in "
                "backward the parameters whose gradients arrived earlier have already been stepped; use "
                "nonfinite='raise' or 'ignore', or step normally")
    if group.get("impl") == "compiled":
        return (f"param group {index} has impl='compiled': one compiled call per tensor recompiles per shape and "
                "need not round like the whole-group call; use impl='auto' (or 'foreach'/'reference')")
    coupled = _coupled_tensors(optimizer, group)
    return None if coupled is None else f"param group {index} {coupled}"


def _params_of(model_or_params: Any) -> list[Tensor]:
    if isinstance(model_or_params, nn.Module):
        items: Iterable[Any] = model_or_params.parameters()
    elif isinstance(model_or_params, Tensor):
        items = [model_or_params]
    else:
        items = []
        for x in model_or_params:
            if isinstance(x, dict):
                ps = x["params"]
                items += [ps] if isinstance(ps, Tensor) else list(ps)
            else:
                items.append(x[1] if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) else x)
    out, seen = [], set()
    for p in items:
        if not isinstance(p, Tensor):
            raise TypeError(f"step_in_backward: expected an nn.Module or an iterable of parameters, got an item "
                            f"of type {type(p).__name__}")
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


class InBackwardStep:
    """The hooks of :func:`step_in_backward`; ``remove()`` (or leaving a ``with`` block) takes them away."""

    def __init__(self, optimizer: ElementwiseOptimizer, params: list[Tensor]) -> None:
        self.optimizer = optimizer
        self.params = tuple(params)
        self._where: dict[int, tuple[int, int]] = {}  # id(param) → (group index, flat index)
        self._layout: tuple = ()
        self._stepped: set[int] = set()  # params stepped since the last repeat: one backward pass
        self._paths: dict[tuple, tuple[bool, frozenset]] = {}  # per group, per pass: (all fusable, device types)
        self._locate_all()
        self._hooks = [p.register_post_accumulate_grad_hook(self._hook) for p in self.params]
        me = weakref.ref(self)
        for p in self.params:
            _ATTACHED[id(p)] = me

    # --------------------------------------------------------------------------------------- public
    @property
    def active(self) -> bool:
        return bool(self._hooks)

    def remove(self) -> None:
        """Remove the hooks: ``loss.backward()`` accumulates gradients again and ``optimizer.step()`` steps."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for p in self.params:
            ref = _ATTACHED.get(id(p))
            if ref is not None and ref() is self:
                del _ATTACHED[id(p)]

    def __enter__(self) -> "InBackwardStep":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"InBackwardStep({type(self.optimizer).__name__}, {len(self.params)} parameters, {state})"

    # -------------------------------------------------------------------------------------- the hook
    def _hook(self, p: Tensor) -> None:
        if p.grad is None:
            return
        opt = self.optimizer
        if id(p) in self._stepped:  # a new backward pass: the cached per-group facts may be stale
            self._stepped.clear()
            self._paths.clear()
        self._stepped.add(id(p))
        gi, index = self._locate(p)
        group = opt.param_groups[gi]
        problem = _group_problem(opt, group, gi)
        if problem is not None:
            raise ValueError(f"step_in_backward({type(opt).__name__}): {problem}")
        with torch.no_grad():
            item = self._item(group, index, p)
            self._check_finite(group, item)
            run = self._group_to_run(gi, group, item)
            opt._step_group(run, [item], None)
            if run is not group:
                for k, v in run.items():
                    if k != "impl" and group.get(k) is not v:
                        group[k] = v
        p.grad = None
        opt._opt_called = True  # what torch's LR-scheduler wrapper of step() records

    def _item(self, group: dict[str, Any], index: int, p: Tensor) -> tuple[int, Tensor, Tensor]:
        """The ``(flat index, param, working gradient)`` that ``_gather`` makes for ``p``."""
        return self.optimizer._work_item(group, index, p)

    def _check_finite(self, group: dict[str, Any], item: tuple[int, Tensor, Tensor]) -> None:
        if group["nonfinite"] == "ignore":
            return
        index, p, g = item
        grads = [torch.view_as_real(g) if g.is_complex() else g]
        if _fused.all_finite(grads) or F.first_nonfinite(grads) is None:
            return
        raise FloatingPointError(
            f"non-finite gradient in {self.optimizer._describe(index, p)} during backward (step_in_backward); this "
            "parameter, its state and its .grad were not modified, but parameters whose gradients arrived earlier "
            "in this backward pass were already stepped (pass nonfinite='ignore', or remove() the handle and step "
            "normally)")

    def _group_to_run(self, gi: int, group: dict[str, Any], item: tuple) -> dict[str, Any]:
        """``group``, or a copy with ``impl`` pinned to the path the whole group's step would take where this
        one tensor alone would be sent down another (module docstring)."""
        impl = group["impl"]
        if impl not in ("auto", "fused"):
            return group
        opt = self.optimizer
        kind = opt._fused_kind()
        alone = kind is not None and _fused.plan(kind, group, [item]) is not None
        key = (gi, id(group), id(group["params"]), len(group["params"]))
        facts = self._paths.get(key)
        if facts is None:
            ps = group["params"]
            fusable = all(q.dtype in _fused.FUSED_DTYPES and q.is_contiguous() for q in ps)
            facts = self._paths[key] = (fusable, frozenset(q.device for q in ps))
        fusable, devices = facts
        if alone:
            together = fusable and (len({d.type for d in devices}) == 1 or _fused.plan(
                kind, group, [(i, q, q) for i, q in enumerate(group["params"])]) is not None)
            if together:
                return group
        elif len(devices) == 1 or opt._update_foreach is None:
            return group  # alone and together: the same non-fused path
        pinned = "foreach" if opt._update_foreach is not None and len(devices) == 1 else "reference"
        return {**group, "impl": pinned}

    # ---------------------------------------------------------------------------------- where is p
    def _locate(self, p: Tensor) -> tuple[int, int]:
        layout = tuple((id(g), id(g["params"]), len(g["params"])) for g in self.optimizer.param_groups)
        if layout != self._layout:
            self._locate_all()
        where = self._where.get(id(p))
        if where is None:
            raise RuntimeError(f"step_in_backward: a parameter of shape {tuple(p.shape)} has a hook but is no longer "
                               f"in {type(self.optimizer).__name__}'s param groups; remove() the handle")
        return where

    def _locate_all(self) -> None:
        opt = self.optimizer
        self._layout = tuple((id(g), id(g["params"]), len(g["params"])) for g in opt.param_groups)
        where, flat = {}, 0
        for gi, group in enumerate(opt.param_groups):
            for q in group["params"]:
                where.setdefault(id(q), (gi, flat))
                flat += 1
        self._where = where
        self._paths.clear()
        mine = {id(q) for q in self.params}
        missing = [where[id(q)][1] for g in opt.param_groups for q in g["params"]
                   if q.requires_grad and id(q) not in mine]
        if missing:
            warnings.warn(f"step_in_backward: {len(missing)} parameter(s) of {type(opt).__name__} (flat indices "
                          f"{missing[:5]}{', ...' if len(missing) > 5 else ''}) are not stepped in backward; they "
                          "keep their gradients and need optimizer.step()", UserWarning, stacklevel=3)


def step_in_backward(model_or_params: nn.Module | Iterable[Any], optimizer: Optimizer) -> InBackwardStep:
    """Step ``optimizer`` inside ``loss.backward()``, per tensor, freeing each gradient at once (module docstring).

    ``model_or_params``: an ``nn.Module`` or an iterable of parameters (tensors, ``(name, tensor)`` pairs or
    param-group dicts); its trainable parameters must all belong to ``optimizer`` (``ValueError`` otherwise).
    Returns the handle; ``handle.remove()`` goes back to normal stepping. Raises ``TypeError`` for optimizers
    that need all gradients before the step (:func:`in_backward_unsupported`), ``ValueError`` for param
    groups with ``nonfinite="skip"`` or ``impl="compiled"``, ``RuntimeError`` for a parameter already attached.
    """
    reason = _class_problem(optimizer)
    if reason is not None:
        raise TypeError(f"step_in_backward: {reason}; call optimizer.step() after loss.backward() instead")
    for gi, group in enumerate(optimizer.param_groups):
        problem = _group_problem(optimizer, group, gi)
        if problem is not None:
            raise ValueError(f"step_in_backward({type(optimizer).__name__}): {problem}")
    params = _params_of(model_or_params)
    if not params:
        raise ValueError("step_in_backward: no trainable parameters given")
    held = {id(q) for g in optimizer.param_groups for q in g["params"]}
    foreign = [tuple(p.shape) for p in params if id(p) not in held]
    if foreign:
        raise ValueError(f"step_in_backward: {len(foreign)} trainable parameter(s) (shapes {foreign[:5]}) are not in "
                         f"{type(optimizer).__name__}'s param groups; pass the parameters that optimizer trains")
    for p in params:
        ref = _ATTACHED.get(id(p))
        if ref is not None and ref() is not None and ref().active:
            raise RuntimeError(f"step_in_backward: a parameter of shape {tuple(p.shape)} is already stepped in "
                               f"backward by {ref()!r}; remove() that handle first")
    if any(optimizer._optimizer_step_pre_hooks.values()) or any(optimizer._optimizer_step_post_hooks.values()) \
            or _optim_module._global_optimizer_pre_hooks or _optim_module._global_optimizer_post_hooks:
        warnings.warn(f"step_in_backward: {type(optimizer).__name__} has step pre/post hooks; the in-backward steps do "
                      "not call optimizer.step(), so those hooks will not run", UserWarning, stacklevel=2)
    return InBackwardStep(optimizer, params)
