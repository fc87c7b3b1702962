"""Scoring maths for the showdown: pure functions on numbers, no I/O.

Conventions (``docs/benchmark-protocol.md``):

- **AlgoPerf** (Dahl et al. 2023, arXiv 2306.07179; Kasimbeg et al. 2025, arXiv 2502.15015): for submission
  ``s`` and workload ``w`` with time-to-target ``t_{s,w}`` (∞ on a miss), the performance ratio is
  ``r_{s,w} = t_{s,w} / min_s t_{s,w}``; the profile is ``ρ_s(τ) = |{w : r_{s,w} ≤ τ}| / |W|`` and the score
  ``B_s = ∫₁^{r_max} ρ_s(τ) dτ / (r_max − 1)`` with ``r_max = 4``. Because ρ_s is a sum of step functions the
  integral is exact: ``B_s = mean_w max(0, r_max − r_{s,w}) / (r_max − 1)``.
- **Geometric mean** over workloads, where the caller substitutes a miss by ``budget + 1``.
- **Learned optimizers** (VeLO, Celo): speedup = steps the baseline needs to reach the method's final loss /
  the method's steps; final-loss ratio = method's final loss / baseline's; both aggregated by the
  inter-quartile mean (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice").
- **Claims of "faster"**: a workload-stratified bootstrap interval of the geometric-mean time ratio, and an
  exact sign-flip (paired permutation) test of the mean log ratio across workloads.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

INF = math.inf


def _as_array(values: Iterable[float], name: str) -> np.ndarray:
    a = np.asarray([INF if v is None else v for v in values], dtype=float)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} is empty: need at least one value")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN: {a.tolist()}")
    return a


def quantile(values: Iterable[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default method) that also handles ±∞ exactly: an
    interpolation weight of 0 never multiplies an infinity (numpy returns NaN there)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must lie in [0, 1], got {q}")
    a = np.sort(_as_array(values, "values"))
    pos = q * (a.size - 1)
    lo, frac = int(math.floor(pos)), pos - math.floor(pos)
    if frac == 0.0 or a[lo] == a[lo + 1]:
        return float(a[lo])
    return float(a[lo] + frac * (a[lo + 1] - a[lo]))


def median_iqr(values: Iterable[float]) -> tuple[float, float, float]:
    """``(median, 25th percentile, 75th percentile)``; misses may be ``inf``."""
    a = _as_array(values, "values")
    return quantile(a, 0.5), quantile(a, 0.25), quantile(a, 0.75)


def geometric_mean(values: Iterable[float]) -> float:
    """``exp(mean(log v))`` of positive values; ``inf`` if any value is ``inf``."""
    a = _as_array(values, "values")
    if (a <= 0).any():
        raise ValueError(f"geometric_mean needs positive values, got {a.tolist()}")
    if np.isinf(a).any():
        return INF
    return float(np.exp(np.mean(np.log(a))))


def iqm(values: Iterable[float]) -> float:
    """Inter-quartile mean: sort, drop ``floor(n/4)`` values at each end, average the rest
    (as ``scipy.stats.trim_mean(x, 0.25)``). ``n < 4`` drops nothing."""
    a = np.sort(_as_array(values, "values"))
    cut = a.size // 4
    kept = a[cut:a.size - cut]
    if np.isinf(kept).any():
        pos, neg = np.isposinf(kept).any(), np.isneginf(kept).any()
        return math.nan if pos and neg else (INF if pos else -INF)
    return float(kept.mean())


def _times_matrix(times: Mapping[str, Mapping[str, float | None]]) -> tuple[list[str], list[str], np.ndarray]:
    if not isinstance(times, Mapping) or not times:
        raise ValueError("times is empty: need at least one submission with at least one workload")
    labels = list(times)
    workloads = list(times[labels[0]])
    if not workloads:
        raise ValueError(f"times[{labels[0]!r}] is empty: need at least one workload")
    for label in labels:
        if set(times[label]) != set(workloads):
            raise ValueError(f"times[{label!r}] covers workloads {sorted(times[label])}, expected {sorted(workloads)} "
                             "(every submission needs an entry per workload; use inf for a miss)")
    t = np.array([[INF if times[s][w] is None else float(times[s][w]) for w in workloads] for s in labels])
    if np.isnan(t).any() or (t <= 0).any():
        raise ValueError("times must be positive (or inf for a miss), got NaN or a value <= 0")
    return labels, workloads, t


def performance_ratios(times: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float]]:
    """``r_{s,w} = t_{s,w} / min_s t_{s,w}``. ``times[s][w]`` is the time to target (``inf`` or ``None`` for a
    miss). A workload nobody reached gives ``inf`` for everyone."""
    labels, workloads, t = _times_matrix(times)
    best = t.min(axis=0)
    with np.errstate(invalid="ignore"):
        r = np.where(np.isinf(best), INF, t / best)
    return {s: {w: float(r[i, j]) for j, w in enumerate(workloads)} for i, s in enumerate(labels)}


def _ratio_matrix(ratios: Mapping[str, Mapping[str, float]]) -> tuple[list[str], np.ndarray]:
    labels, _, r = _times_matrix(ratios)
    if (r < 1.0 - 1e-12).any():
        raise ValueError("performance ratios must be >= 1 (the best submission has ratio 1)")
    return labels, r


def performance_profile(ratios: Mapping[str, Mapping[str, float]], taus: Sequence[float]) -> dict[str, np.ndarray]:
    """``ρ_s(τ) = |{w : r_{s,w} ≤ τ}| / |W|`` evaluated at each ``τ`` in ``taus``."""
    labels, r = _ratio_matrix(ratios)
    tau = np.asarray(taus, dtype=float)
    return {s: (r[i][None, :] <= tau[:, None]).mean(axis=1) for i, s in enumerate(labels)}


def algoperf_scores(ratios: Mapping[str, Mapping[str, float]], r_max: float = 4.0) -> dict[str, float]:
    """``B_s = ∫₁^{r_max} ρ_s(τ) dτ / (r_max − 1) = mean_w max(0, r_max − r_{s,w}) / (r_max − 1)`` ∈ [0, 1]."""
    if not r_max > 1.0:
        raise ValueError(f"r_max must be > 1, got {r_max}")
    labels, r = _ratio_matrix(ratios)
    return {s: float(np.mean(np.maximum(0.0, r_max - r[i])) / (r_max - 1.0)) for i, s in enumerate(labels)}


def steps_to_reach(steps: Sequence[float], values: Sequence[float], threshold: float,
                   higher_is_better: bool = False) -> float | None:
    """First step whose value meets ``threshold`` (``≥`` if ``higher_is_better`` else ``≤``); ``None`` if never.
    Non-finite values never count as reached."""
    if len(steps) != len(values):
        raise ValueError(f"steps and values differ in length ({len(steps)} vs {len(values)})")
    for s, v in zip(steps, values):
        if v is not None and math.isfinite(v) and (v >= threshold if higher_is_better else v <= threshold):
            return float(s)
    return None


def speedup_vs_baseline(base_steps: Sequence[float], base_values: Sequence[float], method_final: float,
                        method_steps: float) -> tuple[float, bool]:
    """Learned-optimizer speedup for a lower-is-better loss: (first baseline step with loss ≤ the method's final
    loss) / ``method_steps``. Returns ``(speedup, lower_bound)``; if the baseline never gets there the speedup is
    at least (the baseline's last step / ``method_steps``) and ``lower_bound`` is True. A non-finite final loss
    (diverged) gives speedup 0."""
    if not method_steps > 0:
        raise ValueError(f"method_steps must be positive, got {method_steps}")
    if not len(base_steps):
        raise ValueError("base_steps is empty: the baseline has no curve")
    if method_final is None or not math.isfinite(method_final):
        return 0.0, False
    hit = steps_to_reach(base_steps, base_values, method_final)
    if hit is None:
        return float(base_steps[-1]) / method_steps, True
    return hit / method_steps, False


def final_loss_ratio(method_final: float, baseline_final: float) -> float:
    """``method_final / baseline_final`` for a positive lower-is-better loss (``inf`` if the method diverged)."""
    if baseline_final is None or not math.isfinite(baseline_final) or baseline_final <= 0:
        raise ValueError(f"baseline_final must be a positive finite loss, got {baseline_final}")
    if method_final is None or not math.isfinite(method_final):
        return INF
    return method_final / baseline_final


def bootstrap_geomean_ratio(method: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]],
                            n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Geometric mean over workloads of ``median(method[w]) / median(baseline[w])`` with a percentile bootstrap
    interval: each replicate resamples, independently within every workload, the method's and the baseline's
    per-seed times (misses already replaced by ``budget + 1``). Returns ``(point, low, high)``."""
    if not method:
        raise ValueError("method is empty: need per-seed times for at least one workload")
    if set(method) != set(baseline):
        raise ValueError(f"method and baseline cover different workloads: {sorted(method)} vs {sorted(baseline)}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    logs, point = np.zeros(n_boot), 0.0
    for w in method:
        a, b = _as_array(method[w], f"method[{w!r}]"), _as_array(baseline[w], f"baseline[{w!r}]")
        if not (np.isfinite(a).all() and np.isfinite(b).all() and (a > 0).all() and (b > 0).all()):
            raise ValueError(f"times for workload {w!r} must be positive and finite (replace misses by budget + 1)")
        point += math.log(np.median(a) / np.median(b))
        ma = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
        mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
        logs += np.log(ma / mb)
    k = len(method)
    lo, hi = np.quantile(logs / k, [(1 - level) / 2, (1 + level) / 2])
    return math.exp(point / k), float(math.exp(lo)), float(math.exp(hi))


def sign_flip_test(differences: Sequence[float], n_perm: int = 20000, seed: int = 0) -> float:
    """Two-sided paired permutation test of ``mean(d) = 0`` (e.g. ``d_w = log t_method − log t_baseline``):
    the p-value is the share of sign assignments ±d_w whose |mean| is at least the observed one. Exact
    (all 2ⁿ assignments) for n ≤ 16, Monte Carlo with ``n_perm`` draws otherwise."""
    d = _as_array(differences, "differences")
    if not np.isfinite(d).all():
        raise ValueError("differences must be finite")
    observed = abs(d.mean()) - 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_perm, d.size))
    return float(np.mean(np.abs(signs @ d / d.size) >= observed))
