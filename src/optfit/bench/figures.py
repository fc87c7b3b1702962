"""Report figures as PNG bytes. Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend
switch, no display needed). Every figure has labelled axes and a legend. Colours mean one thing across the whole
report: an optimizer keeps its colour in every figure (``colors``; also on the tick labels that name it), a
workload its colour and marker (``workload_styles``), a gap candidate its colour (``candidate_colors``, a
sequential map ordered by the candidate's value); the three palettes do not overlap."""

from __future__ import annotations

import functools
import io
import math
from collections import defaultdict

import numpy as np

from .records import TrialResult
from .summary import Summary, curve_band

try:  # matplotlib is an optional dependency of the report only
    import matplotlib
    import matplotlib.colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
except ImportError as exc:  # pragma: no cover - exercised only without matplotlib
    raise ImportError("the showdown report needs matplotlib: pip install matplotlib") from exc

_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22",
            "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]
_WORKLOAD_PALETTE = ["#4d4d4d", "#a6761d", "#666699", "#1b9e77", "#e7298a", "#999933", "#66a61e", "#7570b3",
                     "#b15928", "#6a3d9a", "#33a02c", "#fb9a99"]
_MARKERS = "osD^vP*Xh<>p"
_BASE = {"figure.dpi": 100, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8}


def colors(summary: Summary) -> dict[str, str]:
    """A fixed colour per label; the baseline is black."""
    out, i = {}, 0
    for lab in summary.labels:
        if lab == summary.baseline:
            out[lab] = "#000000"
        else:
            out[lab] = _PALETTE[i % len(_PALETTE)]
            i += 1
    return out


def workload_styles(summary: Summary) -> dict[str, tuple[str, str]]:
    """A fixed (colour, marker) per workload, in the order of the workload table."""
    return {w: (_WORKLOAD_PALETTE[j % len(_WORKLOAD_PALETTE)], _MARKERS[j % len(_MARKERS)])
            for j, w in enumerate(summary.meta)}


def candidate_colors(summary: Summary) -> dict[str, str]:
    """A fixed colour per gap candidate (e.g. a momentum β) over every selection history in the summary: the
    same candidate has the same colour in every selection figure, candidates ordered by value on viridis."""
    found: set[str] = set()
    for per in summary.groups.values():
        for trials in per.values():
            for r in trials:
                try:
                    found.update(_key(v) for _, sel in parse_selection(r.extras["selection"]) for g in sel for v in g)
                except (KeyError, ValueError, TypeError):
                    continue
    keys = sorted(found, key=_order)
    cmap = matplotlib.colormaps["viridis"]
    return {k: matplotlib.colors.to_hex(cmap(0.9 * i / max(len(keys) - 1, 1))) for i, k in enumerate(keys)}


def _color_ticks(ax, labels: list[str], col: dict[str, str]) -> None:
    """Optimizer names on the y axis in their colours (the baseline stays black)."""
    for tick, lab in zip(ax.get_yticklabels(), labels):
        tick.set_color(col.get(lab, "#000000"))


def _styled(fn):
    """Run a figure builder under the report's rc settings (local, nothing global changes)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_BASE):
            return fn(*args, **kwargs)

    return wrapper


def _new(width: float, height: float, ncols: int = 1, nrows: int = 1):
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _short(text: str, n: int = 28) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _logy_if_wide(ax, arrays: list[np.ndarray]) -> None:
    vals = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    if vals.size and vals.min() > 0 and vals.max() / vals.min() > 30:
        ax.set_yscale("log")


MAX_NAMED = 10  # beyond this many optimizers, curves name the best few and draw the rest as grey context


def _final(band: dict[str, np.ndarray]) -> float:
    vals = band["median"][np.isfinite(band["median"])]
    return float(vals[-1]) if vals.size else float("nan")


def _highlighted(summary: Summary, wl: str, bands: dict[str, dict]) -> set[str]:
    """Every label when there are few; else the baseline and the MAX_NAMED − 1 best final medians on ``wl``."""
    if len(bands) <= MAX_NAMED:
        return set(bands)
    sign = -1.0 if summary.meta[wl].higher_is_better else 1.0
    ranked = sorted((lab for lab in bands if lab != summary.baseline and np.isfinite(_final(bands[lab]))),
                    key=lambda lab: sign * _final(bands[lab]))
    return {summary.baseline, *ranked[:MAX_NAMED - 1]} - {None}


@_styled
def curves(summary: Summary, wl: str, col: dict[str, str]) -> bytes:
    """Validation metric against steps and against timed seconds: median over seeds with the IQR band. With more
    than MAX_NAMED optimizers the best final medians (and the baseline) are named; the others are thin grey."""
    meta = summary.meta[wl]
    fig, axes = _new(9.6, 3.4, ncols=2)
    bands = {}
    for lab in summary.labels:
        band = curve_band(summary.reps(lab, wl), meta.metric)
        if np.isfinite(band["median"]).any():
            bands[lab] = band
    named = _highlighted(summary, wl, bands)
    others = len(bands) - len(named)
    for lab, band in sorted(bands.items(), key=lambda kv: kv[0] in named):  # grey context first, underneath
        ok = np.isfinite(band["median"])
        n = sum(1 for r in summary.reps(lab, wl) if r.curve)
        for ax, x in zip(axes[0], (band["step"], band["wall"])):
            good = ok & np.isfinite(x)
            if lab not in named:
                ax.plot(x[good], band["median"][good], color="#b0b0b0", lw=0.7, alpha=0.7)
                continue
            ax.plot(x[good], band["median"][good], color=col[lab], lw=1.6, label=f"{_short(lab)} (n={n})",
                    ls="--" if lab == summary.baseline else "-")
            ax.fill_between(x[good], band["q25"][good], band["q75"][good], color=col[lab], alpha=0.18, lw=0)
    if others:
        axes[0][1].plot([], [], color="#b0b0b0", lw=0.7, label=f"{others} others (grey)")
    drawn = [b["median"][np.isfinite(b["median"])] for b in bands.values()]
    direction = "higher is better" if meta.higher_is_better else "lower is better"
    for ax, xlabel in zip(axes[0], ("training step", "timed training time (s)")):
        if meta.target is not None:
            ax.axhline(meta.target, color="#555555", ls=":", lw=1.2, label=f"target {meta.target:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{meta.metric} ({direction})")
        ax.grid(alpha=0.3)
        _logy_if_wide(ax, drawn)
    best = f"; best {len(named) - (summary.baseline in named)} named" if others else " band"
    title = _short(summary.title(wl), 40)
    axes[0][0].set_title(f"{title}: {meta.metric} vs steps (median, IQR{best})")
    axes[0][1].set_title(f"{title}: {meta.metric} vs time")
    if not drawn:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no finite curve points", ha="center", va="center", transform=ax.transAxes)
    if axes[0][1].get_legend_handles_labels()[0]:
        axes[0][1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


@_styled
def profiles(summary: Summary, col: dict[str, str], r_max: float = 4.0) -> bytes:
    """AlgoPerf performance profiles ρ(τ) on [1, r_max], steps and seconds side by side, scores in the legend.
    Optimizers with B = 0 (ρ = 0 on the whole range) share one legend entry when there are more than MAX_NAMED."""
    fig, axes = _new(9.6, 3.4, ncols=2)
    taus = np.linspace(1.0, r_max, 601)
    k = len(summary.target_workloads)
    for ax, kind in zip(axes[0], ("steps", "seconds")):
        ratios = summary.ratios[kind]
        scores = summary.scores[kind]
        crowded = len(summary.labels) > MAX_NAMED
        zero = [lab for lab in summary.labels if crowded and scores[lab] == 0 and lab != summary.baseline]
        for lab in sorted(summary.labels, key=lambda s: -scores[s]):
            r = np.array(list(ratios[lab].values()))
            rho = (r[None, :] <= taus[:, None]).mean(axis=1)
            label = None if lab in zero else f"{_short(lab)}: B={scores[lab]:.3f}"
            ax.step(taus, rho, where="post", color="#b0b0b0" if lab in zero else col[lab], lw=1.6,
                    ls="--" if lab == summary.baseline else "-", label=label)
        if zero:
            ax.plot([], [], color="#b0b0b0", lw=1.6, label=f"{len(zero)} others: B=0")
        ax.set_xlim(1.0, r_max)
        ax.set_ylim(-0.03, 1.05)
        ax.set_xlabel(f"τ (ratio to the fastest, time in {kind})")
        ax.set_ylabel(f"ρ(τ): share of {k} workload(s) within τ")
        ax.set_title(f"Performance profile ({kind} to target)")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False, ncols=2) if crowded \
            else ax.legend(loc="lower right", frameon=True, framealpha=0.9)
    if len(summary.labels) > MAX_NAMED:  # room for the legends below the axes
        entries = max(sum(1 for lab in summary.labels if summary.scores[kind][lab] > 0 or lab == summary.baseline)
                      for kind in ("steps", "seconds")) + 1
        fig.set_size_inches(9.6, 3.6 + 0.17 * -(-entries // 2))
    return _png(fig)


@_styled
def overhead(summary: Summary, col: dict[str, str]) -> bytes:
    """Optimizer time per step (ms), one marker per workload, labels on the y axis."""
    labels = [lab for lab in summary.labels if lab in summary.overhead_ms]
    fig, axes = _new(9.6, 0.9 + 0.32 * max(len(labels), 2))
    ax = axes[0][0]
    styles = workload_styles(summary)
    wls = [w for w in summary.meta if any(w in summary.overhead_ms[lab] for lab in labels)]
    for w in wls:
        ys = [i for i, lab in enumerate(labels) if w in summary.overhead_ms[lab]]
        xs = [summary.overhead_ms[labels[i]][w] for i in ys]
        color, marker = styles[w]
        ax.scatter(xs, ys, marker=marker, s=36, label=_short(summary.title(w)), color=color, alpha=0.85)
    ax.set_yticks(range(len(labels)), [_short(lab) for lab in labels])
    _color_ticks(ax, labels, col)
    ax.invert_yaxis()
    xs_all = [v for lab in labels for v in summary.overhead_ms[lab].values() if v > 0]
    if xs_all and max(xs_all) / min(xs_all) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("optimizer time per step (ms, median over seeds)")
    ax.set_ylabel("optimizer")
    ax.set_title("Optimizer overhead per step")
    ax.grid(alpha=0.3, axis="x")
    ax.legend(title="workload", loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


@_styled
def learned(summary: Summary, col: dict[str, str]) -> bytes:
    """Speedup and final-loss ratio against the baseline per workload (markers) with the IQM (bar)."""
    labels = [lab for lab in summary.labels if lab in summary.learned]
    fig, axes = _new(9.6, 1.2 + 0.34 * max(len(labels), 2), ncols=2)
    axes[0][1].sharey(axes[0][0])
    styles = workload_styles(summary)
    wls = [w for w in summary.meta if any(w in summary.learned[lab] for lab in labels)]
    for ax, field, title in zip(axes[0], ("speedup", "final_ratio"),
                                ("Speedup vs baseline (higher is better)", "Final-loss ratio (lower is better)")):
        for i, lab in enumerate(labels):
            agg = summary.learned_iqm[lab][0 if field == "speedup" else 1]
            if math.isfinite(agg) and agg > 0:
                ax.barh(i, agg, color="#c9d3e3", height=0.6, label="IQM over workloads" if i == 0 else None)
        for w in wls:
            pts = [(getattr(summary.learned[lab][w], field), i) for i, lab in enumerate(labels)
                   if w in summary.learned[lab]]
            pts = [(x, i) for x, i in pts if math.isfinite(x) and x > 0]
            if pts:
                color, marker = styles[w]
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, s=30, color=color,
                           label=_short(summary.title(w)), zorder=3)
        ax.axvline(1.0, color="#000000", lw=1, ls="--", label=f"baseline ({_short(summary.baseline or '')})")
        ax.set_xscale("log")
        ax.set_xlabel("speedup (baseline steps / method steps)" if field == "speedup"
                      else "final loss / baseline final loss")
        ax.set_title(title)
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(labels)), [_short(lab) for lab in labels])
    _color_ticks(axes[0][0], labels, col)
    axes[0][0].invert_yaxis()
    axes[0][0].set_ylabel("optimizer")
    axes[0][1].tick_params(labelleft=False)
    axes[0][1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig)


def parse_selection(history) -> list[tuple[float, list[list]]]:
    """Validate ``extras["selection"]``: a list of ``[step, selection]`` with ``selection`` a list (one per param
    group) of lists of selected candidate values."""
    if not isinstance(history, (list, tuple)) or not history:
        raise ValueError("selection history must be a non-empty list of [step, selection]")
    out = []
    for item in history:
        if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], (list, tuple))
                and all(isinstance(g, (list, tuple)) for g in item[1])):
            raise ValueError(f"selection entry {str(item)[:60]!r} is not [step, [[values per group]...]]")
        out.append((float(item[0]), [list(g) for g in item[1]]))
    return sorted(out, key=lambda t: t[0])


def selection_shares(trials: list[TrialResult]) -> dict[str, float]:
    """Share of all logged selections (every param group, tensor, step and seed pooled) held by each candidate,
    candidates in display order. Raises ValueError on a malformed history."""
    total: dict[str, int] = defaultdict(int)
    for r in trials:
        for _, sel in parse_selection(r.extras["selection"]):
            for g in sel:
                for v in g:
                    total[_key(v)] += 1
    grand = sum(total.values()) or 1
    return {c: total[c] / grand for c in sorted(total, key=_order)}


@_styled
def selection(label: str, wl: str, trials: list[TrialResult],
              cand_colors: dict[str, str] | None = None) -> tuple[bytes, dict[str, float]]:
    """Which candidate a gap optimizer selected over time: per param group, the share of selections (tensors and
    seeds pooled) held by each candidate at each logged step, as a stacked area. Also returns the share of all
    logged selections per candidate. ``cand_colors`` (``candidate_colors`` of the report) keeps a candidate's
    colour the same in every selection figure; ``wl`` is the workload's name as shown."""
    histories = [parse_selection(r.extras["selection"]) for r in trials]
    n_groups = max(len(sel) for h in histories for _, sel in h)
    candidates = sorted({_key(v) for h in histories for _, sel in h for g in sel for v in g}, key=_order)
    if cand_colors is None or not set(candidates) <= set(cand_colors):
        cmap = matplotlib.colormaps["viridis"]
        cand_colors = {k: matplotlib.colors.to_hex(cmap(0.9 * i / max(len(candidates) - 1, 1)))
                       for i, k in enumerate(candidates)}
    fig, axes = _new(9.6, 2.6 * min(n_groups, 4) + 0.4, nrows=min(n_groups, 4))
    for g, ax in enumerate(axes[:, 0]):
        counts: dict[float, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for h in histories:
            for step, sel in h:
                for v in sel[g] if g < len(sel) else []:
                    counts[step][_key(v)] += 1
        steps = sorted(counts)
        if not steps:
            ax.text(0.5, 0.5, "no selections logged", ha="center", va="center", transform=ax.transAxes)
        else:
            sizes = np.array([sum(counts[s].values()) for s in steps], dtype=float)
            used = [i for i, c in enumerate(candidates) if any(counts[s][c] for s in steps)]
            shares = [np.array([counts[s][candidates[i]] for s in steps]) / sizes for i in used]
            ax.stackplot(steps, shares, labels=[f"candidate {_short(candidates[i], 20)}" for i in used], step="post",
                         colors=[cand_colors[candidates[i]] for i in used], alpha=0.85)
            ax.set_xlim(steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("training step")
        ax.set_ylabel("share of selections")
        ax.set_title(f"{_short(label)} on {_short(wl)}: param group {g} ({len(trials)} run(s))")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _png(fig), selection_shares(trials)


def _key(v) -> str:
    return f"{v:g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def _order(k: str):
    try:
        return (0, float(k), k)
    except ValueError:
        return (1, 0.0, k)
