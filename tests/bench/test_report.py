"""The HTML report: self-contained (only data-URI PNGs, a CSP that allows nothing else), every user string
escaped, and robust to failed/diverged trials, missing targets, a missing baseline and bad gap histories."""

from __future__ import annotations

import base64
import math
import struct
import sys
from html.parser import HTMLParser

import pytest

from optfit.bench import report
from optfit.bench.report import leaderboard_text, write_report
from optfit.bench.summary import WorkloadMeta

from .synthetic_results import EVIL, META, N_FULL_IMAGES, full_report, make_results, trial


class Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def all(self, name: str) -> list[dict]:
        return [a for t, a in self.tags if t == name]


def png_size(data_uri: str) -> tuple[int, int]:
    prefix = "data:image/png;base64,"
    assert data_uri.startswith(prefix)
    raw = base64.b64decode(data_uri[len(prefix):], validate=True)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n" and raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def test_report_is_self_contained_with_all_figures():
    path = full_report()
    assert path.name == "report.html" and path.is_file()
    text = path.read_text(encoding="utf-8")
    tags = Tags(text)
    for _, attrs in tags.tags:
        for key in ("src", "href", "action", "srcset", "poster"):
            value = (attrs.get(key) or "").strip().lower()
            assert not value.startswith(("http:", "https:", "//", "file:")), (key, value[:80])
    assert not tags.all("link") and not tags.all("iframe") and "@import" not in text and "url(" not in text
    csp = [a["content"] for a in tags.all("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and "img-src data:" in csp[0]
    imgs = tags.all("img")
    assert len(imgs) == N_FULL_IMAGES
    for img in imgs:
        w, h = png_size(img["src"])
        assert w >= 400 and h >= 100 and img.get("alt")
    for section in ("leaderboard", "time", "profiles", "claims", "curves", "learned", "overhead", "selection",
                    "gradstats", "configs", "problems"):
        assert f'id="{section}"' in text


def test_every_user_string_is_escaped():
    text = full_report().read_text(encoding="utf-8")
    assert EVIL not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert len(Tags(text).all("script")) == 1  # only the report's own, hash-pinned script
    assert "<b>bold</b>" not in text and "&lt;b&gt;bold&lt;/b&gt;" in text  # an error message
    assert "&quot;lr&quot;: &quot;&lt;script&gt;" in text  # a hyperparameter value


def test_report_content_for_misses_failures_and_missing_targets():
    text = full_report().read_text(encoding="utf-8")
    assert "none (no time to target)" in text  # workload "lm" has no target
    assert "class=miss>miss" in text  # sgd misses "quad" on a majority of seeds
    for status in ("diverged", "failed"):
        assert f"<td class=t>{status}</td>" in text
    assert "Share of all logged selections: 0.5: 48%, 0.9: 19%, 0.99: 33%" in text
    # the GradientStats probe: medians over the 3 seeds of the last summary, beside the most selected candidate
    assert "<td>3</td><td>0.95</td><td>0.81</td><td class=t>0.5 (48%)</td>" in text


def test_unreadable_gradient_stats_are_skipped(tmp_path):
    meta = {"quad": META["quad"]}
    res = [trial("quad", "adamw-tuned", 0, rate=0.02),
           trial("quad", "gap-adamw", 0, rate=0.03, extras={"gradient_stats": [["garbage"]]})]
    text = write_report(res, meta, tmp_path).read_text(encoding="utf-8")
    assert "No trial carried a GradientStats probe" in text


def test_no_baseline_no_targets_and_only_failed_trials(tmp_path):
    meta = {"quad": WorkloadMeta("quad", target=None, max_steps=400)}
    failed = [trial("quad", "sgd", 0, rate=0.0, status="failed"), trial("quad", "lion", 1, rate=0.0, status="failed")]
    path = write_report(failed, meta, tmp_path / "nested" / "dir")
    text = path.read_text(encoding="utf-8")
    assert "baseline adamw-tuned not in the results" in text
    assert "No workload has a target" in text
    assert len(Tags(text).all("img")) == 1  # the (empty) curves figure only
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]  # no temporary file left behind


def test_bad_selection_history_is_reported_not_raised(tmp_path):
    meta = {"quad": META["quad"]}
    res = [trial("quad", "adamw-tuned", 0, rate=0.02),
           trial("quad", "gap-adamw", 0, rate=0.03, extras={"selection": [[0, "not a list of groups"]]})]
    text = write_report(res, meta, tmp_path).read_text(encoding="utf-8")
    assert "unreadable selection history" in text


def test_empty_results_raise(tmp_path):
    with pytest.raises(ValueError, match="results is empty"):
        write_report([], META, tmp_path)
    assert not (tmp_path / "report.html").exists()


def test_leaderboard_text_plain(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)  # force the plain-text table
    text = leaderboard_text(make_results(), META)
    lines = text.splitlines()
    header, rows = lines[0], lines[2:6]
    col = header.index("optimizer")
    assert [r[col:].split("  ")[0] for r in rows] == ["adamw-tuned (baseline)", "gap-adamw", EVIL, "sgd"]
    assert rows[0].startswith("1  ") and rows[3].startswith("4  ")  # ranked by AlgoPerf score (seconds)
    width = header.index("score (s)") + len("score (s)")
    assert all(r[width - 5:width].strip() for r in rows)  # the score column is right-aligned under its header
    assert "miss" not in text and "×0.816" in text  # gap-adamw's geometric-mean step ratio


def test_leaderboard_text_strips_control_characters(monkeypatch):
    monkeypatch.setitem(sys.modules, "rich", None)
    res = [trial("quad", "adamw-tuned", 0, rate=0.02), trial("quad", "evil\x1b[2Jname", 0, rate=0.03)]
    text = leaderboard_text(res, {"quad": META["quad"]})
    assert "\x1b" not in text and "evil?[2Jname" in text


def test_crowded_curve_figures_name_the_baseline_and_the_best_finals():
    """With more optimizers than figures.MAX_NAMED, curves name the baseline and the best final medians."""
    from types import SimpleNamespace

    import numpy as np

    from optfit.bench import figures

    n = figures.MAX_NAMED + 5
    bands = {f"opt{i}": {"median": np.array([0.0, 0.5, i / n])} for i in range(n)}
    bands["opt3"]["median"][1:] = [3 / n, np.nan]  # its last finite value counts
    bands["base"] = {"median": np.array([0.0, 0.1])}
    for higher, best in ((True, {f"opt{i}" for i in range(n - 1, n - figures.MAX_NAMED, -1)}),
                         (False, {f"opt{i}" for i in range(figures.MAX_NAMED - 1)})):
        summary = SimpleNamespace(baseline="base", meta={"w": SimpleNamespace(higher_is_better=higher)})
        named = figures._highlighted(summary, "w", bands)
        assert named == best | {"base"} and len(named) == figures.MAX_NAMED
    few = dict(list(bands.items())[:3])
    assert figures._highlighted(summary, "w", few) == set(few)


def test_crowded_report_renders(tmp_path):
    """A report with more optimizers than figures.MAX_NAMED still writes every figure."""
    results = [trial(w, f"opt-{i:02d}", seed, rate=0.004 * (i + 1)) for w in ("quad", "clf")
               for i in range(14) for seed in range(2)]
    path = write_report(results, META, tmp_path, baseline="opt-00")
    text = path.read_text()
    assert text.count("data:image/png;base64,") >= 4


# -- what the report says about the run -----------------------------------------------------------------------

def test_header_names_the_experiment_and_counts_the_seeds(tmp_path):
    from optfit.bench.report import seeds_text

    res = [trial("quad", "adamw-tuned", 0, rate=0.02), trial("quad", "sgd", 0, rate=0.01)]
    text = write_report(res, {"quad": META["quad"]}, tmp_path, experiment="lr-sweep-7").read_text()
    header = text[text.index("<header>"):text.index("</header>")]
    assert "experiment <b>lr-sweep-7</b>" in header and "<title>optfit showdown: lr-sweep-7</title>" in text
    assert "1 seed (0)" in header and "seeds 0" not in header
    assert seeds_text([2, 0, 1]) == "3 seeds (0, 1, 2)" and seeds_text(range(10)) == "10 seeds (0–9)"


def test_hyperparameters_are_shown_to_four_significant_digits(tmp_path):
    from optfit.bench.report import format_hparams

    hp = {"lr": 0.0031622776601683794, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.1234567, "nesterov": True}
    assert format_hparams(hp) == ('{"betas": [0.9, 0.999], "eps": 1e-08, "lr": 0.003162, "nesterov": true, '
                                  '"weight_decay": 0.1235}')
    text = write_report([trial("quad", "adamw", 0, rate=0.02, hparams=hp)], {"quad": META["quad"]}, tmp_path).read_text()
    assert "&quot;lr&quot;: 0.003162," in text and "0.0031622776601683794" not in text


def test_workloads_are_shown_by_their_own_name(tmp_path):
    key = "mypkg.tasks:Quad"
    meta = {key: WorkloadMeta(key, target=0.1, max_steps=400, display="quad-task")}
    res = [trial("quad", "adamw-tuned", 0, rate=0.02), trial("quad", "sgd", 0, rate=0.03, status="diverged",
                                                               diverge_at=100)]
    for r in res:
        r.spec.workload = key
    text = write_report(res, meta, tmp_path).read_text()
    assert "quad-task" in text and key not in text


def _captured(monkeypatch, method: str) -> list[dict]:
    from matplotlib.axes import Axes

    calls, real = [], getattr(Axes, method)

    def spy(self, *args, **kwargs):
        calls.append(kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Axes, method, spy)
    return calls


def test_a_candidate_keeps_its_colour_in_every_selection_figure(tmp_path, monkeypatch):
    calls = _captured(monkeypatch, "stackplot")
    low = [[t, [[0.5, 0.9]]] for t in range(0, 401, 50)]
    high = [[t, [[0.9, 0.99]]] for t in range(0, 401, 50)]
    res = [trial("quad", "adamw-tuned", 0, rate=0.02), trial("quad", "gap-a", 0, rate=0.03, extras={"selection": low}),
           trial("quad", "gap-b", 0, rate=0.03, extras={"selection": high})]
    write_report(res, {"quad": META["quad"]}, tmp_path)
    colours: dict[str, set] = {}
    for call in calls:
        for label, colour in zip(call["labels"], call["colors"]):
            colours.setdefault(label, set()).add(colour)
    assert set(colours) == {"candidate 0.5", "candidate 0.9", "candidate 0.99"}
    assert all(len(c) == 1 for c in colours.values()), colours
    assert len({next(iter(c)) for c in colours.values()}) == 3


def test_a_workload_keeps_its_colour_and_marker_across_figures(tmp_path, monkeypatch):
    """The overhead figure has every workload, the learned-metrics one only those the baseline ran: a workload's
    style must not depend on which others a figure has."""
    calls = _captured(monkeypatch, "scatter")
    res = [trial(w, "adamw-tuned", 0, rate=0.02) for w in ("lm", "quad")]
    res += [trial(w, "sgd", 0, rate=0.01) for w in ("clf", "lm", "quad")]
    write_report(res, META, tmp_path)
    styles: dict[str, set] = {}
    for call in calls:
        styles.setdefault(call["label"], set()).add((call["color"], call["marker"]))
    assert {"clf", "lm", "quad"} <= set(styles) and all(len(s) == 1 for s in styles.values()), styles


def test_gradient_stats_that_are_not_available_say_why(tmp_path):
    stats = [[20, {"noise_scale": math.nan, "rho": math.nan, "predicted_beta": math.nan,
                   "reason": "needs 9 recorded gradients of a tensor for R(0..8) (lags=8); has 3"}]]
    res = [trial("quad", "adamw-tuned", 0, rate=0.02), trial("quad", "gap-adamw", 0, rate=0.03,
                                                             extras={"gradient_stats": stats})]
    text = write_report(res, {"quad": META["quad"]}, tmp_path).read_text()
    assert "n/a: gap-adamw on quad: needs 9 recorded gradients of a tensor for R(0..8) (lags=8); has 3." in text


def test_a_missed_target_is_never_shown_as_a_plain_speed_ratio(monkeypatch):
    """A miss counts as the budget in the geometric mean, so with a miss the ratio is a lower bound (≥) and with no
    target reached there is no ratio at all."""
    monkeypatch.setitem(sys.modules, "rich", None)
    res = [trial("quad", "adamw-tuned", 0, rate=0.02), trial("quad", "slow", 0, rate=0.0)]
    text = leaderboard_text(res, {"quad": META["quad"]})
    row = next(line for line in text.splitlines() if "slow" in line)
    assert "none reached" in row and "×" not in row.split("slow", 1)[1].split("0/1")[0]
    assert report._time_ratio(1.5, 1, 2) == "≥×1.5" and report._time_ratio(0.8, 2, 2) == "×0.8"


def test_results_text_shows_final_best_and_learning_rate_used():
    from optfit.bench.summary import summarize

    results = [trial("clf", "auto", s, 0.02, extras={"lr_peak": 0.01 * (s + 1)}) for s in range(3)]
    results[0].extras["lr_peak"] = math.nan  # a run without the record: left out of the median
    results += [trial("clf", "sgd", s, 0.001) for s in range(3)]
    text = report.results_text(summarize(results, META))
    lines = text.splitlines()
    assert lines[0].startswith("clf (accuracy, higher is better, target 0.9")
    auto = next(line for line in lines if line.startswith("auto")).split()
    sgd = next(line for line in lines if line.startswith("sgd")).split()
    assert auto[1] == "3/3" and sgd[1] == "0/3"
    assert auto[4] == "0.025"  # median of the known 0.02 and 0.03
    assert sgd[4] == "n/a"  # no lr recorded
    final = [r.final_metrics["accuracy"] for r in results[:3]]
    assert float(auto[2]) == pytest.approx(sorted(final)[1], rel=1e-2)
    assert float(auto[3]) >= float(auto[2])  # best ≥ final for accuracy
