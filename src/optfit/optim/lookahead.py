"""Lookahead (Zhang, Lucas, Hinton & Ba, arXiv 1907.08610) around any optimizer, and ``OptimizerWrapper``, the
machinery it shares with SAM, ASAM and GSAM (``optfit.optim.sam``).

Lookahead keeps slow weights φ beside the fast weights θ that the base optimizer A moves:

    θ ← A(θ)                       every step (the base optimizer's own update)
    every k steps:  φ ← φ + α(θ − φ) ;  θ ← φ           φ₀ = θ₀ (the parameter before its first step)

``Lookahead(params, base="adamw", k=5, alpha=0.5, **base_hparams)``; ``k`` and ``alpha`` may differ per param group
(stored as ``lookahead_k`` and ``lookahead_alpha``: RMSprop has an ``alpha`` of its own). One step counter
(``lookahead_steps``, in the state dict) counts the base's steps; a step the base skips (``nonfinite="skip"``) is not counted. With k = 1 and α = 1 every
step is exactly the base's (``lerp`` with weight 1 returns its end point bit for bit).

Departures from pytorch_optimizer 4.1.0's ``Lookahead`` (the maths is the same): φ is created at a parameter's
first step rather than at construction (so a parameter that never has a gradient keeps no state), and a
synchronisation moves every parameter that has slow weights, not only those with a gradient at that step (the
paper's φ is the whole parameter vector). Its "pullback momentum" options are not in the paper and not offered.

**The wrapper contract** (``OptimizerWrapper``): the base optimizer is built from a registry name, a
``torch.optim.Optimizer`` class or any callable ``params -> optimizer`` (e.g. ``functools.partial(RMSprop,
alpha=0.9)`` when a base hyperparameter shares a wrapper argument's name); every other keyword goes to it. The
wrapper's ``param_groups`` and ``state`` *are* the base's (properties, not copies), so LR schedulers, ``OneCycleLR``
momentum cycling, ``zero_grad`` and the state count see one set of groups; the wrapper's own hyperparameters live in
the same group dicts under prefixed keys. ``state_dict()`` is the base's (its ``state`` and ``param_groups``) with
``sd["optfit"] = {"optimizer": <wrapper class>, "base": <base class>, "base_optfit": <the base's own optfit entry>,
"skipped_steps", ...}``; ``load_state_dict`` checks both names and refuses state dicts without an ``"optfit"``
entry. The base's ``step`` is called without its profiling hooks, so the step hooks (global and the wrapper's) fire
once per wrapper step. Non-finite gradients follow the base's ``nonfinite`` policy; ``skipped_steps`` is the base's.
The signature of every wrapper lists the default base's (AdamW's) hyperparameters, so that the registry and
``create_optimizer`` know them; ``create_optimizer`` accepts only those names (use the class directly for others).
"""

from __future__ import annotations

import inspect
import types
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _validation as V
from ..registry import OptimizerInfo, optimizer_info, register
from ._base import _HOOK_ATTRS, _LOW_PRECISION

__all__ = ["OptimizerWrapper", "Lookahead"]


def build_base(base: Any, params: Any, hparams: dict[str, Any]) -> Optimizer:
    """The base optimizer over ``params`` from a registry name (its preset applied), an optimizer class or a
    callable ``params -> optimizer``."""
    if isinstance(base, Optimizer):
        raise TypeError(f"base must be a registry name or an optimizer class, not an instance of "
                        f"{type(base).__name__}: the wrapper builds its base over the same parameters")
    if isinstance(base, str):
        info = optimizer_info(base)
        clash = sorted(set(hparams) & set(info.preset))
        if clash:
            raise TypeError(f"base {info.name!r} fixes {', '.join(clash)} (it is {info.cls.__name__} with "
                            f"{dict(info.preset)})")
        return info.cls(params, **{**info.preset, **hparams})
    if callable(base):
        opt = base(params, **hparams)
        if not isinstance(opt, Optimizer):
            raise TypeError(f"base must build a torch.optim.Optimizer, got {type(opt).__name__}")
        return opt
    raise TypeError(f"base must be a registry name, an optimizer class or a callable, got {type(base).__name__}")


def unhooked_step(opt: Optimizer) -> Callable[..., Any]:
    """``opt.step`` without torch's profiling wrapper (which fires the global step hooks a second time)."""
    fn = type(opt).step
    if getattr(fn, "hooked", False) and hasattr(fn, "__wrapped__"):
        fn = fn.__wrapped__
    return types.MethodType(fn, opt)


def expose_base_hyperparameters(cls: type, default_base: str = "adamw") -> None:
    """Give ``cls.__init__`` a signature that lists the default base's hyperparameters (with its defaults) after
    the wrapper's own, so ``optimizer_info(...).defaults`` and ``create_optimizer`` know them."""
    sig = inspect.signature(cls.__init__)
    own = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    names = {p.name for p in own}
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v)
             for k, v in optimizer_info(default_base).defaults.items() if k not in names]
    rest = [p for p in sig.parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD]
    cls.__init__.__signature__ = sig.replace(parameters=[*own, *extra, *rest])


class OptimizerWrapper(Optimizer):
    """A ``torch.optim.Optimizer`` around a base optimizer whose param groups and state it shares (module docstring).

    Subclasses name their hyperparameters' group keys in ``GROUP_KEYS`` (``{argument: group key}``), pass
    ``{argument: value}`` and implement ``step``; they may add ``_check_group`` (validation of the keys) and
    ``_wrapper_state`` / ``_load_wrapper_state`` (extra state). A param group given with an argument's own name
    (``{"params": ..., "rho": 0.1}``) has it moved to the group key, unless the base uses that name itself.
    """

    GROUP_KEYS: ClassVar[dict[str, str]] = {}
    needs_closure: ClassVar[bool] = False
    handles_weight_decay: ClassVar[bool] = False
    maximize_unsupported: ClassVar[str | None] = None

    def __init__(self, params: Any, base: Any, own: dict[str, Any], base_hparams: dict[str, Any]) -> None:
        torch._C._log_api_usage_once("python.optimizer")
        self.base_optimizer = build_base(base, params, base_hparams)
        self._own_defaults = {self.GROUP_KEYS[k]: v for k, v in own.items()}
        self.defaults = {**self.base_optimizer.defaults, **own}
        for attr in _HOOK_ATTRS:
            setattr(self, attr, OrderedDict())
        self._patch_step_function()
        self._warned_capturable_if_run_uncaptured = True
        for group in self.param_groups:
            self._init_group(group)

    # --------------------------------------------------------------------- the base's groups and state
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.base_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.base_optimizer.param_groups = value

    @property
    def state(self) -> Any:
        return self.base_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.base_optimizer.state = value

    @property
    def skipped_steps(self) -> int:
        return int(getattr(self.base_optimizer, "skipped_steps", 0))

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        if hasattr(self.base_optimizer, "skipped_steps"):
            self.base_optimizer.skipped_steps = value

    @classmethod
    def accepted_hyperparameters(cls, hyperparameters: Mapping[str, Any]) -> set[str] | None:
        """The keywords a factory should accept with these ``hyperparameters``: the wrapper's own and those of the
        base they name (``base`` a registry name; the default base otherwise), or ``None`` (any: the base is a
        class or callable, which checks its own keywords)."""
        base = hyperparameters.get("base", inspect.signature(cls.__init__).parameters["base"].default)
        if not isinstance(base, str):
            return None
        return {"base", *cls.GROUP_KEYS, *optimizer_info(base).defaults}

    def _init_group(self, group: dict[str, Any]) -> None:
        for name, key in self.GROUP_KEYS.items():
            if name in group and name not in self.base_optimizer.defaults:
                group.setdefault(key, group.pop(name))
        for key, value in self._own_defaults.items():
            group.setdefault(key, value)
        self._check_group(group)

    def _check_group(self, group: dict[str, Any]) -> None:
        """Subclass hook: ``ValueError`` naming the first invalid wrapper hyperparameter of ``group``."""

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.base_optimizer.add_param_group(param_group)
        self._init_group(self.param_groups[-1])

    # ------------------------------------------------------------------------- what the base offers
    def _offered_impls(self) -> tuple[str, ...]:
        offered = getattr(self.base_optimizer, "_offered_impls", None)
        return offered() if offered is not None else ("auto", "reference")

    def set_param_names(self, names: Any) -> None:
        if hasattr(self.base_optimizer, "set_param_names"):
            self.base_optimizer.set_param_names(names)

    def _gather(self) -> list[tuple[dict[str, Any], list[tuple[int, Tensor, Tensor]]]]:
        """(group, [(flat index, param, working gradient)]): the base's own gathering where it has one (its sparse,
        complex and ``maximize`` rules), else the same rules here (−∇f in ``maximize`` groups)."""
        if hasattr(self.base_optimizer, "_gather"):
            return self.base_optimizer._gather()
        work, index = [], 0
        for group in self.param_groups:
            items = []
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients (parameter "
                                           f"{index} of shape {tuple(p.shape)})")
                    items.append((index, p, -p.grad if group.get("maximize", False) else p.grad))
                index += 1
            work.append((group, items))
        return work

    def _finite_or_policy(self, work: list) -> bool:
        """The base's ``nonfinite`` policy on ``work`` (``False``: skip the step); a base without one ignores."""
        check = getattr(self.base_optimizer, "_finite_or_policy", None)
        return True if check is None else check(work)

    # ------------------------------------------------------------------------------------- state
    def _wrapper_state(self) -> dict[str, Any]:
        return {}

    def _load_wrapper_state(self, extra: Mapping[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = dict(self.base_optimizer.state_dict())
        inner = sd.pop("optfit", None)
        sd["optfit"] = {"optimizer": type(self).__name__, "base": type(self.base_optimizer).__name__,
                        "base_optfit": inner, "skipped_steps": self.skipped_steps, **self._wrapper_state()}
        for hook in self._optimizer_state_dict_post_hooks.values():
            out = hook(self, sd)
            sd = sd if out is None else out
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict from ``state_dict()`` of the same wrapper around the same base class."""
        name = type(self).__name__
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"{name}.load_state_dict: expected the dict returned by state_dict(), got "
                            f"{type(state_dict).__name__}")
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            out = hook(self, state_dict)
            state_dict = state_dict if out is None else out
        if "state" not in state_dict or "param_groups" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with 'state' and 'param_groups' (from "
                             f"state_dict()), got keys {sorted(map(str, state_dict))}")
        extra = state_dict.get("optfit")
        if extra is None:
            raise ValueError(f"{name}.load_state_dict: this state dict has no 'optfit' entry (torch.optim's, or "
                             f"another library's); {name} loads only its own, which name its base optimizer")
        if not isinstance(extra, Mapping):
            raise ValueError(f"{name}.load_state_dict: state_dict['optfit'] must be a dict, got {type(extra).__name__}")
        writer, base = extra.get("optimizer"), type(self.base_optimizer).__name__
        if writer != name:
            raise ValueError(f"{name}.load_state_dict: this state dict was written by {writer}, not {name}")
        if extra.get("base") != base:
            raise ValueError(f"{name}.load_state_dict: this state dict's base optimizer is {extra.get('base')}, "
                             f"this {name} wraps {base}")
        inner = {"state": state_dict["state"], "param_groups": state_dict["param_groups"]}
        if extra.get("base_optfit") is not None:
            inner["optfit"] = extra["base_optfit"]
        self.base_optimizer.load_state_dict(inner)
        for group in self.param_groups:
            self._init_group(group)
        self._load_wrapper_state(extra)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __getstate__(self) -> dict[str, Any]:
        """Every attribute (the base included), less the hooks, as optfit's other optimizers pickle."""
        return {k: v for k, v in self.__dict__.items() if k not in _HOOK_ATTRS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)


class Lookahead(OptimizerWrapper):
    """Lookahead around ``base`` (module docstring): every ``k`` base steps, φ ← φ + α(θ − φ) and θ ← φ."""

    SLOW: ClassVar[str] = "lookahead_slow"
    GROUP_KEYS = {"k": "lookahead_k", "alpha": "lookahead_alpha"}

    def __init__(self, params: Any, base: Any = "adamw", k: int = 5, alpha: float = 0.5, **base_hparams: Any) -> None:
        super().__init__(params, base, {"k": k, "alpha": alpha}, base_hparams)
        self.lookahead_steps = 0
        self.needs_closure = bool(getattr(self.base_optimizer, "needs_closure", False))
        self.needs_create_graph = bool(getattr(self.base_optimizer, "needs_create_graph", False))

    def _check_group(self, group: dict[str, Any]) -> None:
        V.integer("k", group["lookahead_k"], minimum=1)
        V.in_range("alpha", group["lookahead_alpha"], 0.0, 1.0, hi_open=False)

    def _slow_dtype(self, group: dict[str, Any], p: Tensor) -> torch.dtype:
        fp32 = group.get("state_dtype") == "float32" and p.dtype in _LOW_PRECISION
        return torch.float32 if fp32 else p.dtype

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One base step (``closure`` passed on), then the slow-weight update of the groups due one."""
        fresh = [(group, p, p.detach().clone()) for group in self.param_groups for p in group["params"]
                 if p.requires_grad and (closure is not None or p.grad is not None)
                 and self.SLOW not in self.state.get(p, {})]
        skipped = self.skipped_steps
        loss = unhooked_step(self.base_optimizer)(closure)
        if self.skipped_steps != skipped:
            return loss
        for group, p, theta0 in fresh:
            if p.grad is not None:
                self.state[p][self.SLOW] = theta0.to(self._slow_dtype(group, p))
        self.lookahead_steps += 1
        for group in self.param_groups:
            if self.lookahead_steps % group["lookahead_k"] == 0:
                self._synchronise(group)
        return loss

    def _synchronise(self, group: dict[str, Any]) -> None:
        alpha = group["lookahead_alpha"]
        for p in group["params"]:
            slow = self.state.get(p, {}).get(self.SLOW)
            if slow is None:
                continue
            slow.lerp_(p.to(slow.dtype), alpha)
            p.copy_(slow)

    def _wrapper_state(self) -> dict[str, Any]:
        return {"lookahead_steps": self.lookahead_steps}

    def _load_wrapper_state(self, extra: Mapping[str, Any]) -> None:
        self.lookahead_steps = int(extra.get("lookahead_steps", 0))

    def next_step_needs_graph(self) -> bool:
        """The base's answer (AdaHessian, Sophia): whether the next step needs ``backward(create_graph=True)``."""
        ask = getattr(self.base_optimizer, "next_step_needs_graph", None)
        return bool(ask()) if ask is not None else False


expose_base_hyperparameters(Lookahead)

register(OptimizerInfo(
    name="lookahead", cls=Lookahead, family="wrapper", paper="arXiv:1907.08610",
    description="Lookahead around any optimizer (base='adamw' by default): every k steps the slow weights move "
                "φ ← φ + α(θ − φ) and θ ← φ; state = the base's plus φ.",
    state_tensors=3, has_betas=True, has_momentum=True, test_hparams={"lr": 0.05},
))
