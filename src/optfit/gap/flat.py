"""The flat implementation of gap-adam(w) and gap-sgd (``impl="flat"``; ``impl="auto"`` picks it where it applies).

The reference path does ~20 small tensor operations and several device→host transfers per parameter tensor,
which dominates a step on models of many small tensors. Here, per *bucket* (the tensors of one param group
that share a step count, one dtype — float32 or float64 — and one device), all state lives in a few
contiguous buffers and every per-parameter state entry is a view into them, so ``state_dict`` keeps the
reference format (same keys, same shapes, a view where the reference has a tensor):

    M (K, N)  the K candidates' buffers      state["exp_avgs"] / ["momentum_buffers"] = M[:, seg_i].view(K, *shape_i)
    V (N,)    Adam's second moment          state["exp_avg_sq"] = V[seg_i].view(shape_i)
    selector  (index, streak, challenger) (3, T) int64; score (T, K) float64; counts (T, K) int64 — on the
              CPU, as the reference creates them; state["gap_*"] are their rows

One step: the non-finite check copies the gradients into a flat G (one ``_foreach_copy_``) and sums it once
(``GapOptimizer._finite_or_policy``); the moment, lerp (all K buffers at once) and denominator maths as
whole-buffer ops; Adam's scores from one (K+1, T) table — for tensors of at most ``SUM_MAX`` elements one
product M·(g/d) and one ``sum`` per tensor size, above that one matrix–vector product per tensor — which
crosses to the host once; the scores' scalar factors in Python floats (the reference's own arithmetic); the
choice for all T tensors at once (``decide_all``, the rule of ``selector.choose``) or, in global mode, the
engine's Python ``Selector``, whose per-tensor copies (index, score, counts) are written only at ``flush``;
one ``_foreach_addcdiv_`` / ``_foreach_add_`` for the parameters.

Exactness. Every segment starts on a 64-byte boundary and N is a multiple of that (the padding between
segments stays zero), so each per-tensor reduction reads the same aligned layout as the reference's own
tensors, and the BLAS matrix–vector product gives the same bits (an unaligned slice does not: MKL's gemv
changes its summation order; nor does a strided output). Segments are ordered by size, so the sums over
tensors of one size are one reduction over the rows of a strided view (the same bits as separate tensors; a
batched matrix product would not be). Elementwise ops are elementwise. So scores, choices, state and
parameters equal the reference's bit for bit on this CPU (tests/gap/test_flat.py checks it; on a BLAS whose
gemv depends on more than alignment they agree to rounding).

Buckets change when a parameter's gradient is None on some step (its step count falls behind) or when
``load_state_dict`` replaces the state: a bucket whose state entries are not this layout's views is rebuilt
(copied into fresh buffers) before it runs. Cautious steps go tensor by tensor through the reference's
``_direction`` on the views. Buckets in bf16/fp16 (without ``state_dtype="float32"``), with mixed dtypes or
devices, or with an empty or non-contiguous (e.g. channels-last) tensor run the reference path.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import Tensor

from ..optim import _features as F
from . import selector

ALIGN_BYTES = 64
FLAT_DTYPES = (torch.float32, torch.float64)
SELECTOR_KEYS = ("gap_index", "gap_score", "gap_streak", "gap_challenger", "gap_counts")
SUM_MAX = 4096  # Adam's scores: tensors up to this size by a product and a sum (one reduction per size), larger by gemv


def dots(m: Tensor, r: Tensor) -> Tensor:
    """⟨m_j, r⟩ for the rows of m (K, n) as the reference computes them: ``(m * r).sum(1)`` for n ≤ ``SUM_MAX``
    (the flat path then reduces every tensor of one size in one op, with the same bits), else ``m @ r``."""
    return (m * r).sum(1) if r.numel() <= SUM_MAX else m @ r


class Layout:
    """Flat buffers and per-tensor views of one bucket (see the module docstring)."""

    def __init__(self, kind: str, ps: list[Tensor], sts: list[dict[str, Any]], k: int) -> None:
        self.kind, self.k, self.t = kind, k, len(ps)
        self.dtype, self.device = ps[0].dtype, ps[0].device
        self.key = tuple(map(id, sts))
        align = max(1, ALIGN_BYTES // ps[0].element_size())
        self.shapes = [p.shape for p in ps]
        sizes = [p.numel() for p in ps]
        # buffer order: by size (stable), so that tensors of one size form one strided (count, size) view
        order = sorted(range(self.t), key=sizes.__getitem__)
        self.pos = [0] * self.t  # parameter i's row in buffer order
        self.segments: list[tuple[int, int]] = [(0, 0)] * self.t
        groups: list[list[int]] = []  # [first row, count, size, offset, padded size]
        n = 0
        for row, i in enumerate(order):
            padded = -(-sizes[i] // align) * align
            self.pos[i], self.segments[i] = row, (n, n + sizes[i])
            if groups and groups[-1][2] == sizes[i]:
                groups[-1][1] += 1
            else:
                groups.append([row, 1, sizes[i], n, padded])
            n += padded
        self.n = n
        like = {"dtype": self.dtype, "device": self.device}
        buf_key = "exp_avgs" if kind == "adam" else "momentum_buffers"
        self.m = torch.zeros((k, n), **like)
        self.g = torch.zeros(n, **like)
        for (a, b), st in zip(self.segments, sts):
            self.m[:, a:b].copy_(st[buf_key].reshape(k, -1))
        if kind == "adam":
            self.v, self.d, self.r = torch.zeros(n, **like), torch.zeros(n, **like), torch.zeros(n, **like)
            for (a, b), st in zip(self.segments, sts):
                self.v[a:b].copy_(st["exp_avg_sq"].reshape(-1))
            self._adam_tables(groups, like)
        cpu = torch.device("cpu")
        self.ints = torch.stack([torch.stack([st[key].to(cpu) for st in sts])
                                 for key in ("gap_index", "gap_streak", "gap_challenger")]).to(torch.int64)
        self.score = torch.stack([st["gap_score"].to(cpu) for st in sts]).to(torch.float64)
        self.counts = torch.stack([st["gap_counts"].to(cpu) for st in sts]).to(torch.int64)
        self.count_base = torch.arange(self.t) * k  # row offsets into counts.view(-1)
        self.ones = torch.ones(self.t, dtype=torch.int64)
        seg = [slice(a, b) for a, b in self.segments]
        self.g_views = [self.g[s].view(shape) for s, shape in zip(seg, self.shapes)]
        self.g_all = self.g.expand(k, n)
        if kind == "sgd":  # per tensor (rows in buffer order): K dot products ⟨g, b_j⟩, then ⟨g, g⟩
            self.stats = torch.zeros((self.t, k + 1), **like)
            self.raw_out = [self.stats[r, :k] for r in self.pos]
            self.extra_out = [self.stats[r, k] for r in self.pos]
            self.g_1d = [self.g[s] for s in seg]
            self.m_2d = [self.m[:, s] for s in seg]
        self.m_rows = [[self.m[j, s].view(shape) for s, shape in zip(seg, self.shapes)] for j in range(k)]
        views: list[dict[str, Tensor]] = []
        for i, (s, shape) in enumerate(zip(seg, self.shapes)):
            entry = {buf_key: self.m[:, s].view(k, *shape), "gap_index": self.ints[0, i],
                     "gap_score": self.score[i], "gap_streak": self.ints[1, i],
                     "gap_challenger": self.ints[2, i], "gap_counts": self.counts[i]}
            if kind == "adam":
                entry["exp_avg_sq"] = self.v[s].view(shape)
            views.append(entry)
        if kind == "adam":
            self.d_views = [self.d[s].view(shape) for s, shape in zip(seg, self.shapes)]
        for st, entry in zip(sts, views):
            st.update(entry)  # existing keys keep their place: state_dict looks as before
        self.keys = tuple(views[0])
        self.views = [entry[key] for entry in views for key in self.keys]
        # global mode: the per-tensor copies of the global choice, written at ``flush`` (record_global)
        self.lazy_index: int | None = None
        self.lazy_score: list[float] = []
        self.lazy_counts = [0] * k
        self._weights: dict[tuple, Tensor] = {}

    def _adam_tables(self, groups: list[list[int]], like: dict[str, Any]) -> None:
        """Adam's score table (K+1, T): per tensor (column, buffer order) ⟨m_j, g/d⟩ for every j, then Σ 1/d.

        Tensors of at most ``SUM_MAX`` elements (a prefix of the buffer, of length ns) take products into
        ``q[:K]`` and the reciprocals into ``q[K]``, and one ``sum`` per size reduces all their rows; the rows of a
        strided view reduce exactly as separate tensors. ``q`` and ``inv`` share one storage, so that q[K] *is*
        inv[:ns]. Larger tensors (the last columns): one ``sum`` of 1/d per size and one matrix–vector product
        per tensor into a row of ``mv_table``, as ``dots``."""
        k, n = self.k, self.n
        ns = sum(count * padded for _, count, size, _, padded in groups if size <= SUM_MAX)
        store = torch.zeros(k * ns + n, **like)
        self.inv = store[k * ns:]
        self.q = store[:(k + 1) * ns].view(k + 1, ns)
        self.m_small, self.r_small, self.q_prod = self.m[:, :ns], self.r[:ns], self.q[:k]
        self.table = torch.zeros((k + 1, self.t), **like)
        self.sizes = [size for _, count, size, *_ in groups for _ in range(count)]  # per column
        self.sum_in, self.sum_out, self.mv_in = [], [], []
        for row, count, size, off, padded in groups:
            if size <= SUM_MAX:
                self.sum_in.append(self.q[:, off:off + count * padded].view(k + 1, count, padded)[:, :, :size])
                self.sum_out.append(self.table[:, row:row + count])
                continue
            self.sum_in.append(self.inv[off:off + count * padded].view(count, padded)[:, :size])
            self.sum_out.append(self.table[k, row:row + count])
            self.mv_in += [(self.m[:, a:a + size], self.r[a:a + size]) for a in range(off, off + count * padded, padded)]
        # gemv into a contiguous row (a strided output changes its bits)
        self.mv_table = torch.zeros((len(self.mv_in), k), **like)
        self.mv_out = list(self.mv_table)

    def flush(self) -> None:
        """Write the global choices recorded since the last flush into the per-tensor selector state."""
        if self.lazy_index is None:
            return
        self.ints[0].fill_(self.lazy_index)
        self.score.copy_(torch.tensor(self.lazy_score, dtype=torch.float64))  # broadcast over the T rows
        self.counts.add_(torch.tensor(self.lazy_counts, dtype=torch.int64))
        self.lazy_index, self.lazy_counts = None, [0] * self.k

    def valid_for(self, ps: list[Tensor], sts: list[dict[str, Any]]) -> bool:
        """Are ``sts`` still backed by this layout (not replaced by ``load_state_dict`` or by hand)?"""
        if len(sts) != self.t or ps[0].dtype != self.dtype or ps[0].device != self.device:
            return False
        keys = self.keys
        return all(map(operator.is_, [st.get(key) for st in sts for key in keys], self.views))

    def column(self, values: tuple[float, ...], transform: str) -> Tensor:
        """A cached (K, 1) tensor of per-candidate constants (1 − β for Adam's lerp, μ for SGD)."""
        key = (values, transform)
        w = self._weights.get(key)
        if w is None:
            col = [1 - b for b in values] if transform == "one_minus" else list(values)
            w = self._weights[key] = torch.tensor(col, dtype=self.dtype).to(self.device).view(-1, 1)
        return w


def supported(ps: list[Tensor]) -> bool:
    """Can this bucket run flat? One float32/float64 dtype, one device, contiguous non-empty tensors (the
    reference keeps a strided parameter's second moment in its strides, so its reductions would read another
    order)."""
    p0 = ps[0]
    if p0.dtype not in FLAT_DTYPES:
        return False
    return all(p.dtype == p0.dtype and p.device == p0.device and p.numel() > 0 and p.is_contiguous() for p in ps)


def layout_for(cache: dict[tuple, Layout], kind: str, ps: list[Tensor], sts: list[dict[str, Any]],
               k: int) -> Layout | None:
    """The bucket's layout: cached, or (re)built from the current state; ``None`` if it cannot run flat."""
    key = tuple(map(id, sts))
    layout = cache.get(key)
    if layout is not None and layout.valid_for(ps, sts):
        return layout
    if not supported(ps):
        return None
    members = set(key)
    for other in [kk for kk in cache if members.intersection(kk)]:
        cache.pop(other).flush()  # its views back those parameters' state until the new layout copies it
    layout = cache[key] = Layout(kind, ps, sts, k)
    return layout


# ------------------------------------------------------------------------------------------------ scores
def _adam_scores(L: Layout, scale: list[float]) -> list[list[float]]:
    """Per tensor J_j = ⟨g, m_j/d⟩·scale_j / (Σ(1/d)/n) from L.d: ``GapAdam._scores``, bit for bit."""
    torch.reciprocal(L.d, out=L.inv)
    torch.mul(L.inv, L.g, out=L.r)
    if L.r_small.numel():
        torch.mul(L.m_small, L.r_small, out=L.q_prod)
    for x, out in zip(L.sum_in, L.sum_out):
        torch.sum(x, -1, out=out)
    for (m, r), out in zip(L.mv_in, L.mv_out):
        torch.mv(m, r, out=out)
    *dot, inv_sum = L.table.tolist()
    cols = list(zip(*dot))
    if L.mv_in:  # the large tensors are the last columns
        cols[len(cols) - len(L.mv_in):] = L.mv_table.tolist()
    rows = [[x * sc / w for x, sc in zip(col, scale)] if w else [0.0] * L.k
            for col, w in zip(cols, map(operator.truediv, inv_sum, L.sizes))]
    return [rows[r] for r in L.pos]


def _sgd_scores(L: Layout, inv_norm: list[float], mus: tuple[float, ...] | None) -> list[list[float]]:
    """Per tensor J_j = ⟨g, b_j⟩/‖h_j‖, or (⟨g, g⟩ + μ_j⟨g, b_j⟩)/‖h_j‖ for Nesterov: ``GapSGD._scores``."""
    for m, g, out in zip(L.m_2d, L.g_1d, L.raw_out):
        torch.mv(m, g, out=out)
    if mus is None:
        rows = [[x * sc for x, sc in zip(row, inv_norm)] for row in L.stats.tolist()]
    else:
        for g, out in zip(L.g_1d, L.extra_out):
            torch.dot(g, g, out=out)
        rows = [[(row[-1] + mu * x) * sc for x, mu, sc in zip(row, mus, inv_norm)] for row in L.stats.tolist()]
    return [rows[r] for r in L.pos]


def first_pass(kind: str, L: Layout, group: dict[str, Any], gs: list[Tensor], c: dict[str, Any],
               cands: tuple[float, ...], copied: bool = False) -> list[list[float]]:
    """Update all buffers of the bucket; return its scores, one list of K floats per tensor. ``copied``: L.g
    already holds ``gs`` (the non-finite check put them there)."""
    k, t = L.k, c["t"]
    if not copied:
        torch._foreach_copy_(L.g_views, gs)
    g = L.g
    next_score = group["score"] == "next"
    rows = [[0.0] * k for _ in range(L.t)] if next_score and t == 1 else None
    if kind == "adam":
        if next_score and t > 1:
            torch.sqrt(L.v, out=L.d).div_(c["prev_bc2_sqrt"]).add_(c["eps"])
            rows = _adam_scores(L, c["prev_scale"])
        L.v.mul_(c["b2"]).addcmul_(g, g, value=1 - c["b2"])
        L.m.lerp_(L.g_all, L.column(cands, "one_minus"))
        torch.sqrt(L.v, out=L.d).div_(c["bc2_sqrt"]).add_(c["eps"])
        if not next_score:
            rows = _adam_scores(L, c["scale"])
    else:
        if next_score and t > 1:
            rows = _sgd_scores(L, c["prev_inv_norm"], None)
        if t == 1:
            L.m.copy_(L.g_all)
        else:
            L.m.mul_(L.column(cands, "same")).add_(g)
        if not next_score:
            rows = _sgd_scores(L, c["inv_norm"], cands if group["nesterov"] else None)
    return rows


# --------------------------------------------------------------------------------------------- decisions
def decide_all(L: Layout, rows: list[list[float]], score_ema: float, hysteresis: int) -> list[int]:
    """``selector.decide`` for all T tensors at once: the running scores in one float64 op (the same bits as
    per tensor), the arg-max and debounce in Python over host lists (``selector.choose``), the new
    (index, streak, challenger) and counts written back in three ops."""
    avg = L.score
    new = torch.tensor(rows, dtype=torch.float64)
    if score_ema > 0:
        avg.mul_(score_ema).add_(new, alpha=1.0 - score_ema)
    else:
        avg.copy_(new)
    index, streak, challenger = L.ints.tolist()
    for i, values in enumerate(avg.tolist()):
        index[i], streak[i], challenger[i] = selector.choose(values, index[i], streak[i], challenger[i], hysteresis)
    new_ints = torch.tensor([index, streak, challenger], dtype=torch.int64)
    L.ints.copy_(new_ints)
    L.counts.view(-1).index_add_(0, new_ints[0].add_(L.count_base), L.ones)
    return index


def record_global(L: Layout, j: int, score: list[float]) -> None:
    """Global mode: every tensor of the bucket uses j. The reference's per-tensor bookkeeping (index, running
    score, counts: copies of the global selector's) is kept in Python and written at ``Layout.flush``, which
    ``state_dict``, ``selection``, ``gap_stats``, pickling and any other path that reads it call first."""
    L.lazy_index, L.lazy_score = j, score
    L.lazy_counts[j] += 1


# ------------------------------------------------------------------------------------------------- steps
def apply(opt: Any, kind: str, L: Layout, group: dict[str, Any], ps: list[Tensor], gs: list[Tensor],
          sts: list[dict[str, Any]], c: dict[str, Any], js: list[int], uniform: bool = False, lo: int = 0) -> None:
    """θ ← θ·decay − s_j for the tensors lo, lo+1, … of the layout (j = js[i]; ``uniform``: all equal); the same
    per-tensor operations as the reference."""
    hi = lo + len(ps)
    lr = float(c["lr"])  # a 0-d tensor lr (torch allows one) as the Python number the foreach scalars need
    rows, d_views = L.m_rows, L.d_views if kind == "adam" else None
    if lo or hi != L.t:
        rows = [row[lo:hi] for row in rows]
        d_views = d_views and d_views[lo:hi]
    if group["cautious"]:
        for i, (p, g, st, j) in enumerate(zip(ps, gs, sts, js)):
            if c["decay"] != 1.0:
                p.mul_(c["decay"])
            scratch = {"d": d_views[i]} if kind == "adam" else {}
            p.sub_(F.cautious(opt._direction(p, g, st, c, j, group, scratch), g))
        return
    if c["decay"] != 1.0:
        torch._foreach_mul_(ps, c["decay"])
    uniform = uniform or all(j == js[0] for j in js)
    if kind == "adam":
        if uniform:
            torch._foreach_addcdiv_(ps, rows[js[0]], d_views, -lr / c["bc1"][js[0]])
        else:
            torch._foreach_addcdiv_(ps, [rows[j][i] for i, j in enumerate(js)], d_views,
                                    [-lr / c["bc1"][j] for j in js])
        return
    if group["nesterov"]:
        torch._foreach_add_(ps, gs, alpha=-lr)
        mus = group["momentum_candidates"]
        for j in sorted(set(js)):
            idx = [i for i, jj in enumerate(js) if jj == j]
            torch._foreach_add_([ps[i] for i in idx], [rows[j][i] for i in idx], alpha=-lr * mus[j])
        return
    bufs = rows[js[0]] if uniform else [rows[j][i] for i, j in enumerate(js)]
    torch._foreach_add_(ps, bufs, alpha=-lr)


# ---------------------------------------------------------------------------------------------- batching
class Request:
    """A bucket that can run flat, as ``_run_kernel`` saw it; the second pass runs compatible requests of every
    param group as one batch on one layout (``run_batch``): a model with a no-decay group costs one set of ops."""

    __slots__ = ("kind", "group", "ps", "gs", "sts", "c", "cands")

    def __init__(self, kind, group, ps, gs, sts, c, cands) -> None:
        self.kind, self.group, self.ps, self.gs, self.sts, self.c, self.cands = kind, group, ps, gs, sts, c, cands

    def merge_key(self) -> tuple:
        """Requests with equal keys share every number of the first pass and of the choice; lr, weight decay and
        caution, which only the step uses, may differ."""
        g, c, p0 = self.group, self.c, self.ps[0]
        common = (self.kind, p0.dtype, p0.device, self.cands, c["t"], g["score"], g["mode"], g["score_ema"],
                  g["hysteresis"])
        return common + ((c["b2"], c["eps"]) if self.kind == "adam" else (g["nesterov"],))


class Batch:
    """Compatible requests on one layout after the first pass: the score rows (layout order) and the choice."""

    __slots__ = ("kind", "layout", "rows", "group", "js")

    def __init__(self, kind: str, layout: Layout, rows: list[list[float]], group: dict[str, Any]) -> None:
        self.kind, self.layout, self.rows, self.group, self.js = kind, layout, rows, group, None

    def choices(self, chosen_global: int | None, global_score: list[float] | None) -> list[int]:
        """Decide once for the whole batch (per tensor, or record the global choice)."""
        if self.js is None:
            group, L = self.group, self.layout
            if group["mode"] == "global":
                record_global(L, chosen_global, global_score)
                self.js = [chosen_global] * L.t
            else:
                L.flush()  # the mode may have been global until this step
                self.js = decide_all(L, self.rows, group["score_ema"], group["hysteresis"])
        return self.js


class Part:
    """One request's share of a batch: its score rows (``rows``, as the reference's per-tensor scores) and its
    step."""

    __slots__ = ("batch", "request", "lo", "rows")

    def __init__(self, batch: Batch, request: Request, lo: int) -> None:
        self.batch, self.request, self.lo = batch, request, lo
        self.rows = batch.rows[lo:lo + len(request.ps)]

    def finish(self, opt: Any, chosen_global: int | None, global_score: list[float] | None) -> None:
        b, r, lo = self.batch, self.request, self.lo
        js = b.choices(chosen_global, global_score)[lo:lo + len(r.ps)]
        apply(opt, b.kind, b.layout, r.group, r.ps, r.gs, r.sts, r.c, js, r.group["mode"] == "global", lo)


def run_batch(cache: dict[tuple, Layout], requests: list[Request], prefetched: dict[int, list[Tensor]]
              ) -> list[Part] | None:
    """The first pass of compatible requests on one layout; ``None`` if they cannot run flat."""
    r0 = requests[0]
    if len(requests) == 1:
        ps, gs, sts = r0.ps, r0.gs, r0.sts
    else:
        ps = [p for r in requests for p in r.ps]
        gs = [g for r in requests for g in r.gs]
        sts = [st for r in requests for st in r.sts]
    layout = cache.get(tuple(map(id, sts)))
    copied = prefetched.pop(id(layout), None) if layout is not None else None
    if copied is None:  # else the non-finite check found this layout valid for these states moments ago
        layout = layout_for(cache, r0.kind, ps, sts, len(r0.cands))
        if layout is None:
            return None
    copied = copied is not None and len(copied) == len(gs) and all(map(operator.is_, copied, gs))
    batch = Batch(r0.kind, layout, first_pass(r0.kind, layout, r0.group, gs, r0.c, r0.cands, copied), r0.group)
    parts, lo = [], 0
    for r in requests:
        parts.append(Part(batch, r, lo))
        lo += len(r.ps)
    return parts
