"""The showdown report: one self-contained ``report.html`` (PNG figures inlined as data URIs, no external
resource, a Content-Security-Policy that allows nothing else) and a plain-text leaderboard for the terminal.

Every user-supplied string (workload, optimizer and label names, hyperparameters, error messages) is
HTML-escaped; the page's only script is pinned by its hash in the CSP and records, for tests, how many images
decoded (``data-images-ok`` on ``<body>``) and how many errors happened (``data-errors``).
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import html
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .records import TrialResult
from .summary import KINDS, Summary, summarize

__all__ = ["write_report", "leaderboard_text", "render_html", "format_hparams", "seeds_text"]


class _Raw(str):
    """Markup that is already safe (built here from escaped parts)."""


def _e(x: Any) -> str:
    return x if isinstance(x, _Raw) else html.escape(str(x), quote=True)


def _fmt_time(x: float, kind: str) -> str:
    if not math.isfinite(x):
        return "miss"
    return f"{x:,.0f}" if kind == "steps" else f"{x:.3g} s"


def _fmt(x: float | None, digits: int = 3, prefix: str = "") -> str:
    if x is None:
        return "—"
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "∞" if x > 0 else "−∞"
    return f"{prefix}{x:.{digits}g}"


def _rounded(value: Any, digits: int) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    return value


def format_hparams(hparams: Any, digits: int = 4) -> str:
    """Hyperparameters as compact JSON with floats to ``digits`` significant digits (``0.0031622776601683794``
    reads ``0.003162``); the database keeps the exact values."""
    return json.dumps(_rounded(hparams, digits), sort_keys=True, default=str)


def seeds_text(seeds: Iterable[int]) -> str:
    """``"1 seed (0)"``, ``"3 seeds (0, 1, 2)"``, ``"10 seeds (0–9)"``: the count first, so one seed numbered 0
    does not read as no seeds."""
    seeds = sorted(set(seeds))
    n = len(seeds)
    if n == 0:
        return "no seeds"
    run = n > 3 and seeds == list(range(seeds[0], seeds[0] + n))
    listed = f"{seeds[0]}–{seeds[-1]}" if run else ", ".join(map(str, seeds[:12])) + (", …" if n > 12 else "")
    return f"{n} seed{'s' if n != 1 else ''} ({listed})"


def _table(headers: list[str], rows: list[list[Any]], cls: str = "", first_col_names: bool = True,
           text_cols: tuple[int, ...] = ()) -> str:
    """A table; cells are escaped unless ``_Raw``; ``text_cols`` are left-aligned (numbers align right)."""
    def td(i: int, c: Any) -> str:
        if i == 0 and first_col_names:
            return f"<th scope=row>{_e(c)}</th>"
        return f"<td class=t>{_e(c)}</td>" if i in text_cols else f"<td>{_e(c)}</td>"

    head = "".join(f"<th class=t>{_e(h)}</th>" if i in text_cols else f"<th>{_e(h)}</th>"
                   for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = [td(i, c) for i, c in enumerate(row)]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class=scroll><table class="{cls}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="{_e(alt)}">'


# ---------------------------------------------------------------- leaderboard (shared by HTML and terminal)

_LB_HEAD = ["#", "optimizer", "score (s)", "score (steps)", "geo ×base (s)", "geo ×base (steps)", "reached",
            "faster? (steps)", "IQM speedup", "IQM loss ratio", "opt ms/step"]


def _leaderboard_rows(s: Summary) -> list[list[str]]:
    def sort_key(lab: str):
        sc = [s.scores.get(k, {}).get(lab, -1.0) for k in ("seconds", "steps")]
        return (-sc[0], -sc[1], lab)

    rows = []
    n_t = len(s.target_workloads)
    for rank, lab in enumerate(sorted(s.labels, key=sort_key), 1):
        reached = sum(math.isfinite(s.times["steps"].median(lab, w)) for w in s.target_workloads)
        claim = s.claims.get("steps", {}).get(lab)
        lq = s.learned_iqm.get(lab)
        oh = list(s.overhead_ms.get(lab, {}).values())
        rows.append([str(rank), lab + (" (baseline)" if lab == s.baseline else ""),
                     _fmt(s.scores.get("seconds", {}).get(lab)), _fmt(s.scores.get("steps", {}).get(lab)),
                     _time_ratio(s.geomean_ratio.get("seconds", {}).get(lab), reached, n_t),
                     _time_ratio(s.geomean_ratio.get("steps", {}).get(lab), reached, n_t),
                     f"{reached}/{n_t}" if n_t else "—",
                     "baseline" if lab == s.baseline else (claim.verdict if claim else "—"),
                     (_lower_mark(s, lab) + _fmt(lq[0])) if lq else "—", _fmt(lq[1]) if lq else "—",
                     _fmt(sorted(oh)[len(oh) // 2]) if oh else "—"])
    return rows


def _time_ratio(ratio: float | None, reached: int, n_targets: int) -> str:
    """A geometric-mean time ratio as the leaderboard shows it: a miss counts as the budget, so with a missed
    target the ratio is only a lower bound ("≥"), and with none reached it is no speed at all ("none reached")."""
    if ratio is None:
        return "—"
    if n_targets and reached == 0:
        return "none reached"
    return ("≥" if reached < n_targets else "") + _fmt(ratio, prefix="×")


def _lower_mark(s: Summary, lab: str) -> str:
    """"≥" when some workload's speedup is a lower bound (the IQM is monotone, so it is one too)."""
    return "≥" if any(v.lower_bound for v in s.learned.get(lab, {}).values()) else ""


_RESULT_HEAD = ["optimizer", "reached", "final", "best", "peak lr"]


def _median_of_known(values: list[float]) -> float:
    """``_median`` of the values that are not NaN (a diverged run's ∞ counts); NaN when none is."""
    known = [v for v in values if not math.isnan(v)]
    return _median(known) if known else math.nan


def _result_rows(s: Summary, wl: str) -> list[list[str]]:
    """Per optimizer on workload ``wl``: seeds that reached the target, the median final and best metric, and the
    median of the largest step size each run used (``extras["lr_peak"]``: a learning-rate-free method's own step,
    a schedule's peak)."""
    m = s.meta[wl]
    best_of = max if m.higher_is_better else min
    rows = []
    for lab in s.labels:
        trials = s.groups[lab].get(wl, [])
        if not trials:
            continue
        finals = [r.final_metrics.get(m.metric, math.nan) for r in trials]
        bests = [best_of([p.metrics[m.metric] for p in r.curve if m.metric in p.metrics] or [math.nan])
                 for r in trials]
        lrs = [r.extras.get("lr_peak", math.nan) for r in trials]
        reached = "—" if m.target is None else f"{sum(r.steps_to_target is not None for r in trials)}/{len(trials)}"
        rows.append([lab, reached, _fmt(_median_of_known(finals)), _fmt(_median_of_known(bests)),
                     _fmt(_median_of_known(lrs))])
    return rows


def results_text(s: Summary) -> str:
    """Per workload, what each optimizer ended at: final and best metric and the learning rate it actually used."""
    blocks = []
    for wl in s.workloads:
        m = s.meta[wl]
        rows = [["".join(ch if ch.isprintable() else "?" for ch in c) for c in r] for r in _result_rows(s, wl)]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_RESULT_HEAD)] if rows else []
        target = "" if m.target is None else f", target {m.target:g}"
        lines = [f"{s.title(wl)} ({m.metric}, {'higher' if m.higher_is_better else 'lower'} is better{target}; "
                 "medians over seeds)"]
        lines.append("  ".join((str.ljust if i == 0 else str.rjust)(h, widths[i]) for i, h in enumerate(_RESULT_HEAD)))
        lines += ["  ".join((str.ljust if i == 0 else str.rjust)(c, widths[i]) for i, c in enumerate(r)) for r in rows]
        blocks.append("\n".join(line.rstrip() for line in lines))
    return "\n\n".join(blocks)


def leaderboard_text(results: Iterable[TrialResult] | Summary, workloads_meta: Any = None,
                     baseline: str = "adamw-tuned") -> str:
    """The leaderboard as an aligned text table (a ``rich`` table if rich is installed)."""
    s = results if isinstance(results, Summary) else summarize(results, workloads_meta, baseline)
    # names come from users: no control characters (terminal escape sequences) reach the terminal
    rows = [["".join(ch if ch.isprintable() else "?" for ch in c) for c in r] for r in _leaderboard_rows(s)]
    note = ("scores: AlgoPerf B in [0,1] (r_max=4); geo ×base: geometric-mean time to target / baseline's "
            f"({s.baseline or 'baseline absent'}), ≥ a lower bound (a target not reached counts as the budget); IQM: learned-optimizer metrics; opt ms/step: optimizer overhead")
    try:
        import io

        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(_LB_HEAD)]
        just = [str.rjust if i not in (1, 7) else str.ljust for i in range(len(_LB_HEAD))]
        lines = ["  ".join(just[i](h, widths[i]) for i, h in enumerate(_LB_HEAD)).rstrip()]
        lines.append("  ".join("-" * w for w in widths))
        lines += ["  ".join(just[i](c, widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
        return "\n".join(lines + [note])
    from rich.text import Text  # cells as Text: a label such as "[bold]x" is shown, never parsed as markup

    table = Table(title="optfit showdown leaderboard", caption=Text(note))
    for i, h in enumerate(_LB_HEAD):
        table.add_column(Text(h), justify="left" if i in (1, 7) else "right", no_wrap=i == 1)
    for r in rows:
        table.add_row(*(Text(c) for c in r))
    buf = io.StringIO()
    Console(file=buf, width=160, color_system=None, force_terminal=False).print(table)
    return buf.getvalue().rstrip("\n")


# ---------------------------------------------------------------- HTML sections

def _workloads_section(s: Summary) -> str:
    rows = []
    for w, m in s.meta.items():
        n = sum(len(s.groups[lab].get(w, [])) for lab in s.labels)
        budget = s.times["seconds"].budget.get(w)
        rows.append([s.title(w), m.metric, "higher" if m.higher_is_better else "lower",
                     "none (no time to target)" if m.target is None else f"{m.target:g}", f"{m.max_steps:,}",
                     "—" if budget is None else f"{budget:.3g} s", str(n)])
    return _table(["workload", "metric", "better", "target", "step budget", "time budget", "trials"], rows,
                  text_cols=(1, 2))


def _time_section(s: Summary) -> str:
    if not s.target_workloads:
        return "<p class=note>No workload has a target, so there is no time-to-target table.</p>"
    out = []
    for kind in KINDS:
        t = s.times[kind]
        rows = []
        for lab in s.labels:
            row: list[Any] = [lab]
            for w in s.target_workloads:
                med = t.median(lab, w)
                k, n = t.reached(lab, w)
                if n == 0:
                    row.append(_Raw("<span class=na>not run</span>"))
                    continue
                best = med == min(t.median(x, w) for x in s.labels) and math.isfinite(med)
                ratio = ""
                if s.baseline is not None and lab != s.baseline:
                    r = _median(t.substituted(lab, w)) / _median(t.substituted(s.baseline, w))
                    ratio = f" · ×{r:.3g}"
                cls = "miss" if not math.isfinite(med) else ("best" if best else "v")
                row.append(_Raw(f"<span class={cls}>{_e(_fmt_time(med, kind))}</span>"
                                f"<span class=sub>{k}/{n} reached{_e(ratio)}</span>"))
            gm = s.geomean[kind][lab]
            gr = s.geomean_ratio.get(kind, {}).get(lab)
            row.append(_Raw(f"<span class=v>{_e(_fmt_time(gm, kind))}</span>"
                            + (f"<span class=sub>×{gr:.3g}</span>" if gr is not None else "")))
            rows.append(row)
        out.append(f"<h3>Time to target in {kind}</h3>")
        out.append(_table(["optimizer", *map(s.title, s.target_workloads), "geometric mean"], rows, cls="ttt"))
    base = (f"ratios (×) are to <b>{_e(s.baseline)}</b>" if s.baseline else
            f"the baseline <b>{_e(s.requested_baseline)}</b> is not in the results, so no ratios are shown")
    out.append(f"<p class=note>Median over seeds (over studies of their best trial for external tuning); "
               f"a majority of misses is a miss. Bold: fastest on the workload. {base}. Geometric means and ratios "
               f"count a missed seed as budget + 1 (budgets in the workload table).</p>")
    return "".join(out)


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _claims_section(s: Summary) -> str:
    if s.baseline is None or not s.target_workloads:
        return "<p class=note>Needs the baseline and at least one workload with a target.</p>"
    rows = []
    for lab in s.labels:
        if lab == s.baseline:
            continue
        row = [lab]
        for kind in KINDS:
            c = s.claims[kind][lab]
            row += [f"×{c.point:.3g} [{c.low:.3g}, {c.high:.3g}]", _fmt(c.p_value, 2), c.verdict]
        rows.append(row)
    return (_table(["optimizer", "geo ratio, steps [95% CI]", "p (steps)", "verdict (steps)",
                    "geo ratio, seconds [95% CI]", "p (s)", "verdict (s)"], rows) +
            "<p class=note>Ratio &lt; 1 means faster than the baseline. Interval: percentile bootstrap (2,000 "
            "replicates) resampling seeds within each workload; p: exact sign-flip test of the mean log ratio "
            "across workloads. “faster” needs the whole interval below 1 and at least 3 seeds.</p>")


def _learned_section(s: Summary, figs: list[str], col) -> str:
    from . import figures

    if not s.learned:
        why = "the baseline is absent" if s.baseline is None else "no workload has loss curves for both sides"
        return f"<p class=note>Not available: {why}.</p>"
    wls = [w for w in s.meta if any(w in v for v in s.learned.values())]
    rows = []
    for lab, per in s.learned.items():
        row: list[Any] = [lab]
        for w in wls:
            v = per.get(w)
            row.append("—" if v is None else f"{'≥' if v.lower_bound else ''}{_fmt(v.speedup)} / {_fmt(v.final_ratio)}")
        sp, fr = s.learned_iqm[lab]
        row.append(f"{_lower_mark(s, lab)}{_fmt(sp)} / {_fmt(fr)}")
        rows.append(row)
    figs.append(_img(figures.learned(s, col), "speedup and final-loss ratio against the baseline"))
    return (_table(["optimizer", *map(s.title, wls), "IQM"], rows) + figs[-1] +
            f"<p class=note>Cells: speedup / final-loss ratio against <b>{_e(s.baseline)}</b> on each workload's "
            "loss (median over seeds). Speedup = steps the baseline's median curve needs to reach the method's final "
            "loss ÷ the method's steps (≥: the baseline never got there, so its budget is used); final-loss ratio = "
            "method ÷ baseline. IQM: inter-quartile mean over workloads.</p>")


def _overhead_section(s: Summary, figs: list[str], col) -> str:
    from . import figures

    if not s.overhead_ms:
        return "<p class=note>No trial recorded steps.</p>"
    wls = list(s.meta)
    rows = [[lab, *(_fmt(s.overhead_ms.get(lab, {}).get(w)) for w in wls)] for lab in s.labels]
    figs.append(_img(figures.overhead(s, col), "optimizer overhead per step"))
    return (_table(["optimizer", *(f"{s.title(w)} (ms)" for w in wls)], rows) + figs[-1] +
            "<p class=note>optimizer_seconds ÷ steps: time spent inside the optimizer's step, median over seeds.</p>")


def _selection_section(s: Summary, figs: list[str]) -> str:
    from . import figures

    parts = []
    cand_colors = figures.candidate_colors(s)
    for lab in s.labels:
        for w in s.meta:
            trials = [r for r in s.groups[lab].get(w, []) if r.extras.get("selection")]
            if not trials:
                continue
            title = s.title(w)
            try:
                png, shares = figures.selection(lab, title, trials, cand_colors)
            except (ValueError, TypeError, IndexError) as exc:
                parts.append(f"<p class=warn>{_e(lab)} on {_e(title)}: unreadable selection history ({_e(exc)}).</p>")
                continue
            figs.append(_img(png, f"candidate selected over time by {lab} on {title}"))
            share = ", ".join(f"{c}: {100 * v:.0f}%" for c, v in shares.items())
            parts.append(f"<h3>{_e(lab)} on {_e(title)}</h3>{figs[-1]}<p class=note>Share of all logged selections: "
                         f"{_e(share)}.</p>")
    return "".join(parts) or "<p class=note>No gap runs (no trial logged a selection history).</p>"


def _gradient_stats_section(s: Summary) -> str:
    """The ``GradientStats`` probe of each gap run (last evaluation, median over seeds) beside what it chose."""
    rows, why = [], []
    for lab in s.labels:
        for w in s.meta:
            trials = [r for r in s.groups[lab].get(w, []) if r.extras.get("gradient_stats")]
            last = []
            for r in trials:
                try:
                    last.append(dict(r.extras["gradient_stats"][-1][1]))
                except (TypeError, IndexError, KeyError, ValueError):
                    continue
            if not last:
                continue

            def med(key: str) -> float:
                vals = [float(x[key]) for x in last if isinstance(x.get(key), (int, float))]
                return _median(vals) if vals else math.nan

            chosen = _most_selected(trials)
            rows.append([lab, s.title(w), str(len(last)), _fmt(med("noise_scale")), _fmt(med("rho")),
                         _fmt(med("predicted_beta")), chosen])
            reasons = sorted({str(x["reason"]) for x in last if x.get("reason")})
            if reasons and math.isnan(med("rho")):
                why.append(f"{_e(lab)} on {_e(s.title(w))}: {_e('; '.join(reasons))}")
    if not rows:
        return "<p class=note>No trial carried a GradientStats probe (only gap-family runs do).</p>"
    return (_table(["label", "workload", "seeds", "noise scale s²/c", "fitted ρ", "predicted β*", "most selected"],
                   rows, text_cols=(1, 6)) +
            "<p class=note>Measured by <code>optfit.gap.GradientStats</code> on the gap runs themselves (off the "
            "clock): per-element gradient autocorrelation R(0..8) from subsampled coordinates, fitted to "
            "R(k) = s²δ<sub>k</sub> + cρ<sup>k</sup>; β* maximises √(1−β²)(s² + c/(1−βρ)). The last column is the "
            "candidate the run used most (share of logged selections).</p>" +
            (f"<p class=note>n/a: {'<br>'.join(why)}.</p>" if why else ""))


def _most_selected(trials: list[TrialResult]) -> str:
    from . import figures

    try:
        shares = figures.selection_shares([r for r in trials if r.extras.get("selection")])
    except (ValueError, TypeError):
        return "—"
    if not shares:
        return "—"
    best = max(shares, key=shares.get)
    return f"{best} ({100 * shares[best]:.0f}%)"


def _configs_section(s: Summary) -> str:
    rows = []
    for lab in s.labels:
        trials = [r for w in s.groups[lab] for r in s.groups[lab][w]]
        reps = {w: s.reps(lab, w) for w in s.groups[lab]}
        hp = {w: sorted({format_hparams(r.spec.hparams) for r in rs}) for w, rs in reps.items()}
        if len({tuple(v) for v in hp.values()}) == 1:  # the same settings on every workload
            hp_html = "<br>".join(_e(h) for h in next(iter(hp.values())))
        else:
            hp_html = "<br>".join(f"{_e(s.title(w))}: {_e(h)}" for w, v in hp.items() for h in v)
        sched = {format_hparams(r.spec.schedule) for r in trials}
        rows.append([lab, ", ".join(sorted({r.spec.optimizer for r in trials})),
                     ", ".join(sorted({r.spec.protocol for r in trials})), str(len(trials)),
                     ", ".join(str(x) for x in sorted({r.spec.seed for r in trials})),
                     _Raw(f"<code>{hp_html}</code>"), _Raw(f"<code>{_e(' | '.join(sorted(sched)))}</code>")])
    return (_table(["label", "optimizer", "protocol", "trials", "seeds", "hyperparameters (best trial per unit)",
                    "schedule"], rows, text_cols=(1, 2, 4, 5, 6)))


def _problems_section(s: Summary) -> str:
    if not s.problems:
        return "<p class=note>All trials finished.</p>"
    rows = [[s.title(r.spec.workload), f"{r.spec.label or r.spec.optimizer}", str(r.spec.seed), r.status, f"{r.steps:,}",
             (r.error or "")[:300]] for r in s.problems]
    return _table(["workload", "optimizer", "seed", "status", "steps", "error"], rows, first_col_names=False,
                  text_cols=(0, 1, 3, 5))


_READ = """<dl>
<dt>Time to target</dt><dd>First evaluation at which the validation metric meets the workload's target; steps and
timed seconds (evaluation is not timed). Steps are robust to a busy machine, seconds include optimizer overhead.</dd>
<dt>Performance profile, score B</dt><dd>r = time ÷ fastest time on the workload (∞ on a miss); ρ(τ) = share of
workloads with r ≤ τ; B = ∫₁⁴ ρ(τ) dτ / 3 ∈ [0, 1] (AlgoPerf). Higher is better.</dd>
<dt>Geometric mean</dt><dd>Over workloads with a target; a miss counts as the budget + 1 step / second.</dd>
<dt>Speedup, final-loss ratio, IQM</dt><dd>Learned-optimizer metrics (VeLO, Celo), aggregated by the
inter-quartile mean over workloads.</dd>
</dl>"""

_CSS = """
:root{--ink:#1d2330;--mute:#5b6475;--line:#dde2ea;--bg:#f6f8fb;--acc:#1f5fbf}
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--ink);
margin:0;background:#fff}
header{background:linear-gradient(90deg,#15233b,#1f3d6b);color:#fff;padding:22px 32px}
header h1{margin:0 0 4px;font-size:24px;font-weight:650}
header p{margin:2px 0;color:#cfd8e6;font-size:13px}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid var(--line);padding:8px 32px;z-index:1;
display:flex;flex-wrap:wrap;gap:2px 18px}
nav a{color:var(--acc);text-decoration:none;font-size:13px;white-space:nowrap}
main{max-width:1180px;margin:0 auto;padding:8px 32px 48px}
section{margin-top:28px}
h2{font-size:19px;border-bottom:2px solid var(--line);padding-bottom:4px}
h3{font-size:15px;margin:18px 0 6px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:8px 0;font-variant-numeric:tabular-nums;font-size:13px}
th,td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:right;vertical-align:top}
thead th{background:var(--bg);text-align:right;font-weight:600;border-bottom:2px solid var(--line)}
th[scope=row],thead th:first-child{text-align:left;font-weight:600}
tbody tr:nth-child(even){background:#fbfcfe}
th.t,td.t{text-align:left}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;word-break:break-all}
.sub{display:block;color:var(--mute);font-size:11px}
.best{font-weight:700;color:#0b6b2b}.miss{color:#b42318;font-weight:600}.na{color:var(--mute)}
.note{color:var(--mute);font-size:12.5px;max-width:980px}
.warn{color:#b42318}
img{display:block;max-width:100%;height:auto;margin:10px 0;border:1px solid var(--line);border-radius:4px}
dt{font-weight:600;margin-top:6px}dd{margin-left:18px;color:var(--mute)}
"""

_SCRIPT = ("(function(){var b=document.body;b.setAttribute('data-errors','0');"
           "window.addEventListener('error',function(){b.setAttribute('data-errors',"
           "String(+b.getAttribute('data-errors')+1));},true);"
           "window.addEventListener('load',function(){var n=0,im=document.images;"
           "for(var i=0;i<im.length;i++){if(im[i].complete&&im[i].naturalWidth>0)n++;}"
           "b.setAttribute('data-images',String(im.length));b.setAttribute('data-images-ok',String(n));});})();")


def _csp() -> str:
    def h(text: str) -> str:
        return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"

    return f"default-src 'none'; img-src data:; style-src {h(_CSS)}; script-src {h(_SCRIPT)}"


def render_html(s: Summary, title: str = "optfit showdown", experiment: str | Iterable[str] | None = None) -> str:
    """The report page for a ``Summary``; ``experiment`` (the database's experiment name or names) is shown in
    the title and the header."""
    from . import figures

    try:
        from .. import __version__ as version
    except ImportError:  # pragma: no cover
        version = "?"
    col = figures.colors(s)
    figs: list[str] = []
    sections: list[tuple[str, str, str]] = []
    sections.append(("leaderboard", "Leaderboard", _table(_LB_HEAD, _leaderboard_rows(s), text_cols=(1, 7),
                                                           first_col_names=False)))
    sections.append(("workloads", "Workloads", _workloads_section(s)))
    sections.append(("results", "Final and best metric, learning rate used",
                     "".join(f"<h3>{_e(s.title(w))} ({_e(s.meta[w].metric)})</h3>" +
                             _table(_RESULT_HEAD, _result_rows(s, w), text_cols=(0,)) for w in s.workloads) +
                     "<p class=note>Medians over seeds. Peak lr: the largest step size a run used, as a learning "
                     "rate (a learning-rate-free method's own step d·ψ, a schedule's peak).</p>"))
    sections.append(("time", "Time to target", _time_section(s)))
    if s.target_workloads:
        figs.append(_img(figures.profiles(s, col), "AlgoPerf performance profiles"))
        sections.append(("profiles", "Performance profiles and scores", figs[-1] +
                         "<p class=note>ρ(τ) = share of workloads solved within τ × the fastest time; the score B is "
                         "the area under ρ on [1, 4] divided by 3 (shown in the legend).</p>"))
    sections.append(("claims", "Is it faster than the baseline?", _claims_section(s)))
    curves = []
    for w in s.meta:
        figs.append(_img(figures.curves(s, w, col), f"{s.title(w)}: {s.meta[w].metric} curves"))
        curves.append(f"<h3>{_e(s.title(w))}</h3>{figs[-1]}")
    sections.append(("curves", "Curves", "".join(curves)))
    sections.append(("learned", "Speedup and final-loss ratio (learned-optimizer metrics)",
                     _learned_section(s, figs, col)))
    sections.append(("overhead", "Optimizer overhead per step", _overhead_section(s, figs, col)))
    sections.append(("selection", "Gap runs: which candidate was selected", _selection_section(s, figs)))
    sections.append(("gradstats", "Gradient statistics and the predicted β*", _gradient_stats_section(s)))
    sections.append(("configs", "Configurations", _configs_section(s)))
    sections.append(("problems", "Failed and diverged trials", _problems_section(s)))
    sections.append(("read", "How to read this report", _READ))
    n_trials = sum(len(v) for g in s.groups.values() for v in g.values())
    seeds = {r.spec.seed for g in s.groups.values() for v in g.values() for r in v}
    names = [experiment] if isinstance(experiment, str) else list(experiment or [])
    if names:
        title = f"{title}: {', '.join(names)}"
    exp = (f"experiment{'s' if len(names) > 1 else ''} <b>{_e(', '.join(names))}</b> · " if names else "")
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    base = (f"baseline <b>{_e(s.baseline)}</b>" if s.baseline else
            f"<span class=warn>baseline {_e(s.requested_baseline)} not in the results</span>")
    nav = "".join(f'<a href="#{sid}">{_e(name)}</a>' for sid, name, _ in sections)
    body = "".join(f'<section id="{sid}"><h2>{_e(name)}</h2>{content}</section>' for sid, name, content in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{_e(title)}</h1><p>{exp}{n_trials} trials · {len(s.labels)} optimizers · {len(s.meta)} "
            f"workloads · {_e(seeds_text(seeds))} · {base}</p><p>generated {when} by optfit {_e(version)}</p>"
            f"</header><nav>{nav}</nav><main>{body}</main><script>{_SCRIPT}</script></body></html>")


def write_report(results: Iterable[TrialResult], workloads_meta: Any, out_dir: str | os.PathLike,
                 baseline: str = "adamw-tuned", title: str = "optfit showdown",
                 experiment: str | Iterable[str] | None = None) -> Path:
    """Write ``out_dir/report.html`` (created if needed) and return its path. The file is written to a temporary
    name and renamed, so an interrupted run never leaves a half-written report."""
    s = summarize(results, workloads_meta, baseline)
    page = render_html(s, title, experiment)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.html"
    tmp = out / f".report.html.{os.getpid()}.tmp"
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, path)
    return path
