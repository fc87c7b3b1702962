"""torch's own fused kernels as the default path of Adam, AdamW, AMSGrad, SGD and Adagrad, and the fast
non-finite gradient check every elementwise optimizer runs before it modifies anything.

**Fused steps.** ``torch._fused_adam_`` / ``_fused_adamw_`` / ``_fused_sgd_`` / ``_fused_adagrad_`` (all four on
CPU in torch 2.13; :func:`has_kernel` asks the dispatcher and the op's schema, so a torch or device without one
keeps the existing path) compute, per element and in one pass over θ, g and the state, the same
update as the reference kernels of :mod:`optfit.optim.adam`, :mod:`~optfit.optim.sgd` and
:mod:`~optfit.optim.adagrad`:

* Adam: ``m ← lerp(m, g, 1−β₁)``, ``v ← β₂v + (1−β₂)g²``, ``v̂ = max(v_max, v)`` (amsgrad) or ``v``,
  ``θ ← θ·(1 − ηλ) − η/(1−β₁ᵗ) · m / (√v̂/√(1−β₂ᵗ) + ε)``; coupled decay is ``g ← g + λθ`` inside the kernel
  (``_fused_adam_``), decoupled decay the factor (``_fused_adamw_``); the bias corrections use each tensor's own
  ``step`` (read from the state tensor), in double precision as optfit's ``_coefficients`` do.
* SGD: ``g ← g + λθ``; ``b ← g`` at a tensor's first step, else ``b ← μb + (1−τ)g``; ``d = g + μb`` (Nesterov),
  ``b`` or ``g``; ``θ ← θ − ηd``. The first step is per tensor (optfit's ``step`` = 1), so a group is split
  into first-step and later tensors.
* Adagrad: ``g ← g + λθ``; ``s ← s + g²``; ``θ ← θ − η/(1 + (t−1)·lr_decay) · g/(√s + ε)``.

The results agree with the reference kernels to float rounding (the order of a few multiplications differs),
not bit for bit. ``maximize`` needs nothing here: the base class hands the kernels −g already. A group runs
fused only where the maths coincide: float32 or float64 real parameters with gradients of the same dtype,
contiguous parameters, gradients and state, scalar hyperparameters (``lr`` may be a CPU 0-d tensor), no
``cautious``, no ``grad_filter``, and a decay the kernel expresses (coupled, decoupled for Adam, or none;
never "independent" with λ > 0). Everything else takes the existing path. ``impl="auto"`` picks the fused
kernels on the devices in :data:`AUTO_DEVICES` (the CPU: the only device these tests have run on);
``impl="fused"`` also on any other device whose dispatcher has the kernel, and falls back like "auto" where the
maths are not expressible.

The ``step`` counters of a fused group are 0-d views of one float32 buffer, advanced by one op
(:func:`advance_steps`).

**The non-finite check** (:func:`all_finite`) must read every gradient before any parameter moves, so it is a
pass of its own: one more read of 4 bytes per parameter, against the 16 bytes an Adam step reads (8 for plain
SGD). On a CPU whose step is bound by read bandwidth that is ~20–25 % of an Adam step and ~35 % of an SGD step
whatever the reduction (sum, aminmax, max, dot and the foreach check all read at the same ~20 GB/s per core
here); only moving the check out of the step (e.g. into a post-accumulate-grad hook, while the gradient is
still in cache) or into the kernel could go below. It sums each large gradient (a sum is finite only if every
element is: NaN propagates, ±inf shows; an overflow of large finite values gives a false alarm, which the
exact per-tensor check in the caller then clears) and checks all small gradients of one device and dtype in
one call of ``torch._amp_foreach_non_finite_check_and_unscale_`` with scale 1 (one call instead of one
reduction per tensor: 3× cheaper on a 10-tensor model; it writes each value back unchanged, so it is used only
on dense gradients that carry no autograd graph). One host synchronisation in all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# where impl="auto" runs the fused kernels (add "cuda" once tests/optim/test_fused.py has passed there)
AUTO_DEVICES = frozenset({"cpu"})
FUSED_DTYPES = (torch.float32, torch.float64)
# below this many elements a gradient joins the one-call foreach check; above it a sum per tensor is cheaper
# (the foreach check writes the values back, ~25 % more memory traffic; measured on CPU)
SMALL_GRAD = 1 << 16
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "xpu": "XPU", "mps": "MPS"}
_HAS_KERNEL: dict[tuple[str, str], bool] = {}
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_AMP_CHECK = "_amp_foreach_non_finite_check_and_unscale_"


# the keyword arguments passed to each op: an older torch whose schema lacks one keeps the existing path
_KWARGS = {
    "_fused_adam_": {"lr", "beta1", "beta2", "weight_decay", "eps", "amsgrad", "maximize"},
    "_fused_adamw_": {"lr", "beta1", "beta2", "weight_decay", "eps", "amsgrad", "maximize"},
    "_fused_sgd_": {"weight_decay", "momentum", "lr", "dampening", "nesterov", "maximize", "is_first_step"},
    "_fused_adagrad_": {"lr", "lr_decay", "weight_decay", "eps", "maximize"},
}


def has_kernel(op: str, device_type: str) -> bool:
    """Whether this torch has ``torch.<op>``, with the arguments used here and a kernel for ``device_type``
    (cached)."""
    key = (op, device_type)
    found = _HAS_KERNEL.get(key)
    if found is None:
        dispatch, name = _DISPATCH_KEYS.get(device_type), f"aten::{op}"
        found = bool(dispatch and hasattr(torch, op) and torch._C._dispatch_has_kernel_for_dispatch_key(name, dispatch)
                     and any(_KWARGS.get(op, set()) <= {a.name for a in schema.arguments}
                             for schema in torch._C._jit_get_schemas_for_operator(name)))
        _HAS_KERNEL[key] = found
    return found


def _number(x: Any) -> float | None:
    """A hyperparameter as a float for the kernel: Python numbers and CPU one-element tensors, else ``None``."""
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return float(x)
    if isinstance(x, Tensor) and x.numel() == 1 and x.device.type == "cpu" and not x.is_complex():
        return float(x.item())
    return None


# ------------------------------------------------------------------------------------------- the plans
def _adam_op(group: dict[str, Any], decay: float) -> str | None:
    mode = group["decay_mode"]
    if decay == 0 or mode == "coupled":
        return "_fused_adam_"
    return "_fused_adamw_" if mode == "decoupled" else None


def _coupled_op(name: str) -> Callable[[dict[str, Any], float], str | None]:
    return lambda group, decay: name if decay == 0 or group["decay_mode"] == "coupled" else None


_OPS = {"adam": _adam_op, "sgd": _coupled_op("_fused_sgd_"), "adagrad": _coupled_op("_fused_adagrad_")}
_HPARAMS = {"adam": ("lr", "eps", "weight_decay"), "sgd": ("lr", "momentum", "dampening", "weight_decay"),
            "adagrad": ("lr", "lr_decay", "eps", "weight_decay")}


def plan(kind: str, group: dict[str, Any], items: list) -> tuple[str, dict[str, float]] | None:
    """``(op name, scalar hyperparameters)`` when this group's step can run in torch's fused kernel, else
    ``None``; ``items`` are the base class's ``(index, param, working gradient)``. Cheap: run every step."""
    impl = group["impl"]
    if impl not in ("auto", "fused") or group["cautious"] or group["grad_filter"] is not None or not items:
        return None
    hp = {}
    for key in _HPARAMS[kind]:
        value = _number(group.get(key, 0.0))
        if value is None:
            return None
        hp[key] = value
    if kind == "adam":
        b1, b2 = (_number(b) for b in group["betas"])
        if b1 is None or b2 is None:
            return None
        hp["beta1"], hp["beta2"] = b1, b2
    op = _OPS[kind](group, hp["weight_decay"])
    if op is None:
        return None
    on_cpu = True
    for _, p, g in items:  # (torch refuses a p.grad of another device, dtype or shape than p)
        if p.dtype not in FUSED_DTYPES or g.dtype is not p.dtype or not p.is_contiguous() or not g.is_contiguous():
            return None
        on_cpu = on_cpu and p.is_cpu
    for device_type in ("cpu",) if on_cpu else {p.device.type for _, p, _ in items}:
        if (impl == "auto" and device_type not in AUTO_DEVICES) or not has_kernel(op, device_type):
            return None
    return op, hp


def states_ok(params: list[Tensor], states: list[dict[str, Any]], keys: tuple[str, ...]) -> bool:
    """The state tensors the kernel writes are dense, of the parameter's dtype and device (they are, unless a
    checkpoint brought others: then the existing path runs)."""
    for p, st in zip(params, states):
        for k in keys:
            t = st[k]
            if t.dtype is not p.dtype or t.device != p.device or not t.is_contiguous():
                return False
    return True


def _by_device_dtype(n: int, params: list[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype), one list when they share both (the usual case)."""
    first = params[0]
    if all(p.device == first.device and p.dtype is first.dtype for p in params):
        return [list(range(n))]
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return list(groups.values())


def advance_steps(opt: Any, group: dict[str, Any], states: list[dict[str, Any]]) -> Tensor | None:
    """Add 1 to every ``state["step"]`` of the group's stepped parameters with one op, and return the counts
    (a float32 CPU tensor), or ``None`` where they were advanced one by one.

    ``torch._foreach_add_`` on n 0-d CPU tensors costs ~2.5 µs each (25 µs of a 10-tensor model's step).
    So, as gap's flat path does for its state, the entries are made 0-d *views* of one float32 buffer per
    group (``state_dict`` keeps torch's format: a float32 0-d tensor per parameter) and the buffer is advanced
    in one op. The buffer is rebuilt (values copied) whenever the entries are not its views: at the first
    step, after ``load_state_dict``, or when another set of parameters has gradients."""
    steps = [st["step"] for st in states]
    cache = opt.__dict__.setdefault("_fused_step_buffers", {})
    key = id(group["params"])  # (wrappers may pass a copy of the group dict; it shares the params list)
    entry = cache.get(key)
    if entry is not None and len(entry[0]) == len(steps) and all(a is b for a, b in zip(entry[0], steps)):
        return entry[1].add_(1.0)
    if not all(isinstance(t, Tensor) and t.dtype is torch.float32 and t.dim() == 0 and t.is_cpu for t in steps):
        torch._foreach_add_(steps, 1.0)
        return None
    buffer = torch.stack(steps).add_(1.0)
    views = buffer.unbind(0)
    for st, view in zip(states, views):
        st["step"] = view
    if len(cache) > 2 * len(opt.param_groups):  # entries of groups (or lists) that are gone
        cache.clear()
    cache[key] = (views, buffer)
    return buffer


def _device_steps(states: list[dict[str, Any]], device: torch.device) -> list[Tensor]:
    """The kernels read each tensor's ``step``: on CPU the state's float32 0-d tensors themselves, on another
    device one copy of them all (optfit keeps ``step`` on the CPU, as torch.optim does for non-fused paths)."""
    steps = [st["step"] for st in states]
    if device.type == "cpu":
        return steps
    return list(torch.stack(steps).to(device).unbind(0))


def step(opt: Any, kind: str, op: str, hp: dict[str, float], group: dict[str, Any], params: list[Tensor],
         grads: list[Tensor], states: list[dict[str, Any]]) -> None:
    """One fused step of a group: the ``step`` counters are advanced here, then ``torch.<op>`` moves the
    parameters and state in place."""
    counts = advance_steps(opt, group, states)
    fn = getattr(torch, op)  # looked up per call, so a test can spy on it
    for idx in _by_device_dtype(len(params), params):
        ps = params if len(idx) == len(params) else [params[i] for i in idx]
        gs = grads if len(idx) == len(params) else [grads[i] for i in idx]
        sts = states if len(idx) == len(params) else [states[i] for i in idx]
        if kind == "adam":
            amsgrad = bool(group["amsgrad"])
            fn(ps, gs, [st["exp_avg"] for st in sts], [st["exp_avg_sq"] for st in sts],
               [st["max_exp_avg_sq"] for st in sts] if amsgrad else [],
               _device_steps(sts, ps[0].device), lr=hp["lr"], beta1=hp["beta1"],
               beta2=hp["beta2"], weight_decay=hp["weight_decay"], eps=hp["eps"], amsgrad=amsgrad, maximize=False)
        elif kind == "adagrad":
            fn(ps, gs, [st["sum"] for st in sts], _device_steps(sts, ps[0].device),
               lr=hp["lr"], lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"], eps=hp["eps"], maximize=False)
        else:
            counts_here = counts if counts is not None and len(idx) == len(params) else None
            _sgd(fn, hp, group, ps, gs, sts, counts_here)


def _sgd(fn: Callable, hp: dict[str, float], group: dict[str, Any], ps: list[Tensor], gs: list[Tensor],
         sts: list[dict[str, Any]], counts: Tensor | None) -> None:
    kwargs = dict(weight_decay=hp["weight_decay"], momentum=hp["momentum"], lr=hp["lr"],
                  dampening=hp["dampening"], nesterov=bool(group["nesterov"]), maximize=False)
    if hp["momentum"] == 0:
        fn(ps, gs, [], is_first_step=False, **kwargs)
        return
    counts = torch.stack([st["step"] for st in sts]) if counts is None else counts
    first = [s == 1.0 for s in counts.tolist()]
    for is_first in (True, False):
        idx = [i for i, f in enumerate(first) if f is is_first]
        if not idx:
            continue
        if len(idx) == len(ps):
            fn(ps, gs, [st["momentum_buffer"] for st in sts], is_first_step=is_first, **kwargs)
        else:
            fn([ps[i] for i in idx], [gs[i] for i in idx], [sts[i]["momentum_buffer"] for i in idx],
               is_first_step=is_first, **kwargs)


# ------------------------------------------------------------------------------------- non-finite check
_ONES: dict[torch.device, Tensor] = {}


def _sum(g: Tensor) -> Tensor:
    return g.sum(dtype=torch.float32) if g.dtype in _LOW_PRECISION else g.sum()


def _same_device_and_dtype(tensors: list[Tensor]) -> list[list[Tensor]]:
    if not tensors:
        return []
    first = tensors[0]
    if all(t.dtype is first.dtype for t in tensors) and (first.is_cpu and all(t.is_cpu for t in tensors)):
        return [tensors]
    groups: dict[tuple, list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def all_finite(grads: list[Tensor]) -> bool:
    """``True`` when no gradient holds a NaN or ±inf; ``False`` may be a false alarm (an overflowing sum), which
    the caller clears with the exact per-tensor check (``_features.first_nonfinite``)."""
    sums: list[Tensor] = []
    small: list[Tensor] = []
    for g in grads:
        n = g.numel()
        if n and n < SMALL_GRAD and not g.requires_grad and g.is_contiguous():
            small.append(g)
        elif n:
            sums.append(_sum(g))
    flags = []
    for gs in _same_device_and_dtype(small):
        device = gs[0].device
        if not has_kernel(_AMP_CHECK, device.type):
            sums += [_sum(g) for g in gs]
            continue
        found = torch.zeros((), dtype=torch.float32, device=device)
        one = _ONES.get(device)
        if one is None:
            one = _ONES[device] = torch.ones((), dtype=torch.float32, device=device)
        torch._amp_foreach_non_finite_check_and_unscale_(gs, found, one)
        flags.append(found)
    if not sums:
        return all(f.item() == 0 for f in flags)
    # found ∈ {0, 1} → 1/(found − 1) ∈ {−1, inf}: finite exactly when nothing was found, like the sums
    values = sums + [f.sub_(1).reciprocal_() for f in flags]
    if len(values) == 1:
        return bool(values[0].isfinite())
    if len({t.device for t in values}) > 1:
        return all(bool(t.isfinite()) for t in values)
    if len({t.dtype for t in values}) > 1:
        values = [t.double() for t in values]
    return bool(torch.stack(values).isfinite().all())
