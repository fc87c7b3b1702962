"""``torch.optim.lr_scheduler.LRScheduler`` subclasses for the multipliers of ``multipliers.py`` and ``refined.py``.

Each group's lr after t steps is  base_lr · m(t) · c,  base_lr = ``initial_lr`` (set by torch's LRScheduler,
as for every torch scheduler), m = the schedule's multiplier, and c = the product of every change made to
``group["lr"]`` from outside between two of this scheduler's steps (another scheduler in a
``ChainedScheduler``, ``ReduceLROnPlateau``, a hand edit): c = 1 when nothing else touches the lr, so the lr is
then exactly base_lr · m(t), as with ``LambdaLR``. A scheduler built after another one on the same optimizer
starts with c = group["lr"] / base_lr, so chained multipliers multiply. ``step(epoch)`` (torch's closed form,
which ``SequentialLR`` uses at its milestones) sets c = 1.

Checkpoints: as for torch's schedulers, save the optimizer's and the scheduler's ``state_dict``; loading
both continues bit-for-bit. Loading only the scheduler's state also continues exactly: an optimizer whose lrs
are still those this scheduler set (a fresh one) gets the checkpoint's lrs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from . import multipliers as M
from .refined import GradNormRecorder, _interpolate, refined_weights


def _ratio(now, before) -> float:
    now, before = float(now), float(before)
    return 1.0 if now == before or before == 0.0 else now / before


def _set_lr(group: dict[str, Any], value) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(float(value))
    else:
        group["lr"] = value


class Schedule(LRScheduler):
    """Base class: subclasses set their arguments, then call ``super().__init__``, and define ``multiplier``."""

    def multiplier(self, step: int) -> float:
        """m(step), ``step`` = number of optimizer steps taken."""
        raise NotImplementedError

    def get_lr(self) -> list:
        if not self._get_lr_called_within_step:
            warnings.warn("To get the last learning rate computed by the scheduler, please use `get_last_lr()`.",
                          UserWarning, stacklevel=2)
        groups = self.optimizer.param_groups
        previous = getattr(self, "_last_lr", None)
        if previous is None:
            start = self.last_epoch == 0
            self._outside = [_ratio(g["lr"], b) if start else 1.0 for g, b in zip(groups, self.base_lrs)]
        else:
            self._outside = [c * _ratio(g["lr"], p) for c, g, p in zip(self._outside, groups, previous)]
        m = self.multiplier(self.last_epoch)
        return [b * m * c for b, c in zip(self.base_lrs, self._outside)]

    def _get_closed_form_lr(self) -> list:
        self._outside = [1.0] * len(self.base_lrs)
        m = self.multiplier(self.last_epoch)
        return [b * m for b in self.base_lrs]

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        groups = self.optimizer.param_groups
        own = getattr(self, "_last_lr", None)
        untouched = own is not None and all(float(g["lr"]) == float(v) for g, v in zip(groups, own))
        super().load_state_dict(state_dict)
        if untouched:
            for g, v in zip(groups, self._last_lr):
                _set_lr(g, v)


class _WarmupDecay(Schedule):
    """Linear warmup over ``warmup_steps``, then ``shape`` from 1 to ``final`` at ``total_steps``."""

    shape: staticmethod

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 final: float = 0.0, last_epoch: int = -1) -> None:
        self.total_steps, self.warmup_steps = M.check_warmup(total_steps, warmup_steps)
        self.final = M.check_fraction("final", final)
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        return type(self).shape(step, self.total_steps, self.warmup_steps, self.final)


class WarmupCosine(_WarmupDecay):
    """Linear warmup over ``warmup_steps``, then cosine from 1 to ``final`` at ``total_steps``."""

    shape = staticmethod(M._cosine)


class WarmupLinear(_WarmupDecay):
    """Linear warmup over ``warmup_steps``, then linear decay from 1 to ``final`` (default 0) at ``total_steps``."""

    shape = staticmethod(M._linear)


class WSD(Schedule):
    """Warmup–stable–decay: warmup, 1, then the last round(decay_fraction · total_steps) steps decay to ``final``
    with ``decay_shape`` "linear", "cosine" or "sqrt" (1 − √s, arXiv 2405.18392; the default)."""

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                 decay_fraction: float = 0.2, decay_shape: str = "sqrt", final: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.total_steps, self.warmup_steps = M.check_warmup(total_steps, warmup_steps)
        self.decay_fraction = M.check_fraction("decay_fraction", decay_fraction)
        self.decay_steps = M.decay_steps(self.total_steps, self.warmup_steps, self.decay_fraction)
        self.decay_shape = M.check_decay_shape(decay_shape)
        self.final = M.check_fraction("final", final)
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        return M._wsd(step, self.total_steps, self.warmup_steps, self.decay_steps, self.decay_shape, self.final)


class Constant(Schedule):
    """Linear warmup over ``warmup_steps``, then the base lr."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_steps: int = 0, last_epoch: int = -1) -> None:
        self.warmup_steps = M.check_int("warmup_steps", warmup_steps, 0)
        super().__init__(optimizer, last_epoch)

    def multiplier(self, step: int) -> float:
        return M._constant(step, self.warmup_steps)


class Refined(Schedule):
    """The schedule refined from a previous run's gradient norms (arXiv 2310.07831; ``refined.py``).

    ``norm="l2"`` (SGD: w = ĝ⁻²) or ``"l1"`` (Adam-type: w = ĝ⁻¹, pass ℓ1 norms); ``total_steps`` defaults to
    the number of recorded norms, otherwise the schedule is stretched to it by linear interpolation.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, norms: Sequence[float], total_steps: int | None = None,
                 norm: str = "l2", smoothing: float = 0.1, last_epoch: int = -1) -> None:
        self.weights = refined_weights(norms, norm=norm, smoothing=smoothing)
        self.norm, self.smoothing = norm, float(smoothing)
        self.total_steps = len(self.weights) if total_steps is None else M.check_int("total_steps", total_steps, 1)
        super().__init__(optimizer, last_epoch)

    @classmethod
    def from_recorder(cls, optimizer: torch.optim.Optimizer, recorder: GradNormRecorder,
                      total_steps: int | None = None, norm: str = "l2", smoothing: float = 0.1,
                      last_epoch: int = -1) -> "Refined":
        """Refine from a ``GradNormRecorder`` of a previous run (its finite, positive ``norm`` norms)."""
        return cls(optimizer, recorder.norms(norm), total_steps, norm, smoothing, last_epoch)

    def multiplier(self, step: int) -> float:
        return _interpolate(step, self.total_steps, self.weights)
