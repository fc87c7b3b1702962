"""Cross-cutting features, each defined once and used by every elementwise optimizer.

* **Weight decay** (``decay_mode``), with ``η`` the scheduled lr, ``η₀`` the lr the group had when it was added
  to the optimizer (kept in the group as ``"_lr0"``, saved in the state_dict; not ``initial_lr``, which belongs to
  LR schedulers):

  - ``"coupled"``     L2: ``g ← g + λθ`` before any moment update (torch ``Adam``).
  - ``"decoupled"``   ``θ ← θ(1 − ηλ)`` (Loshchilov & Hutter, arXiv 1711.05101; torch ``AdamW``).
  - ``"independent"`` ``θ ← θ(1 − λ·η/η₀)``: follows the schedule's shape but not the lr's magnitude, so λ
    need not be retuned when the peak lr changes (Wortsman et al., arXiv 2309.14322).

* **Cautious masking** (Liang et al., arXiv 2411.16085): with ``s`` the step (``Δθ = −s``) and ``g`` the
  gradient the optimizer saw, ``φ = 1[s ⊙ g > 0]``, ``s ← s ⊙ φ / max(mean(φ), 1e-3)`` per tensor. Weight decay
  is never masked.

* **Gradient filters** (Grokfast, Lee et al., arXiv 2405.20233), applied to the raw gradient before L2 and
  before the optimizer's own maths; ``p.grad`` itself is left untouched:

  - EMA: ``μ ← g`` at the first step, then ``μ ← αμ + (1−α)g``; ``ĝ = g + λμ``.
  - MA:  keep the last ``w`` gradients; ``ĝ = g + λ·mean(window)`` (once the window is full if ``warmup``).

* **Non-finite gradients**: one ``aminmax`` reduction per gradient (exact: NaN propagates, ±inf shows, large
  finite values cannot overflow), done before any parameter or state is touched.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import _validation as V

DECAY_MODES = ("coupled", "decoupled", "independent")
NONFINITE_POLICIES = ("raise", "skip", "ignore")


# ----------------------------------------------------------------------------------------- weight decay
def decay_multiplier(mode: str, lr: float, weight_decay: float, lr0: float) -> float:
    """The factor ``θ`` is multiplied by for the multiplicative decay modes (1.0 when there is none); ``lr0`` is
    the group's η₀ (see the module docstring)."""
    if weight_decay == 0 or mode == "coupled":
        return 1.0
    if mode == "decoupled":
        return 1.0 - lr * weight_decay
    return 1.0 - weight_decay * (lr / lr0 if lr0 > 0 else 0.0)


# ------------------------------------------------------------------------------------------------ caution
def cautious(step: Tensor, grad: Tensor) -> Tensor:
    """Zero the components of ``step`` whose sign disagrees with ``grad``; rescale by ``1/max(mean φ, 1e-3)``."""
    mask = (step * grad > 0).to(step.dtype)
    return step * mask / mask.mean().clamp_min(1e-3)


# ---------------------------------------------------------------------------------------------- non-finite
def first_nonfinite(grads: list[Tensor]) -> int | None:
    """Index of the first gradient holding a NaN or ±inf, or ``None`` when all are finite.

    One ``aminmax`` pass per gradient: it propagates NaN, exposes ±inf, cannot overflow on large finite
    values, and reads each gradient once (≈ 18× cheaper on CPU than ``_foreach_norm(·, inf)``).
    """
    if not grads:
        return None
    extrema = [t.float() for g in grads if g.numel() for t in torch.aminmax(g)]
    if not extrema or bool(torch.isfinite(torch.stack(extrema)).all()):
        return None
    for i, g in enumerate(grads):
        if g.numel() and not bool(torch.isfinite(g).all()):
            return i
    return None  # pragma: no cover - unreachable: some extremum was non-finite


# -------------------------------------------------------------------------------------------- grad filters
FILTER_KINDS = ("ema", "ma")


def grokfast_ema(alpha: float = 0.98, lamb: float = 2.0) -> dict[str, Any]:
    """Config for the Grokfast EMA filter (a plain dict, so it survives ``torch.load(weights_only=True)``)."""
    return check_filter({"kind": "ema", "alpha": alpha, "lamb": lamb})


def grokfast_ma(window: int = 100, lamb: float = 5.0, warmup: bool = True) -> dict[str, Any]:
    """Config for the Grokfast windowed-mean filter (``window`` gradients kept per parameter)."""
    return check_filter({"kind": "ma", "window": window, "lamb": lamb, "warmup": warmup})


def check_filter(cfg: Any) -> dict[str, Any] | None:
    if cfg is None:
        return None
    if isinstance(cfg, str):
        cfg = {"kind": cfg}
    if not isinstance(cfg, dict) or "kind" not in cfg:
        raise ValueError(f"Invalid grad_filter: {cfg!r} (use None, 'ema', 'ma' or optfit.optim.grokfast_ema(...))")
    kind = V.choice("grad_filter['kind']", cfg["kind"], FILTER_KINDS)
    allowed = {"ema": {"kind", "alpha", "lamb"}, "ma": {"kind", "window", "lamb", "warmup"}}[kind]
    extra = set(cfg) - allowed
    if extra:
        raise ValueError(f"Invalid grad_filter keys {sorted(extra)} for kind {kind!r}; accepted: {sorted(allowed)}")
    if kind == "ema":
        out = {"kind": "ema", "alpha": cfg.get("alpha", 0.98), "lamb": cfg.get("lamb", 2.0)}
        V.beta("grad_filter['alpha']", out["alpha"])
    else:
        out = {"kind": "ma", "window": cfg.get("window", 100), "lamb": cfg.get("lamb", 5.0),
               "warmup": cfg.get("warmup", True)}
        V.integer("grad_filter['window']", out["window"], 1)
        V.flag("grad_filter['warmup']", out["warmup"])
    V._num("grad_filter['lamb']", out["lamb"])
    return out


def apply_filter(cfg: dict[str, Any], grad: Tensor, state: dict[str, Tensor]) -> Tensor:
    """Return the filtered gradient, updating the filter's entries in ``state`` (keys ``grokfast_*``)."""
    lamb = cfg["lamb"]
    if cfg["kind"] == "ema":
        mu = state.get("grokfast_ema")
        if mu is None:
            mu = state["grokfast_ema"] = grad.detach().clone()
        else:
            mu.lerp_(grad, 1.0 - cfg["alpha"])
        return grad + lamb * mu
    window = cfg["window"]
    buf = state.get("grokfast_window")
    if buf is None:
        buf = state["grokfast_window"] = grad.new_zeros((window, *grad.shape))
        state["grokfast_count"] = torch.zeros((), dtype=torch.int64)
    count = int(state["grokfast_count"])
    buf[count % window].copy_(grad)
    state["grokfast_count"] += 1
    filled = min(count + 1, window)
    if cfg["warmup"] and filled < window:
        return grad
    return grad + lamb * buf[:filled].mean(dim=0)
