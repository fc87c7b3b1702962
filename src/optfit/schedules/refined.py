"""Schedule refinement from a previous run's gradient norms (Defazio, Cutkosky, Mehta, Mishchenko,
"When, Why and How Much? Adaptive Learning Rate Scheduling by Refinement", arXiv 2310.07831).

From the norms G_1..G_n recorded in a previous run (``GradNormRecorder``):

1. smooth them with a median filter of odd width k = 2⌊⌊τn⌋/2⌋ + 1 (τ = ``smoothing``, 0.1 in the paper's
   figures), the sequence padded with its first value before the start and by reflection after the end
   (the authors' padding: ``median_filter(np.pad(G, (0, 2k), "reflect"), k, mode="nearest")``);
2. weigh each step: w_t = ĝ_t⁻² for SGD (ℓ2 norms, ``norm="l2"``), w_t = ĝ_t⁻¹ for Adam-type optimizers
   (ℓ1 norms, ``norm="l1"``: Adam is steepest descent in ℓ∞, whose dual norm is ℓ1);
3. η_t = w_t · Σ_{p=t+1}^{n} w_p (so η_n = 0), and return η / max η.

With constant norms this is linear decay, the schedule the paper's worst-case analysis finds optimal;
norms that shrink early give a warmup, norms that grow late a faster final decay. The formula is the
authors' released code (``find_closed_form_schedule``: weights[t] · tail_sums[t+1]); note the tail sum is
of the *weights* w_p, not of the squared norms. A new run of T ≠ n steps reads the sequence at t·(n−1)/(T−1)
by linear interpolation (the authors resample with ``np.interp`` the same way). The paper gives no online
variant: refinement needs a finished previous run (the recorder is how optfit keeps one).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import numpy as np
import torch

from .multipliers import check_fraction, check_int

NORMS = ("l2", "l1")


def median_smooth(values: Sequence[float], smoothing: float) -> np.ndarray:
    """The paper's median filter of width 2⌊⌊τn⌋/2⌋ + 1 (module docstring, step 1)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    half = int(smoothing * n) // 2
    if half == 0:
        return x.copy()
    right = np.arange(n, n + half)
    period = 2 * (n - 1)
    if period:  # numpy's "reflect": mirror about the last value, repeatedly if the pad is longer than n
        right = right % period
        right = np.where(right >= n, period - right, right)
    else:
        right = np.zeros(half, dtype=np.int64)
    padded = np.concatenate([np.full(half, x[0]), x, x[right]])
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.median(windows, axis=1)


def refined_weights(norms: Sequence[float], norm: str = "l2", smoothing: float = 0.1) -> list[float]:
    """The refined schedule η / max η over the n recorded steps (module docstring)."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
    smoothing = check_fraction("smoothing", smoothing)
    g = np.asarray(list(norms), dtype=np.float64)
    if g.ndim != 1 or len(g) < 2:
        raise ValueError(f"norms must be a sequence of at least 2 gradient norms, got {len(g)}")
    if not np.all(np.isfinite(g) & (g > 0)):
        raise ValueError("norms must all be finite and positive (GradNormRecorder.norms() leaves out others)")
    w = median_smooth(g, smoothing) ** (-2.0 if norm == "l2" else -1.0)
    tail = np.concatenate([np.cumsum(w[::-1])[::-1][1:], [0.0]])  # tail[t] = Σ_{p>t} w_p
    eta = w * tail
    return (eta / eta.max()).tolist()


def refined(step: int, total_steps: int, weights: Sequence[float]) -> float:
    """The multiplier at ``step`` of a ``total_steps`` run from ``refined_weights(...)`` (interpolated)."""
    t = check_int("step", step, 0)
    total = check_int("total_steps", total_steps, 1)
    if len(weights) < 2:
        raise ValueError(f"weights must hold at least 2 values, got {len(weights)}")
    return _interpolate(t, total, weights)


def _interpolate(t: int, total: int, weights: Sequence[float]) -> float:
    n = len(weights)
    if t >= total:
        return float(weights[-1])
    x = t * (n - 1) / (total - 1) if total > 1 else 0.0
    i = min(int(x), n - 1)
    if i == n - 1:
        return float(weights[-1])
    return float(weights[i] + (x - i) * (weights[i + 1] - weights[i]))


class GradNormRecorder:
    """Records the ℓ2 and ℓ1 norm of all gradients (every parameter of every group) at each optimizer step.

    Registered with ``optimizer.register_step_post_hook``, so it sees the gradients the step used, also
    those an optimizer's closure computed inside ``step``. The norms stay on the device until read (no
    synchronisation per step; one every ``FLUSH_EVERY`` steps). ``state_dict()`` / ``load_state_dict()``
    keep them with a checkpoint; ``remove()`` detaches the hook.
    """

    FLUSH_EVERY = 1024

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._values: list[list[float]] = []  # [l2, l1] per step
        self._pending: list[torch.Tensor] = []
        self._handle = optimizer.register_step_post_hook(self._record)

    def _record(self, optimizer, args, kwargs) -> None:
        per_device: dict[torch.device, list[torch.Tensor]] = {}
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad.coalesce().values() if p.grad.is_sparse else p.grad
                    g = g.abs() if g.is_complex() else g
                    dtype = torch.promote_types(g.dtype, torch.float32)
                    per_device.setdefault(g.device, []).append(torch.stack([
                        torch.linalg.vector_norm(g, 2, dtype=dtype) ** 2, torch.linalg.vector_norm(g, 1, dtype=dtype)]))
        sums = []
        for pairs in per_device.values():
            acc = torch.float64 if any(v.dtype == torch.float64 for v in pairs) else torch.float32
            sums.append(torch.stack([v.to(acc) for v in pairs]).sum(0))
        if len(sums) == 1:
            self._pending.append(sums[0])
        else:  # no gradient at all (recorded as 0), or parameters on several devices
            self._pending.append(sum((s.cpu().double() for s in sums), torch.zeros(2, dtype=torch.float64)))
        if len(self._pending) >= self.FLUSH_EVERY:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            device = self._pending[0].device
            if any(t.device != device for t in self._pending):
                device = torch.device("cpu")
            dtype = torch.float32 if device.type == "mps" else torch.float64
            stacked = torch.stack([t.to(device, dtype) for t in self._pending]).cpu()
            for sq, l1 in stacked.tolist():
                self._values.append([math.sqrt(sq), l1])
            self._pending.clear()

    def norms(self, norm: str = "l2", finite_only: bool = True) -> list[float]:
        """The recorded ``"l2"`` or ``"l1"`` norms in step order; with ``finite_only`` steps whose norm is
        not finite and positive (skipped non-finite steps, steps without gradients) are left out."""
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")
        self._flush()
        col = [v[NORMS.index(norm)] for v in self._values]
        return [v for v in col if math.isfinite(v) and v > 0] if finite_only else col

    def __len__(self) -> int:
        return len(self._values) + len(self._pending)

    def state_dict(self) -> dict[str, list[float]]:
        self._flush()
        return {"l2": [v[0] for v in self._values], "l1": [v[1] for v in self._values]}

    def load_state_dict(self, state_dict: dict[str, list[float]]) -> None:
        l2, l1 = list(state_dict["l2"]), list(state_dict["l1"])
        if len(l2) != len(l1) or not all(isinstance(v, numbers.Real) for v in l2 + l1):
            raise ValueError("state_dict must hold equally long lists of numbers under 'l2' and 'l1'")
        self._pending.clear()
        self._values = [[float(a), float(b)] for a, b in zip(l2, l1)]

    def remove(self) -> None:
        """Stop recording (the norms recorded so far stay readable)."""
        self._handle.remove()
