"""The three-layer structure every elementwise optimizer shares.

1. **Lazy state** – ``_state_keys(group)`` names the per-parameter tensors; they are created at the first step
   (zeros in the state dtype) beside a float32 0-d ``step`` tensor, stored exactly as torch.optim stores it.
2. **Kernels** – a subclass writes the maths once, for one tensor, in ``_update(p, g, st, c, flags) -> s``
   where ``Δθ = −s`` (``s`` includes the lr) and ``c`` holds every per-step scalar. That function is the ground
   truth (``impl="reference"``). ``_update_foreach`` is the hand-written multi-tensor fast path
   (``impl="foreach"``); ``impl="compiled"`` runs the reference loop under ``torch.compile`` with the scalars
   passed as 0-d tensors, so inductor fuses it into one kernel per step without recompiling. A class whose
   maths torch ships as a fused kernel names it in ``fused_kind`` ("adam", "sgd", "adagrad"): ``impl="fused"``
   runs that kernel, and so does ``impl="auto"`` on CPU, for the groups whose options it expresses exactly
   (see :mod:`optfit.optim._fused`); the other groups take the path "auto" would take without it.
3. **A thin ``step()``** – closure, gathering, the non-finite policy, the Grokfast filter, coupled decay,
   caution, decoupled/independent decay, bf16 → fp32 working copies and complex → real views are all here,
   once, for every subclass.

Options accepted by every elementwise optimizer (keyword-only, stored per param group):

``cautious`` (bool), ``nonfinite`` ("raise" | "skip" | "ignore"), ``impl`` ("auto" | "reference" | "foreach" |
"compiled", and "fused" where the class has a ``fused_kind``), ``state_dtype`` (None = parameter dtype, or
"float32": fp32 state and fp32 maths for bf16/fp16 parameters, rounded once into the parameter),
``grad_filter`` (None | "ema" | "ma" | a dict from ``grokfast_ema``/``grokfast_ma``), ``decay_mode`` ("coupled" |
"decoupled" | "independent"), ``maximize`` (bool: gradient ascent as in torch.optim: the optimizer works with −g,
negated once in ``_gather`` before anything else sees it, so every statistic, filter, decay and Hessian-vector
product is that of −f; classes whose maths read the loss itself set ``maximize_unsupported`` to the reason and
refuse ``maximize=True``).

The torch.optim contract, kept here once:

* **``initial_lr`` belongs to LR schedulers** (torch sets it with ``setdefault`` when a scheduler is created); the
  base never presets it. The lr a group had when it was added is recorded under ``LR0`` (``"_lr0"``, saved in
  the state_dict) and is the η₀ of ``decay_mode="independent"``.
* **State dicts** say which optimizer wrote them (``sd["optfit"]["optimizer"]``, the class name); loading one
  written by another class raises ``ValueError``. A state dict without an ``"optfit"`` entry (torch.optim's) loads
  only where its param-group hyperparameters and per-parameter state keys are this class's (so torch's AdamW
  loads into ``AdamW``, not into ``Lion``); torch's ``decoupled_weight_decay`` becomes ``decay_mode``, options it
  lacks keep this optimizer's values, and torch's bookkeeping keys (``foreach``, ``fused``, …) are dropped. A
  per-parameter ``step`` saved as a Python number (older and foreign checkpoints) becomes the float32 0-d tensor
  torch uses; a state tensor that a changed hyperparameter newly needs (e.g. RMSprop's momentum buffer when
  ``momentum`` goes from 0 to 0.9 mid-run) starts at zero.
* **Pickling / ``copy.deepcopy``** keep every attribute (torch.optim keeps only ``defaults``, ``state`` and
  ``param_groups``, which loses generators, global scalars and flags); hooks are dropped, as torch does.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _features as F
from . import _fused
from . import _validation as V

IMPLS = ("auto", "reference", "foreach", "compiled")
STATE_DTYPES = (None, "float32")
_LOW_PRECISION = (torch.bfloat16, torch.float16)
_COMPILED: dict[tuple[type, str], Callable] = {}
_FUSED_KINDS: dict[type, str | None] = {}
# what a subclass must not override for the fused kernel of the class that declared ``fused_kind`` to be its maths
_FUSED_MATHS = ("_update", "_update_foreach", "_coefficients", "_flags", "_state_keys", "_working_set",
                "_step_group", "_run_kernel", "two_pass", "handles_weight_decay", "fused_kind")
# the shared options: every param group of every elementwise optimizer holds all of them
_OPTION_KEYS = ("cautious", "nonfinite", "impl", "state_dtype", "grad_filter", "decay_mode", "maximize")
LR0 = "_lr0"  # param-group key: the lr the group had when it was added (η₀ of decay_mode="independent")
# param-group keys torch.optim writes that optfit does not use (dropped when a torch state dict is loaded), and
# keys torch's LR schedulers add to param groups (they may sit in any checkpoint)
_TORCH_BOOKKEEPING = frozenset({"foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay",
                                "maximize", "params", "param_names"})
_SCHEDULER_KEYS = frozenset({"initial_lr", "max_lr", "min_lr", "max_momentum", "base_momentum", "swa_lr"})
_HOOK_ATTRS = ("_optimizer_step_pre_hooks", "_optimizer_step_post_hooks", "_optimizer_state_dict_pre_hooks",
               "_optimizer_state_dict_post_hooks", "_optimizer_load_state_dict_pre_hooks",
               "_optimizer_load_state_dict_post_hooks")


def as_number(x: Any) -> Any:
    """A 0-d tensor hyperparameter (torch allows ``lr`` as a tensor) as a Python number; others unchanged."""
    return x.item() if isinstance(x, Tensor) and x.numel() == 1 else x


def _negated(g: Tensor) -> Tensor:
    """−g for ``maximize``; a gradient that carries an autograd graph (``create_graph=True``) keeps one, so
    Hessian-vector products through it are those of −f."""
    if g.requires_grad:
        with torch.enable_grad():
            return torch.neg(g)
    return torch.neg(g)


def _split_names(params: Any) -> tuple[list[Any], dict[int, str]]:
    """Accept tensors, param-group dicts, or ``(name, tensor)`` pairs (as from ``model.named_parameters()``)."""
    if isinstance(params, Tensor):
        raise TypeError("params must be an iterable of tensors or dicts, not a single Tensor")
    items, names = list(params), {}

    def strip(seq: Iterable[Any]) -> list[Any]:
        out = []
        for x in seq:
            if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str):
                names[id(x[1])] = x[0]
                x = x[1]
            out.append(x)
        return out

    if items and isinstance(items[0], dict):
        items = [{**g, "params": strip([g["params"]] if isinstance(g["params"], Tensor) else g["params"])}
                 for g in items]
    else:
        items = strip(items)
    return items, names


class ElementwiseOptimizer(Optimizer):
    """Base class: subclasses define ``_validate``, ``_state_keys``, ``_coefficients``, ``_update`` and
    optionally ``_update_foreach``; everything else is shared."""

    default_decay_mode: ClassVar[str] = "decoupled"
    supports_complex: ClassVar[bool] = True
    handles_weight_decay: ClassVar[bool] = False  # the kernel applies weight decay itself (e.g. Adafactor)
    needs_closure: ClassVar[bool] = False
    two_pass: ClassVar[bool] = False  # see _second_pass
    maximize_unsupported: ClassVar[str | None] = None  # why maximize=True is refused (None: it is supported)
    OPTIONS: ClassVar[tuple[str, ...]] = _OPTION_KEYS  # the options a user may pass (subclasses may offer fewer)
    IMPLS: ClassVar[tuple[str, ...]] = IMPLS  # the impl values this class accepts (see _offered_impls)
    fused_kind: ClassVar[str | None] = None  # torch's fused kernel for this maths: "adam" | "sgd" | "adagrad"

    def __init__(self, params: Any, defaults: dict[str, Any], **options: Any) -> None:
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) {sorted(unknown)}; "
                            f"options shared by all optfit optimizers: {list(self.OPTIONS)}")
        defaults = dict(defaults)
        defaults.update(cautious=options.get("cautious", False), nonfinite=options.get("nonfinite", "raise"),
                        impl=options.get("impl", "auto"), state_dtype=options.get("state_dtype"),
                        grad_filter=F.check_filter(options.get("grad_filter")),
                        decay_mode=options.get("decay_mode", self.default_decay_mode),
                        maximize=options.get("maximize", False))
        self._check_group(defaults)
        params, names = _split_names(params)
        self._param_names: dict[int, str] = names
        self.skipped_steps = 0
        super().__init__(params, defaults)

    # ------------------------------------------------------------------------------------ validation
    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        """Subclass hook: raise ``ValueError`` naming the first invalid hyperparameter in ``group``."""
        V.nonneg("lr", group["lr"])

    @classmethod
    def _offered_impls(cls) -> tuple[str, ...]:
        """The values ``impl`` may take for this optimizer: ``IMPLS``, less "foreach" where the class has no
        ``_update_foreach`` and less "fused" where it has no ``_fused_kind()``."""
        return tuple(i for i in cls.IMPLS if (i != "foreach" or cls._update_foreach is not None)
                     and (i != "fused" or cls._fused_kind() is not None))

    @classmethod
    def _fused_kind(cls) -> str | None:
        """``fused_kind`` if this class's maths are those of the class that declared it (a subclass that
        overrides the kernel, its coefficients or the step loses it), else ``None``."""
        if cls not in _FUSED_KINDS:
            owner = next((k for k in cls.__mro__ if "fused_kind" in k.__dict__), None)
            same = owner is not None and all(getattr(cls, name, None) is getattr(owner, name, None)
                                             for name in _FUSED_MATHS)
            _FUSED_KINDS[cls] = cls.fused_kind if same else None
        return _FUSED_KINDS[cls]

    def _check_group(self, group: dict[str, Any]) -> None:
        self._validate(group)
        V.flag("cautious", group["cautious"])
        V.choice("nonfinite", group["nonfinite"], F.NONFINITE_POLICIES)
        V.choice("impl", group["impl"], self._offered_impls())
        V.choice("state_dtype", group["state_dtype"], STATE_DTYPES)
        V.choice("decay_mode", group["decay_mode"], F.DECAY_MODES)
        self._check_maximize(group)
        group["grad_filter"] = F.check_filter(group["grad_filter"])

    def _check_maximize(self, group: dict[str, Any]) -> None:
        V.flag("maximize", group["maximize"])
        if group["maximize"] and self.maximize_unsupported:
            raise ValueError(f"Invalid maximize: True ({type(self).__name__} {self.maximize_unsupported})")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        group.setdefault(LR0, as_number(group["lr"]))  # not "initial_lr": that one is the LR scheduler's
        self._check_group(group)

    # ---------------------------------------------------------------------------------- parameter names
    def set_param_names(self, names: dict[Tensor, str] | Iterable[tuple[str, Tensor]]) -> None:
        """Attach names (e.g. from ``model.named_parameters()``) used in error messages."""
        pairs = names.items() if isinstance(names, dict) else ((t, n) for n, t in names)
        self._param_names.update({id(t): n for t, n in pairs})

    def _describe(self, index: int, p: Tensor) -> str:
        name = self._param_names.get(id(p))
        return f"parameter {index}" + (f" ({name!r})" if name else "") + f" of shape {tuple(p.shape)}"

    # ------------------------------------------------------------------------------------- subclass API
    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ()

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """Create the per-parameter tensors (``p`` is the working view: real, in the state dtype)."""
        for key in self._state_keys(group):
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        """Every scalar the kernel needs at this step (hyperparameters and bias corrections)."""
        return {"lr": group["lr"]}

    @staticmethod
    def _flags(group: dict[str, Any]) -> tuple:
        """Structural (non-numeric) options the kernel branches on; hashable, guarded when compiled."""
        return ()

    @staticmethod
    def _update(p: Tensor, g: Tensor, st: dict[str, Tensor], c: dict[str, Any], flags: tuple) -> Tensor:
        raise NotImplementedError

    _update_foreach: ClassVar[Callable | None] = None

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perform one step; ``closure`` (re-evaluating the loss with gradients enabled) is optional."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        elif self.needs_closure:
            raise RuntimeError(f"{type(self).__name__}.step() needs a closure that re-evaluates the loss "
                               "(e.g. `def closure(): opt.zero_grad(); l = f(); l.backward(); return l`)")
        work = self._gather()
        if not self._finite_or_policy(work):
            return loss
        if not self.two_pass:
            for group, items in work:
                if items:
                    self._step_group(group, items, loss)
            return loss
        self._pending, self._pending_write_back, self._deferring = [], [], True
        try:
            for group, items in work:
                if items:
                    self._step_group(group, items, loss)  # the preamble, then the subclass's first pass
            pending, write_back = self._pending, self._pending_write_back
        finally:
            self._pending, self._pending_write_back, self._deferring = [], [], False
        if pending:
            self._second_pass(pending, loss)
        self._write_back(write_back)
        return loss

    def _second_pass(self, pending: list, loss: Any) -> None:
        """Two-pass optimizers (``two_pass = True``): their ``_run_kernel`` appends per-bucket work to
        ``self._pending`` instead of moving parameters; this applies it once every group has been seen
        (for a quantity summed over all parameters: SANIA's γ, a gap optimizer's global score)."""
        raise NotImplementedError

    def _gather(self) -> list[tuple[dict[str, Any], list[tuple[int, Tensor, Tensor]]]]:
        """(group, [(flat index, param, working gradient)]) for the parameters with a gradient; the working
        gradient is ``p.grad``, or −``p.grad`` in a ``maximize`` group (``p.grad`` itself is never modified)."""
        work, index = [], 0
        for group in self.param_groups:
            items = []
            for p in group["params"]:
                if p.grad is not None:
                    items.append(self._work_item(group, index, p))
                index += 1
            work.append((group, items))
        return work

    def _work_item(self, group: dict[str, Any], index: int, p: Tensor) -> tuple[int, Tensor, Tensor]:
        """``(flat index, param, working gradient)`` of one parameter with a gradient (``_gather``'s item; also
        used by ``step_in_backward``); refuses sparse gradients and unsupported complex parameters."""
        g = p.grad
        if g.is_sparse:
            raise RuntimeError(f"{type(self).__name__} does not support sparse gradients "
                               f"({self._describe(index, p)}); use a dense gradient or torch.optim.SparseAdam")
        if torch.is_complex(p) and not self.supports_complex:
            raise RuntimeError(f"{type(self).__name__} does not support complex parameters "
                               f"({self._describe(index, p)}); split them with torch.view_as_real")
        return index, p, (_negated(g) if group.get("maximize", False) else g)

    @staticmethod
    def _real_grads(items: list) -> list[Tensor]:
        """The gradients of (index, param, grad) items, complex ones as real views (for the finiteness check)."""
        return [torch.view_as_real(g) if g.is_complex() else g for *_, g in items]

    def _finite_or_policy(self, work: list) -> bool:
        """Apply the ``nonfinite`` policy before anything is modified; ``False`` means skip this step."""
        checked = [(g, it) for g, it in work if g["nonfinite"] != "ignore" and it]
        if not checked:
            return True
        flat = [it for _, items in checked for it in items]
        grads = self._real_grads(flat)
        if _fused.all_finite(grads) or F.first_nonfinite(grads) is None:  # the second clears false alarms
            return True
        policies = {g["nonfinite"] for g, _ in checked}
        if "raise" in policies:
            raise_items = [it for g, items in checked if g["nonfinite"] == "raise" for it in items]
            bad_raise = F.first_nonfinite(self._real_grads(raise_items))
            if bad_raise is not None:
                index, p, _ = raise_items[bad_raise]
                raise FloatingPointError(f"non-finite gradient in {self._describe(index, p)}; no parameter or state "
                                         "was modified (pass nonfinite='skip' to skip such steps)")
        self.skipped_steps += 1
        return False

    def _working_set(self, group: dict[str, Any], items: list) -> tuple[list, list, list, list]:
        """(targets, working params, working grads, states) of one group's items: complex tensors as real views,
        fp32 copies of low-precision parameters under ``state_dtype="float32"``, gradients cast to the working
        dtype, and the lazy state (``step`` plus ``_init_state``) created at the first step."""
        fp32 = group["state_dtype"] == "float32"
        # the default _init_state makes exactly _state_keys(group): a key that a hyperparameter changed mid-run
        # adds (e.g. momentum 0 → 0.9) is made the same way; classes with their own _init_state manage their keys
        keys = None if type(self)._init_state is ElementwiseOptimizer._init_state else ()
        targets, work_params, grads, states = [], [], [], []
        for _, p, g in items:
            wp, wg = p, g
            if wp.is_complex():
                wp, wg = torch.view_as_real(wp), torch.view_as_real(wg)
            target = wp
            if fp32 and wp.dtype in _LOW_PRECISION:
                wp, wg = wp.float(), wg.float()
            elif wg.dtype != wp.dtype:
                wg = wg.to(wp.dtype)
            st = self.state[p]
            if not st:
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                self._init_state(group, wp, st)
            else:
                keys = self._state_keys(group) if keys is None else keys
                for key in keys:
                    if key not in st:
                        st[key] = torch.zeros_like(wp, memory_format=torch.preserve_format)
            targets.append(target), work_params.append(wp), grads.append(wg), states.append(st)
        return targets, work_params, grads, states

    def _step_group(self, group: dict[str, Any], items: list, loss: Any) -> None:
        kind = self._fused_kind()
        fused = _fused.plan(kind, group, items) if kind is not None and not self.two_pass else None
        targets, work_params, grads, states = self._working_set(group, items)
        if fused is not None and _fused.states_ok(work_params, states, self._state_keys(group)):
            _fused.step(self, kind, *fused, group, work_params, grads, states)
            return
        if group["grad_filter"] is not None:
            grads = [F.apply_filter(group["grad_filter"], g, st) for g, st in zip(grads, states)]
        if group["decay_mode"] == "coupled" and group.get("weight_decay", 0) and not self.handles_weight_decay:
            grads = torch._foreach_add(grads, work_params, alpha=group["weight_decay"])

        step_tensors = [st["step"] for st in states]
        torch._foreach_add_(step_tensors, 1.0)
        steps = torch.stack(step_tensors).tolist()
        buckets: dict[int, list[int]] = {}
        for i, s in enumerate(steps):
            buckets.setdefault(int(s), []).append(i)
        keys = self._state_keys(group)
        for step, idx in buckets.items():
            c = self._coefficients(group, step)
            if loss is not None and "loss" not in c:
                c["loss"] = float(loss)
            c["decay"] = 1.0 if self.handles_weight_decay else F.decay_multiplier(
                group["decay_mode"], group["lr"], group.get("weight_decay", 0.0), group[LR0])
            ps = [work_params[i] for i in idx]
            gs = [grads[i] for i in idx]
            sts = [states[i] for i in idx]
            self._run_kernel(group, ps, gs, sts, keys, c)
        self._write_back([(t, wp) for t, wp in zip(targets, work_params) if wp is not t])

    def _write_back(self, pairs: list[tuple[Tensor, Tensor]]) -> None:
        """Round the fp32 working copies of low-precision parameters once into the parameters (for a two-pass
        optimizer: after the second pass has moved them)."""
        if getattr(self, "_deferring", False):
            self._pending_write_back.extend(pairs)
            return
        for target, wp in pairs:
            target.copy_(wp)

    def _impl(self, group: dict[str, Any], ps: list[Tensor]) -> str:
        impl = group["impl"]
        if impl in ("auto", "fused"):  # "fused" reaches here only where the kernel cannot express the group
            return "foreach" if self._update_foreach is not None and len({p.device for p in ps}) == 1 else "reference"
        if impl == "foreach" and self._update_foreach is None:
            raise ValueError(f"impl='foreach' is not available for {type(self).__name__}; use 'reference' or 'compiled'")
        return impl

    def _directions(self, group, ps, gs, sts, keys, c) -> list[Tensor]:
        """The steps ``s`` of one bucket (``Δθ = −s``), computed by the group's impl but not applied: for
        optimizers whose step needs a quantity summed over every parameter first (SANIA's γ)."""
        flags, impl, update = self._flags(group), self._impl(group, ps), type(self)._update
        if impl == "reference":
            return [update(p, g, st, c, flags) for p, g, st in zip(ps, gs, sts)]
        if impl == "foreach":
            return type(self)._update_foreach(ps, gs, {k: [st[k] for st in sts] for k in keys}, c, flags)
        fn = _compiled(type(self), _direction_list)
        return fn(update, ps, gs, [{k: st[k] for k in keys} for st in sts], _scalar_tensors(c), flags)

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        impl, flags, cautious = self._impl(group, ps), self._flags(group), group["cautious"]
        if impl == "reference":
            _apply_reference(type(self)._update, ps, gs, sts, c, flags, cautious)
        elif impl == "foreach":
            steps = self._directions(group, ps, gs, sts, keys, c)
            if cautious:
                steps = [F.cautious(s, g) for s, g in zip(steps, gs)]
            if c["decay"] != 1.0:
                torch._foreach_mul_(ps, c["decay"])
            torch._foreach_sub_(ps, steps)
        else:
            fn = _compiled(type(self), _apply_reference)
            fn(type(self)._update, ps, gs, [{k: st[k] for k in keys} for st in sts], _scalar_tensors(c), flags,
               cautious)

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optfit"] = {"optimizer": type(self).__name__, "skipped_steps": self.skipped_steps}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim, after the checks and translations of the module docstring; tensors of
        ``state_dtype="float32"`` groups stay float32 for low-precision params."""
        state_dict = self._checked_state_dict(state_dict)
        extra = state_dict.get("optfit", {})
        originals = {k: dict(v) for k, v in state_dict["state"].items()}
        super().load_state_dict({k: v for k, v in state_dict.items() if k != "optfit"})
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        # torch casts every non-"step" state tensor to the parameter's dtype; undo that for integer counters
        # (a bf16 counter stops counting at 256) and for the float32 state of low-precision parameters
        index = 0
        for group in self.param_groups:
            keep_fp32 = group["state_dtype"] == "float32"
            for p in group["params"]:
                for k, v in originals.get(index, {}).items():
                    if k == "step" or not isinstance(v, Tensor):
                        continue
                    if not (v.is_floating_point() or v.is_complex()):
                        self.state[p][k] = v.to(device=p.device)
                    elif keep_fp32 and p.dtype in _LOW_PRECISION and v.is_floating_point():
                        self.state[p][k] = v.to(device=p.device, dtype=torch.float32)
                index += 1
        for st in self.state.values():  # a step saved as a Python number: torch's float32 0-d tensor
            if isinstance(st, dict) and "step" in st and not isinstance(st["step"], Tensor):
                st["step"] = torch.tensor(float(st["step"]), dtype=torch.float32)

    # ------------------------------------------------------------------------------- state_dict checks
    def _checked_state_dict(self, state_dict: Any) -> dict[str, Any]:
        """``state_dict`` checked (shape, writer) and translated (torch.optim's, or missing options) into what
        torch's ``load_state_dict`` then loads; the caller's dict is not modified."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}.load_state_dict: expected the dict returned by state_dict(), got "
                            f"{type(state_dict).__name__}")
        if "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' (from "
                             f"state_dict()), got keys {sorted(map(str, state_dict))}")
        extra = state_dict.get("optfit")
        if extra is not None and not isinstance(extra, Mapping):
            raise ValueError(f"{name}.load_state_dict: state_dict['optfit'] must be a dict, got {type(extra).__name__}")
        writer = None if extra is None else extra.get("optimizer")
        if writer is not None and writer != name:
            raise ValueError(f"{name}.load_state_dict: this state dict was written by {writer}, not {name}; its "
                             f"state and hyperparameters mean something else here (build a {writer} to resume it)")
        state_dict = dict(state_dict)
        groups = [dict(g) for g in state_dict["param_groups"]]
        if extra is None:
            groups, state_dict["state"] = self._adopt_foreign(groups, state_dict["state"])
        for ours, theirs in zip(self.param_groups, groups):
            for key in _OPTION_KEYS:
                if key in ours and key not in theirs:
                    theirs[key] = ours[key]
            if LR0 not in theirs and "lr" in theirs:  # checkpoints from before LR0 preset initial_lr to the lr
                theirs[LR0] = as_number(theirs.get("initial_lr", theirs["lr"]))
        state_dict["param_groups"] = groups
        return state_dict

    def _adopt_foreign(self, groups: list[dict[str, Any]], state: Mapping) -> tuple[list[dict[str, Any]], dict]:
        """A state dict without optfit's entry (torch.optim's, or another library's): refuse it unless every
        param group has exactly this optimizer's hyperparameters (up to torch's bookkeeping and LR-scheduler keys)
        and every per-parameter state only this optimizer's keys; translate torch's ``decoupled_weight_decay``
        into ``decay_mode``, drop the bookkeeping keys, and give a state without ``step`` (torch's SGD keeps
        none) the step count 1 (its buffers exist, so at least one step was taken)."""
        name = type(self).__name__
        options = set(_OPTION_KEYS)
        hint = ("this state dict has no 'optfit' entry (torch.optim's, or another library's), so it loads only "
                "into the optimizer of the same maths")
        index_group: dict[Any, dict[str, Any]] = {}
        for i, (ours, theirs) in enumerate(zip(self.param_groups, groups)):
            hyper = (set(ours) & set(self.defaults)) - options - {LR0}
            missing = sorted(hyper - set(theirs))
            extra = sorted(set(theirs) - set(ours) - _TORCH_BOOKKEEPING - _SCHEDULER_KEYS - {LR0})
            if missing or extra:
                detail = "; ".join(x for x in (missing and f"it lacks {missing}", extra and f"it has {extra}") if x)
                raise ValueError(f"{name}.load_state_dict: {hint}; param group {i} is not {name}'s ({detail})")
            flag = theirs.get("decoupled_weight_decay")
            if isinstance(flag, bool) and "decay_mode" in ours and "decay_mode" not in theirs:
                theirs["decay_mode"] = "decoupled" if flag else "coupled"
            for key in _TORCH_BOOKKEEPING - {"params", "param_names"} - set(ours):
                theirs.pop(key, None)
            for pid in theirs.get("params", ()):
                index_group[pid] = {**ours, **theirs}
        adopted = {}
        for pid, st in state.items():
            st = dict(st) if isinstance(st, Mapping) else st
            group = index_group.get(pid)
            if group is not None and isinstance(st, dict):
                allowed = set(self._state_keys(group)) | {"step"}
                unknown = sorted(set(map(str, st)) - allowed)
                if unknown:
                    raise ValueError(f"{name}.load_state_dict: {hint}; the state of parameter {pid} holds "
                                     f"{unknown}, which {name} does not keep (it keeps {sorted(allowed)})")
                if st and "step" not in st:
                    st["step"] = torch.tensor(1.0, dtype=torch.float32)
            adopted[pid] = st
        return groups, adopted

    def __getstate__(self) -> dict[str, Any]:
        """Every attribute (torch.optim keeps only defaults, state and param_groups), less the hooks; parameter
        names by position (they are keyed by identity, which a copy does not keep)."""
        state = {k: v for k, v in self.__dict__.items() if k not in _HOOK_ATTRS and k != "_param_names"}
        names = self.__dict__.get("_param_names", {})
        state["_param_names_by_position"] = [names.get(id(p)) for g in self.param_groups for p in g["params"]]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        by_position = state.pop("_param_names_by_position", None)
        super().__setstate__(state)
        self.__dict__.setdefault("_param_names", {})
        self.__dict__.setdefault("skipped_steps", 0)
        if by_position is not None:
            params = [p for g in self.param_groups for p in g["params"]]
            self._param_names = {id(p): n for p, n in zip(params, by_position) if n is not None}


def _scalar_tensors(c: dict[str, Any]) -> dict[str, Any]:
    """Numbers as float64 0-d tensors for the compiled paths: scalar arithmetic (1 − β, bias corrections)
    stays in double while the elementwise maths keeps the parameter dtype (0-d tensors do not promote
    dimensioned ones), and new values each step do not trigger recompilation."""
    return {k: (torch.tensor(v, dtype=torch.float64) if isinstance(v, (int, float)) and not isinstance(v, bool)
                else v) for k, v in c.items()}


def _compiled(cls: type, fn: Callable) -> Callable:
    """``fn`` under ``torch.compile``, with a code object of its own per optimizer class: dynamo caches (and
    caps recompilations) per code object, so classes must not share one."""
    key = (cls, fn.__name__)
    compiled = _COMPILED.get(key)
    if compiled is None:
        code = fn.__code__.replace(co_name=f"{fn.__name__}_{cls.__name__}")
        clone = types.FunctionType(code, fn.__globals__, code.co_name)
        compiled = _COMPILED[key] = torch.compile(clone)
    return compiled


def _direction_list(update, ps, gs, sts, c, flags) -> list[Tensor]:
    return [update(p, g, st, c, flags) for p, g, st in zip(ps, gs, sts)]


def _apply_reference(update, ps, gs, sts, c, flags, cautious) -> None:
    """The ground-truth loop: ``s = update(...)``, caution, multiplicative decay, ``θ ← θ − s``."""
    for p, g, st in zip(ps, gs, sts):
        s = update(p, g, st, c, flags)
        if cautious:
            s = F.cautious(s, g)
        p.mul_(c["decay"])
        p.sub_(s)
