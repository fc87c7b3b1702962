"""``OptfitTrainer``: the Hugging Face ``Trainer`` for every optfit optimizer (needs ``transformers``).

The ``Trainer`` steps with ``optimizer.step()`` after a plain ``backward()``, which is all most optimizers need.
Three kinds need more, and ``OptfitTrainer`` gives it to them; for every other optimizer it changes nothing (the
same numbers as ``Trainer`` with ``optimizers=(opt, None)``):

* closure optimizers (``needs_closure``, e.g. SANIA, Celo, Grad-Avg): the step gets a closure. Its first call
  returns the loss of the gradients the ``Trainer`` has just accumulated (at unchanged parameters, so nothing is
  recomputed); any further call (Grad-Avg's trial point) zeroes the gradients and re-runs ``training_step`` on
  every micro-batch of the step, with the random state each had (same dropout masks on CPU and CUDA), then clips
  like the ``Trainer``. The loss is the sum of the micro-batch losses as they were back-propagated (divided by
  ``gradient_accumulation_steps``), so gradient accumulation is exact.
* Hessian optimizers (``needs_create_graph``, e.g. AdaHessian, FOSI): ``backward(create_graph=True)`` on the
  micro-batches of the steps that estimate curvature (``next_step_needs_graph()``). Gradient clipping scales
  the gradients, not the Hessian-vector products.
* Schedule-Free (``train()`` / ``eval()``): ``eval()`` around evaluation, prediction, ``save_model`` and every
  checkpoint (so a checkpoint holds the evaluation weights x, as the ``schedulefree`` documentation asks),
  ``train()`` before each training step, and eval mode when ``train()`` returns: the model then holds x.
  Resuming from such a checkpoint is bit-exact (optfit's optimizer keeps the training point y in its state).

Limits (each raises a clear error where it applies): closure and Hessian optimizers do not run under fp16
loss scaling (``GradScaler``: use bf16) or DeepSpeed. Multi-process runs reduce the closure's loss to its mean
over processes but are untested here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import warnings
import weakref
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from ..factory import create_optimizer
from ..registry import optimizer_info
from . import has_eval_mode, in_train_mode, needs_closure, needs_create_graph, unwrap

__all__ = ["OptfitTrainer"]

_GRAPH_WARNING = "Using backward\\(\\) with create_graph=True"


@dataclasses.dataclass
class _MicroBatch:
    """One ``training_step`` call of the coming optimizer step, kept to re-run it inside the closure."""

    model: Any
    inputs: Any
    args: tuple
    kwargs: dict
    rng: tuple
    loss: torch.Tensor  # as back-propagated (after the Trainer's and accelerate's scaling)


def _rng_state() -> tuple:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def _replayed_rng(state: tuple):
    """Run with the random state ``state``; the caller's random stream continues afterwards as if nothing ran."""
    saved = _rng_state()
    _set_rng_state(state)
    try:
        yield
    finally:
        _set_rng_state(saved)


def _versions(optimizer: torch.optim.Optimizer) -> tuple[int, ...]:
    return tuple(p._version for group in optimizer.param_groups for p in group["params"])


def _default(field: str) -> Any:
    return next(f.default for f in dataclasses.fields(TrainingArguments) if f.name == field)


class OptfitTrainer(Trainer):
    """``transformers.Trainer`` that runs every optfit optimizer correctly (see the module docstring).

    ``optimizer_name`` builds a registry optimizer with ``optfit.create_optimizer(model, optimizer_name,
    **optimizer_kwargs)``: the registry defaults apply unless ``optimizer_kwargs`` sets a hyperparameter
    (``TrainingArguments.learning_rate``, ``weight_decay`` and ``adam_*`` are not used; a warning says so when
    they differ from their defaults), and Celo's ``total_steps`` defaults to the run's number of steps. The
    ``Trainer``'s own ``optimizers=(optimizer, scheduler)`` works as usual, with the same handling.
    """

    def __init__(self, *args: Any, optimizer_name: str | None = None,
                 optimizer_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if optimizer_name is None and optimizer_kwargs:
            raise TypeError("OptfitTrainer: optimizer_kwargs given without optimizer_name")
        self.optimizer_name = None if optimizer_name is None else optimizer_info(optimizer_name).name
        self.optimizer_kwargs = dict(optimizer_kwargs or {})
        self._cycle: list[_MicroBatch] = []
        self._cycle_versions: tuple[int, ...] | None = None
        self._replay: list[torch.Tensor] | None = None
        self._fed: Any = None
        self._total_steps: int | None = None
        super().__init__(*args, **kwargs)
        if self.optimizer_name is not None and self.optimizer is not None:
            raise TypeError("OptfitTrainer: give optimizer_name or optimizers=(optimizer, scheduler), not both")

    # ------------------------------------------------------------------------------------------ building
    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self._total_steps = num_training_steps
        super().create_optimizer_and_scheduler(num_training_steps)

    def create_optimizer(self, *args: Any, **kwargs: Any) -> torch.optim.Optimizer:
        if self.optimizer is None and self.optimizer_name is not None:
            model = args[0] if args else kwargs.get("model")
            hparams = dict(self.optimizer_kwargs)
            info = optimizer_info(self.optimizer_name)
            if info.needs_batch:
                raise TypeError(f"{info.name} needs the batch itself at every step (set_batch(x, y)) and a traceable "
                                "model, which Trainer does not give an optimizer; use it in your own loop")
            if info.takes_total_steps and "total_steps" not in hparams:
                hparams["total_steps"] = self._planned_steps()
            self._warn_unused_arguments(hparams)
            self.optimizer = create_optimizer(self.model if model is None else model, self.optimizer_name, **hparams)
        return super().create_optimizer(*args, **kwargs)

    def _planned_steps(self) -> int:
        for steps in (self._total_steps, getattr(self.state, "max_steps", 0), self.args.max_steps):
            if steps and steps > 0:
                return int(steps)
        raise ValueError(f"OptfitTrainer: {self.optimizer_name} needs the run's length; pass "
                         "optimizer_kwargs={'total_steps': N} or TrainingArguments(max_steps=N)")

    def _warn_unused_arguments(self, hparams: dict[str, Any]) -> None:
        unused = [f"{field}={getattr(self.args, field)!r}" for field, key in
                  (("learning_rate", "lr"), ("weight_decay", "weight_decay"), ("adam_beta1", "betas"),
                   ("adam_beta2", "betas"), ("adam_epsilon", "eps"))
                  if key not in hparams and getattr(self.args, field) != _default(field)]
        if unused:
            warnings.warn(f"OptfitTrainer: TrainingArguments {', '.join(unused)} not used by "
                          f"optimizer_name={self.optimizer_name!r} (the registry defaults apply); set them in "
                          "optimizer_kwargs (lr, weight_decay, betas, eps)", UserWarning, stacklevel=4)

    # -------------------------------------------------------------------------------------------- steps
    def training_step(self, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        opt = self._bind()
        if self._replay is not None:  # a re-evaluation inside the closure
            with self._backward(opt, self._replay):
                return super().training_step(model, inputs, *args, **kwargs)
        if has_eval_mode(opt):
            opt.train()
        closure = needs_closure(opt)
        if not closure and not needs_create_graph(opt):
            return super().training_step(model, inputs, *args, **kwargs)
        rng = _rng_state() if closure else ()
        losses: list[torch.Tensor] = []
        with self._backward(opt, losses):
            out = super().training_step(model, inputs, *args, **kwargs)
        if closure:
            if not losses:
                raise RuntimeError(f"OptfitTrainer: training_step back-propagated without accelerator.backward(), so "
                                   f"the loss {type(opt).__name__} needs was not seen; call "
                                   "self.accelerator.backward(loss) in overrides")
            self._cycle.append(_MicroBatch(model, inputs, args, kwargs, rng, sum(losses)))
            self._cycle_versions = _versions(opt)
        return out

    def _bind(self) -> Any:
        """The optimizer inside the Trainer's wrapper; checks it and, for closure optimizers, installs the closure
        feed once."""
        opt = unwrap(self.optimizer)
        if opt is self._fed:
            return opt
        closure, graph = needs_closure(opt), getattr(type(opt), "needs_create_graph", False)
        if closure or graph:
            what = f"{type(opt).__name__} ({'a closure' if closure else 'backward(create_graph=True)'})"
            if getattr(self.accelerator, "scaler", None) is not None:
                raise RuntimeError(f"OptfitTrainer: {what} cannot run with fp16 loss scaling (GradScaler): "
                                   "train with bf16=True or in float32")
            if getattr(self, "is_deepspeed_enabled", False):
                raise RuntimeError(f"OptfitTrainer: {what} is not supported under DeepSpeed")
        if closure:
            _install_feed(opt, self)
        self._fed, self._cycle = opt, []
        return opt

    @contextlib.contextmanager
    def _backward(self, opt: Any, losses: list[torch.Tensor]):
        """Patch ``accelerator.backward`` for one training_step: record the loss as back-propagated, and add
        ``create_graph=True`` when the coming step needs it."""
        acc = self.accelerator
        graph = needs_create_graph(opt)
        own = acc.__dict__.get("backward")
        original = acc.backward

        def backward(loss: torch.Tensor, **kw: Any) -> Any:
            scale = 1 if getattr(acc, "distributed_type", None) == "DEEPSPEED" else acc.gradient_accumulation_steps
            losses.append(loss.detach() / scale)
            if graph:
                kw.setdefault("create_graph", True)
            with warnings.catch_warnings():  # zero_grad(set_to_none) after the step breaks the cycle it warns of
                warnings.filterwarnings("ignore", message=_GRAPH_WARNING)
                return original(loss, **kw)

        acc.backward = backward
        try:
            yield
        finally:
            if own is None:
                del acc.backward
            else:
                acc.backward = own

    def _closure(self, opt: Any) -> Any:
        cycle, versions = self._cycle, self._cycle_versions
        calls = 0

        def closure() -> torch.Tensor:
            nonlocal calls
            calls += 1
            if calls == 1 and versions == _versions(opt):  # the Trainer's gradients, at these very parameters
                return self._reduced(sum(mb.loss for mb in cycle))
            return self._reevaluate(opt, cycle)

        return closure

    def _reevaluate(self, opt: Any, cycle: list[_MicroBatch]) -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        self._replay = losses
        try:
            with torch.enable_grad():
                for i, mb in enumerate(cycle):
                    last = i == len(cycle) - 1
                    sync = (contextlib.nullcontext() if last or self.accelerator.num_processes == 1
                            else self.accelerator.no_sync(mb.model))
                    with _replayed_rng(mb.rng), sync:
                        self.training_step(mb.model, mb.inputs, *mb.args, **mb.kwargs)
        finally:
            self._replay = None
        if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(cycle[-1].model.parameters(), self.args.max_grad_norm)
        return self._reduced(sum(losses))

    def _reduced(self, loss: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(loss, "mean") if self.accelerator.num_processes > 1 else loss

    # --------------------------------------------------------------------------- evaluation weights (SF)
    @contextlib.contextmanager
    def _evaluation_weights(self):
        """Schedule-Free: the model holds x (``eval()``) inside, y again afterwards if it held y before."""
        opt = None if self.optimizer is None else unwrap(self.optimizer)
        if opt is None or not has_eval_mode(opt) or not in_train_mode(opt):
            yield
            return
        opt.eval()
        try:
            yield
        finally:
            opt.train()

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """``Trainer.train``; afterwards a Schedule-Free optimizer is in eval mode (the model holds x)."""
        try:
            return super().train(*args, **kwargs)
        finally:
            self._cycle = []
            opt = None if self.optimizer is None else unwrap(self.optimizer)
            if opt is not None and has_eval_mode(opt) and in_train_mode(opt):
                opt.eval()

    def evaluate(self, *args: Any, **kwargs: Any) -> Any:
        with self._evaluation_weights():
            return super().evaluate(*args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self._evaluation_weights():
            return super().predict(*args, **kwargs)

    def save_model(self, *args: Any, **kwargs: Any) -> None:
        with self._evaluation_weights():
            return super().save_model(*args, **kwargs)

    def _save_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        with self._evaluation_weights():
            return super()._save_checkpoint(*args, **kwargs)


def _install_feed(opt: torch.optim.Optimizer, trainer: OptfitTrainer) -> None:
    """Make ``opt.step()`` without a closure take the trainer's closure while a step's micro-batches are pending.
    Installed as a bound method over whatever ``opt.step`` was (an LR scheduler's counting wrapper included), so
    schedulers created later can wrap it in turn; outside a pending step it passes every call through."""
    if getattr(opt.step, "_optfit_feed", None) is not None:
        opt.step._optfit_feed[0] = weakref.ref(trainer)
        return
    previous = opt.step
    owner = [weakref.ref(trainer)]

    def step(self: torch.optim.Optimizer, closure: Any = None, *args: Any, **kwargs: Any) -> Any:
        t = owner[0]()
        if closure is not None or args or kwargs or t is None or not t._cycle or unwrap(t.optimizer) is not self:
            return previous(closure, *args, **kwargs)
        try:
            return previous(t._closure(self))
        finally:
            t._cycle, t._cycle_versions = [], None

    marks = getattr(getattr(previous, "__func__", previous), "__dict__", {})  # e.g. an LR scheduler's mark
    step.__dict__.update({k: v for k, v in marks.items() if not k.startswith("__")})
    step._optfit_feed = owner  # type: ignore[attr-defined]
    opt.step = types.MethodType(step, opt)
