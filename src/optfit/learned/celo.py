"""Celo and Celo-Adam (Moudgil, Knyazev, Lajoie, Belilovsky, "Celo: Training Versatile Learned Optimizers
on a Compute Diet", TMLR 2025, arXiv 2501.12670), ported exactly from the authors' JAX code (amoudgl/celo
@66d9761) and run on their released meta-learned weights.

Both share the learned LSTM scheduler of ``_celo_net`` (inputs: fraction of training t/N and loss features;
output: one ``lr_mult`` for every tensor). Per tensor, with g clipped to [−1000, 1000] and the accumulators
updated before use (float32 decays, as in the original):

* **Celo** — m at β = (0.9, 0.99, 0.999), r at 0.999, Adafactor row/column (or diagonal) EMAs of g² + 1e-30 at
  (0.9, 0.99, 0.999); 30 features per element (g, clip(g, ±0.1), θ, m, r, m·rsqrt(r+1e-6), rsqrt(r+1e-6),
  Adafactor-normalised g, g·rsqrt(r+1e-6), row/col EMAs, their rsqrt(·+1e-8), m·row·col factors), each divided by
  √(1e-5 + mean over the tensor of its square); per-element MLP 30 → 4 → 4 → 3 (ReLU) gives direction d and
  magnitude a;  θ ← θ − lr · lr_mult · d · exp(0.001 a) · 0.001 · √(mean(θ²) + 1e-9).
* **Celo-Adam** — m at 0.9, r at 0.999;  θ ← θ − lr · (0.001 · lr_mult) · m̂ / (1e-8 + √(r̂ + 1e-10)),
  m̂ = m/(1 − 0.9ᵗ), r̂ = r/(1 − 0.999ᵗ).

``lr`` (default 1.0 = the original) is a per-group multiplier on top of the learned schedule, so LR schedulers
and ``lr=0`` groups behave as usual.

Weights (never bundled): ``weights=PATH`` (the file, or a folder holding it), else ``$OPTFIT_CELO_WEIGHTS`` /
``$OPTFIT_CELO_ADAM_WEIGHTS`` (the file), else ``$OPTFIT_CELO_DIR`` (a folder holding ``celo_theta.state`` and
``celo_adam_theta.state``). Where this port departs from the original (identical results when every parameter
has a gradient at every step): one LSTM state stands for the identical per-tensor copies; a parameter without a
gradient is skipped (its accumulators and Celo-Adam's bias-correction count do not advance); non-finite
gradients or losses follow optfit's ``nonfinite`` policy.

``torch.compile(opt.step)`` runs the step eagerly (``torch.compiler.disable``; traced, the step drifted from eager by
up to 0.24), so a compiled step equals the eager one; ``impl="compiled"`` (Celo) is the supported compiled path.
``maximize=True`` is refused: the meta-trained rule reads the loss it was trained to minimise.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..optim import _validation as V
from ..optim._base import ElementwiseOptimizer, _compiled
from ..registry import OptimizerInfo, register
from . import _celo_compiled as C
from . import _celo_kernel as K
from . import _celo_net as net

__all__ = ["Celo", "CeloAdam"]


def _as_loss(loss: Any) -> Tensor:
    """The loss as a float32 0-d CPU tensor (rounded like the original, which takes float32 losses)."""
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise ValueError(f"the loss must be a scalar, got a tensor of shape {tuple(loss.shape)}")
        return loss.detach().reshape(()).to(device="cpu", dtype=torch.float32)
    try:
        return torch.tensor(float(loss), dtype=torch.float32)
    except (TypeError, ValueError):
        raise TypeError(f"the loss must be a number or a 0-d tensor, got {type(loss).__name__}") from None


class _CeloBase(ElementwiseOptimizer):
    """Shared machinery: weights, scheduler state, the loss hook, state_dict. See the module docstring."""

    kind: ClassVar[str]
    needs_closure = True
    two_pass = True
    supports_complex = False
    OPTIONS: ClassVar[tuple[str, ...]] = ("nonfinite", "impl", "state_dtype", "grad_filter", "maximize")
    maximize_unsupported = ("was meta-trained to minimise: its learned scheduler reads the loss, so an ascent has no "
                            "meaning for it (minimise −f instead)")
    IMPLS: ClassVar[tuple[str, ...]] = ("auto", "reference")

    def __init__(self, params: Any, lr: float = 1.0, *, total_steps: int = 10_000,
                 weights: str | os.PathLike[str] | None = None, **options: Any) -> None:
        net.check_total_steps(total_steps)
        super().__init__(params, {"lr": lr}, **options)
        self.weights = net.load_weights(self.kind, weights, owner=type(self).__name__)
        self.total_steps = total_steps
        self._sched = net.init_scheduler_state(self.weights)
        self._decays = net.loss_decays(total_steps)
        self._device_cache: dict[torch.device, dict[str, Any]] = {}
        self._step_loss: Tensor | None = None
        self.last_lr_mult: float | None = None
        self.last_scheduler_input: Tensor | None = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why ``cls`` cannot be built without a ``weights=`` argument here (``None`` when the environment
        points at the weights); test suites use it to skip."""
        try:
            net.resolve_weights_path(cls.kind, None, cls.__name__)
        except (ValueError, FileNotFoundError) as exc:
            return str(exc)
        return None

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {"lr": group["lr"], "step": step}

    # ---------------------------------------------------------------------------------------------- step
    @torch.compiler.disable  # traced by torch.compile(opt.step) it drifted from eager (up to 0.24): run eagerly
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None, *, loss: Any = None) -> Any:
        """One step. The learned scheduler needs this step's training loss: give a ``closure`` that re-evaluates
        it (torch.optim convention; its value is returned) or, for trainers that computed it already, the
        keyword-only ``loss=`` (a number or 0-d tensor, taken at the parameters before this step)."""
        if closure is not None and loss is not None:
            raise TypeError(f"{type(self).__name__}.step() takes a closure or loss=, not both")
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
            if loss is None:
                raise TypeError(f"the closure given to {type(self).__name__}.step() returned None; it must return "
                                "the loss (the learned scheduler reads it)")
        elif loss is None:
            raise RuntimeError(f"{type(self).__name__}.step() needs the training loss: pass a closure "
                               "(`def closure(): opt.zero_grad(); l = f(); l.backward(); return l`) or the loss "
                               "computed by your trainer as opt.step(loss=l)")
        value = _as_loss(loss)
        if not bool(torch.isfinite(value)):
            policies = {g["nonfinite"] for g in self.param_groups}
            if "raise" in policies:
                raise FloatingPointError(f"non-finite loss ({float(value)}) given to {type(self).__name__}.step(); "
                                         "no parameter or state was modified (pass nonfinite='skip' to skip such "
                                         "steps)")
            if "skip" in policies:
                self.skipped_steps += 1
                return loss
        self._step_loss = value
        try:
            super().step(lambda: value)
        finally:
            self._step_loss = None
        return loss

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        self._pending.append((group, ps, gs, sts, c))

    def _second_pass(self, pending: list, loss: Any) -> None:
        sched = {k: v.clone() for k, v in self._sched.items()}  # committed only once the step went through
        features = net.add_loss(sched, self._decays, self._step_loss)
        x = net.scheduler_input(int(sched["iteration"]) - 1, self.total_steps, features)
        lr_mult = net.lstm_step(self.weights, x, sched)
        self._apply(pending, lr_mult)
        self._sched = sched
        self.last_scheduler_input, self.last_lr_mult = x, float(lr_mult)

    def _apply(self, pending: list, lr_mult: Tensor) -> None:
        raise NotImplementedError

    def scheduler_state(self) -> dict[str, Tensor]:
        """Copies of the global state: LSTM hidden/cell (64,), loss-buffer means/running minima (10,), iteration."""
        return {k: v.clone() for k, v in self._sched.items()}

    # --------------------------------------------------------------------------------------------- state
    _PICKLED: ClassVar[tuple[str, ...]] = ("weights", "total_steps", "_sched", "_decays", "skipped_steps",
                                           "_param_names", "last_lr_mult", "last_scheduler_input")

    def __getstate__(self) -> dict[str, Any]:  # torch.optim pickles only defaults, state and param_groups
        return {**super().__getstate__(), **{k: self.__dict__[k] for k in self._PICKLED if k in self.__dict__}}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_device_cache", {})
        self.__dict__.setdefault("_step_loss", None)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optfit"] = {**sd["optfit"], "celo": {**self.scheduler_state(), "total_steps": self.total_steps,
                                                 "weights_sha256": self.weights.sha256}}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim, plus the scheduler state. The checkpoint's ``total_steps`` replaces the
        constructor's (the loss-buffer decays were derived from it); weights must be the same file content."""
        extra = state_dict.get("optfit", {}).get("celo") if isinstance(state_dict, dict) else None
        if extra is None:
            if isinstance(state_dict, dict) and state_dict.get("state"):
                raise ValueError(f"load_state_dict: no 'optfit'/'celo' scheduler state in this state dict; it was "
                                 f"not saved by {type(self).__name__}.state_dict()")
            super().load_state_dict(state_dict)
            return
        missing = sorted((set(self._sched) | {"total_steps", "weights_sha256"}) - set(extra))
        if missing:
            raise ValueError(f"load_state_dict: the celo scheduler state lacks {missing}")
        if extra["weights_sha256"] != self.weights.sha256:
            raise ValueError(f"load_state_dict: the checkpoint was made with other weights (sha256 "
                             f"{extra['weights_sha256'][:12]}…) than {self.weights.path} "
                             f"({self.weights.sha256[:12]}…)")
        total_steps = net.check_total_steps(extra["total_steps"])
        super().load_state_dict(state_dict)
        self._sched = {k: extra[k].detach().to(device="cpu", dtype=self._sched[k].dtype).clone() for k in self._sched}
        self.total_steps, self._decays = total_steps, net.loss_decays(total_steps)


class CeloAdam(_CeloBase):
    """Celo-Adam: Adam (β = 0.9, 0.999, ε = 1e-8, bias-corrected) whose learning rate 0.001·lr_mult(t) comes from
    Celo's learned LSTM scheduler (arXiv 2501.12670; weights ``celo_adam_theta.state``).

    ``total_steps`` (N, default 10 000): the planned run length — the scheduler sees t/N, so set it. ``lr``
    (default 1.0): per-group multiplier of the learned rate. ``weights``: path to ``celo_adam_theta.state`` (or a
    folder holding it); when omitted, ``$OPTFIT_CELO_ADAM_WEIGHTS`` (the file) or ``$OPTFIT_CELO_DIR`` (a folder
    holding it) is used. The file is read with msgpack only (no pickle, no JAX) and validated.

    The loss: ``step(closure)`` or ``step(loss=value)``. Options: ``nonfinite`` (also applied to the loss),
    ``state_dtype``, ``grad_filter``, ``impl`` ("auto" / "reference"). State per parameter: ``exp_avg``,
    ``exp_avg_sq`` and torch's ``step``; the scheduler state is global (``state_dict()["optfit"]["celo"]``).
    """

    kind = "celo-adam"

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _apply(self, pending: list, lr_mult: Tensor) -> None:
        rate = K.F32(lr_mult.item()) * K.F32(0.001)  # the original's lr = lr_mult · step_mult, in float32
        b1, b2 = K.F32(0.9), K.F32(0.999)
        for group, ps, gs, sts, c in pending:
            gs = torch._foreach_clamp_max([K.f32(g) for g in gs], 1000.0)
            torch._foreach_clamp_min_(gs, -1000.0)
            ms, vs = [K.f32(st["exp_avg"]) for st in sts], [K.f32(st["exp_avg_sq"]) for st in sts]
            torch._foreach_mul_(ms, float(b1))
            torch._foreach_add_(ms, gs, alpha=float(K.F32(1) - b1))
            torch._foreach_mul_(vs, float(b2))
            torch._foreach_addcmul_(vs, gs, gs, value=float(K.F32(1) - b2))
            for st, m, v in zip(sts, ms, vs):
                if m is not st["exp_avg"]:
                    st["exp_avg"].copy_(m), st["exp_avg_sq"].copy_(v)
            if group["lr"] == 0:
                continue
            t = K.F32(c["step"])
            bc1, bc2 = K.F32(1) - b1 ** t, K.F32(1) - b2 ** t
            denom = torch._foreach_div(vs, float(bc2))
            torch._foreach_add_(denom, 1e-10)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, 1e-8)
            # θ ← θ − lr · rate · (m / bc1) / denom
            torch._foreach_addcdiv_(ps, ms, denom, value=-float(rate / bc1) * group["lr"])


class Celo(_CeloBase):
    """Celo: a meta-learned per-element MLP update rule (30 features → 4 → 4 → (direction, magnitude)) scaled by
    the parameter RMS and by Celo's learned LSTM scheduler (arXiv 2501.12670; weights ``celo_theta.state``).

    ``total_steps`` (N, default 10 000): the planned run length — the scheduler sees t/N, so set it. ``lr``
    (default 1.0): per-group multiplier of the learned step. ``weights``: path to ``celo_theta.state`` (or a
    folder holding it); when omitted, ``$OPTFIT_CELO_WEIGHTS`` (the file) or ``$OPTFIT_CELO_DIR`` (a folder
    holding it) is used. The file is read with msgpack only (no pickle, no JAX) and validated.

    The loss: ``step(closure)`` or ``step(loss=value)``. The step is relative to √(mean(θ²) + 1e-9) of each
    tensor, so a tensor initialised at exactly zero starts with tiny steps (~1e-6 and growing). Options:
    ``nonfinite`` (also applied to the loss), ``state_dtype``, ``grad_filter``, ``impl``:

    * "auto" / "reference" (eager): features and MLP in float32 over all tensors at once, in chunks of about
      ``chunk_size`` elements (whole tensors); a float32 workspace of 26 × max(chunk, largest tensor) elements
      is kept between steps.
    * "compiled": the same maths (equal up to float32 rounding) as two ``torch.compile`` graphs over all the
      step's tensors (``_celo_compiled``): a reduction pass (accumulators, feature normalisers) and one fused
      pass (features → MLP → θ), no workspace; 2.5–3× faster than eager on one CPU thread (MLPs of 1 M and
      51 k parameters, ``benchmarks/celo_step.py``). lr and lr_mult are passed as tensors, so changing them
      does not recompile; a new set of parameter shapes does (so does a step where some parameter has no
      gradient, once). A cold compile costs 10–15 s per parameter tensor on a busy 2-core CPU: worth it for
      long runs only.

    State per parameter (decay axis first): ``momentum`` (3, *shape), ``second_moment`` (shape),
    ``factored_row``/``factored_col`` (3, …) for ≥2-D tensors or ``factored_diag`` (3, *shape) otherwise, and
    torch's ``step``; the scheduler state is global (``state_dict()["optfit"]["celo"]``).
    """

    kind = "celo"
    chunk_size: ClassVar[int] = 1 << 18
    IMPLS: ClassVar[tuple[str, ...]] = ("auto", "reference", "compiled")

    def _state_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum", "second_moment", "factored_row", "factored_col", "factored_diag")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["momentum"] = p.new_zeros((3, *p.shape))
        state["second_moment"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        if p.ndim >= 2:
            d1, d0 = K.factored_dims(p.shape)
            state["factored_row"] = p.new_zeros((3, *(s for i, s in enumerate(p.shape) if i != d0)))
            state["factored_col"] = p.new_zeros((3, *(s for i, s in enumerate(p.shape) if i != d1)))
        else:
            state["factored_diag"] = p.new_zeros((3, *p.shape))

    def _buffers(self, device: torch.device, numel: int) -> tuple[tuple[Tensor, ...], Tensor]:
        """The MLP weights on ``device`` and a workspace of at least ``numel`` float32 (kept: page faults on
        fresh large allocations cost more than the maths)."""
        cache = self._device_cache.setdefault(device, {})
        ws = cache.get("workspace")
        if ws is None or ws.numel() < numel:
            ws = cache["workspace"] = torch.empty(numel, dtype=torch.float32, device=device)
        return self._mlp(device), ws

    def _mlp(self, device: torch.device) -> tuple[Tensor, ...]:
        cache = self._device_cache.setdefault(device, {})
        if "mlp" not in cache:
            cache["mlp"] = K.prepare_mlp(self.weights.mlp, device)
        return cache["mlp"]

    def _apply(self, pending: list, lr_mult: Tensor) -> None:
        items = [(group["lr"], p, g, st) for group, ps, gs, sts, _ in pending if group["impl"] != "compiled"
                 for p, g, st in zip(ps, gs, sts)]
        compiled = [(group["lr"], p, g, st) for group, ps, gs, sts, _ in pending if group["impl"] == "compiled"
                    for p, g, st in zip(ps, gs, sts)]
        if compiled:
            self._apply_compiled(compiled, lr_mult)
        chunks: list[list] = []
        size = 0
        for item in items:
            if not chunks or size + item[1].numel() > self.chunk_size or item[1].device != chunks[-1][0][1].device:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += item[1].numel()
        for chunk in chunks:
            n = sum(p.numel() for _, p, _, _ in chunk)
            mlp, ws = self._buffers(chunk[0][1].device, (K.N_DENSE + 8) * n)
            K.celo_chunk(chunk, lr_mult, mlp, ws)

    def _apply_compiled(self, items: list, lr_mult: Tensor) -> None:
        """``impl="compiled"``: ``_celo_compiled.celo_prepare`` then ``celo_apply``, each under ``torch.compile``,
        one call per device; every number is passed as a tensor (changing lr or lr_mult does not recompile)."""
        prepare, apply = _compiled(type(self), C.celo_prepare), _compiled(type(self), C.celo_apply)
        # parameter order, not bucket order (buckets split by step count once a parameter has skipped a step):
        # the same set of tensors must reach the graphs in the same order, or they recompile
        known = (self.state.get(p) for g in self.param_groups for p in g["params"])  # .get adds no empty entry
        rank = {id(st): i for i, st in enumerate(known) if st is not None}
        items = sorted(items, key=lambda item: rank[id(item[3])])
        by_device: dict[torch.device, list] = {}
        for item in items:
            by_device.setdefault(item[1].device, []).append(item)
        for device, its in by_device.items():
            cache = self._device_cache.setdefault(device, {})
            if "packed" not in cache:
                cache["packed"] = C.pack_mlp(self._mlp(device))
            ps, gs = [p for _, p, _, _ in its], [g for _, _, g, _ in its]
            states = [(st["momentum"], st["second_moment"], *((st["factored_row"], st["factored_col"])
                       if "factored_row" in st else (st["factored_diag"], None))) for _, _, _, st in its]
            lrs = torch.tensor([0.001 * lr for lr, _, _, _ in its], dtype=torch.float32, device=device)
            rate = lr_mult.to(device=device, dtype=torch.float32)
            apply(ps, gs, states, cache["packed"], prepare(ps, gs, states, cache["packed"], rate, lrs))


_COMMON = dict(family="learned", needs_closure=True, supports_cautious=False, supports_complex=False,
               supports_foreach=False)
register(OptimizerInfo(
    name="celo", cls=Celo, paper="arXiv:2501.12670", state_tensors=4,
    description="learned (released weights): per-element MLP update × param RMS × learned LSTM lr schedule; "
                "needs total_steps and the loss",
    test_hparams={"total_steps": 300, "lr": 10.0}, **_COMMON))  # θ = 0 at the start: see the class docstring
register(OptimizerInfo(
    name="celo-adam", cls=CeloAdam, paper="arXiv:2501.12670", state_tensors=2,
    description="learned (released weights): Adam with Celo's learned LSTM lr schedule; needs total_steps and the loss",
    test_hparams={"total_steps": 300}, **_COMMON))
