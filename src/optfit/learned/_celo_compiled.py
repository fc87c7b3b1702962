"""Celo's per-element update written for ``torch.compile`` (``Celo(impl="compiled")``).

The same maths as ``_celo_kernel.celo_chunk`` (equations in ``celo.py``), split in two graphs so that the
compiler sees one reduction pass and one pointwise pass per tensor, with every per-tensor constant computed
once (a graph boundary is the one reliable way to stop inductor from inlining small tensors into big loops):

* ``celo_prepare`` updates the accumulators in place and returns, per tensor, the small tensors the update
  needs: the first layer with the feature normalisation folded in, W₀[:, c]·rsqrt(mean x_c² + 1e-5) (the 18
  mean squares are one fused reduction over recomputed features), the step multiplier
  RMS(θ)·lr_mult·0.001·lr, and for ≥2-D tensors the row/column factors and the first-layer contribution of the
  12 broadcast channels (never materialised at full size), for 0/1-D tensors the folded diagonal weights;
* ``celo_apply`` recomputes the 18 features from (θ, g, the new state), runs the per-element MLP as unrolled
  multiply-adds (no ``addmm``, no workspace, no ``out=``) and moves θ; ``lr = 0`` leaves θ untouched through
  ``where`` on the multiplier, not a branch.

Every per-step number is a tensor, so changing lr or lr_mult does not recompile. Results equal the eager
kernel's up to float32 rounding (the normalisation is folded into the weights and sums run in another order).
Each graph covers all tensors of a step with static shapes (measured: per-tensor graphs with dynamic shapes
compiled more graphs, more slowly, and cost ~0.1 ms of dispatch per tensor and step).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import _celo_kernel as K

# Python floats (numpy scalars would break the graph), rounded like the eager kernel's float32 constants
_RMS, _RMS_C = float(K.RMS_DECAY), float(K.F32(1) - K.RMS_DECAY)
_MOM = [float(b) for b in K.MOM_DECAYS.tolist()]
_MOM_C = [float(K.F32(1) - K.F32(b)) for b in _MOM]
_FAC = [float(b) for b in K.FAC_DECAYS.tolist()]
_FAC_C = [float(K.F32(1) - K.F32(b)) for b in _FAC]

# the MLP packed into one float32 vector: name → (offset, rows, cols), in prepare_mlp's order
_LAYOUT: dict[str, tuple[int, int, int]] = {}
_off = 0
for _name, _rows, _cols in (("w_dense", 4, 18), ("w_row", 4, 6), ("w_col", 4, 6), ("w_diag", 4, 6), ("b0", 4, 1),
                            ("w1", 4, 4), ("b1", 4, 1), ("w2", 2, 4), ("b2", 2, 1)):
    _LAYOUT[_name] = (_off, _rows, _cols)
    _off += _rows * _cols


def pack_mlp(W: tuple[Tensor, ...]) -> Tensor:
    """``_celo_kernel.prepare_mlp``'s tuple as one contiguous vector in ``_LAYOUT`` order."""
    return torch.cat([w.reshape(-1) for w in W]).contiguous()


def _decays(values: list[float], like: Tensor, k: int) -> Tensor:
    """The 3 decays (or 1 − decays) as a float32 (3, 1, …, 1) tensor against tensors of ``k`` more axes."""
    return torch.tensor(values, dtype=torch.float32, device=like.device).view(3, *[1] * k)


def _mat(wp: Tensor, name: str) -> Tensor:
    off, rows, cols = _LAYOUT[name]
    return wp[off:off + rows * cols].view(rows, cols)


def factored_dims(shape: torch.Size) -> tuple[int, int]:
    """``_celo_kernel.factored_dims`` by a stable insertion sort: should a recompilation make sizes symbolic
    (dynamo's automatic dynamic shapes), the comparisons become guards where ``sorted(key=...)`` would break the
    graph."""
    order = list(range(len(shape)))
    for i in range(1, len(order)):
        j = i
        while j > 0 and shape[order[j - 1]] > shape[order[j]]:
            order[j - 1], order[j] = order[j], order[j - 1]
            j -= 1
    return order[-2], order[-1]


def _lin(w: Tensor, xs: list[Tensor]) -> list[Tensor]:
    """[Σ_j w[o, j]·xs[j] for each output o]: a small matrix applied element by element."""
    outs = []
    for o in range(w.shape[0]):
        acc = w[o, 0] * xs[0]
        for j in range(1, len(xs)):
            acc = acc + w[o, j] * xs[j]
        outs.append(acc)
    return outs


def _pair(vs: list[Tensor]) -> list[Tensor]:
    """The 6 broadcast channels of an accumulator (one tensor per decay): v and rsqrt(v + 1e-8)."""
    return vs + [torch.rsqrt(v + 1e-8) for v in vs]


def _dense(gx: Tensor, p: Tensor, ms: list[Tensor], r: Tensor, fac_g: list[Tensor],
           fac_m: list[Tensor]) -> list[Tensor]:
    """The 18 dense channels, in the first layer's row order (see ``_celo_kernel``)."""
    rs = torch.rsqrt(r + 1e-6)
    return [gx, gx.clamp(-0.1, 0.1), p.float(), *ms, r, *(m * rs for m in ms), rs, *fac_g, gx * rs, *fac_m]


def _prepare_tensor(p: Tensor, g: Tensor, m_st: Tensor, r_st: Tensor, a_st: Tensor, b_st: Tensor | None,
                    wp: Tensor, mult: Tensor) -> tuple[Tensor, ...]:
    shape, nd = p.shape, p.ndim
    gx = g.float().clamp(-1000.0, 1000.0)
    g2 = gx * gx
    m = m_st.float() * _decays(_MOM, p, nd) + gx.unsqueeze(0) * _decays(_MOM_C, p, nd)
    ms = list(m.unbind(0))
    r = r_st.float() * _RMS + g2 * _RMS_C
    gsq = g2 + 1e-30
    if nd >= 2:
        d1, d0 = factored_dims(shape)
        k = nd - 1
        fac, fac_c = _decays(_FAC, p, k), _decays(_FAC_C, p, k)
        vr = a_st.float() * fac + gsq.mean(dim=d0).unsqueeze(0) * fac_c
        vc = b_st.float() * fac + gsq.mean(dim=d1).unsqueeze(0) * fac_c
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_mean = vr.mean(dim=reduced_d1 + 1, keepdim=True)
        rf = torch.rsqrt(torch.clamp_min(vr / (row_mean + 1e-9), 1e-9)).unsqueeze(d0 + 1)
        cf = torch.rsqrt(torch.clamp_min(vc, 1e-9)).unsqueeze(d1 + 1)
        fac_g = [gx * rf[i] * cf[i] for i in range(3)]
        fac_m = [ms[i] * rf[i] * cf[i] for i in range(3)]
        # the 12 broadcast channels' first-layer contribution, on the small vectors (as the eager kernel does)
        er = K._broadcast_part(vr, _mat(wp, "w_row")).unsqueeze(d0 + 1)
        ec = K._broadcast_part(vc, _mat(wp, "w_col")).unsqueeze(d1 + 1)
        a_st.copy_(vr)
        b_st.copy_(vc)
        extras: tuple[Tensor, ...] = (rf, cf, er, ec)
    else:
        fac, fac_c = _decays(_FAC, p, nd), _decays(_FAC_C, p, nd)
        v = a_st.float() * fac + gsq.unsqueeze(0) * fac_c
        vs = list(v.unbind(0))
        fac_g = [gx * torch.rsqrt(torch.clamp_min(x + 1e-9, 1e-9)) for x in vs]
        fac_m = [m * x.pow(-0.5) for m, x in zip(ms, vs)]
        y = torch.cat([v, torch.rsqrt(v + 1e-8)]).view(6, -1)
        inv = torch.rsqrt(y.square().mean(1) + 1e-5)
        a_st.copy_(v)
        extras = ((_mat(wp, "w_diag") * inv).reshape(-1),)
    dense = _dense(gx, p, ms, r, fac_g, fac_m)
    mean_sq = torch.stack([x.square().mean() for x in dense])
    w_eff = _mat(wp, "w_dense") * torch.rsqrt(mean_sq + 1e-5)  # the normalisation folded into the first layer
    step_mult = torch.sqrt(mean_sq[2] + 1e-9) * mult  # RMS(θ) · lr_mult · 0.001 · lr
    m_st.copy_(m)
    r_st.copy_(r)
    return (torch.cat([w_eff.reshape(-1), step_mult.reshape(1)]), *extras)


def celo_prepare(ps: list[Tensor], gs: list[Tensor], states: list[tuple[Tensor, ...]], wp: Tensor, rate: Tensor,
                 lrs: Tensor) -> list[tuple[Tensor, ...]]:
    """Pass 1 for every tensor: update the accumulators in place (``states[i]`` = (momentum, second_moment,
    factored_row, factored_col) or (momentum, second_moment, factored_diag, None)) and return what
    ``celo_apply`` needs. ``wp`` = ``pack_mlp(...)``, ``rate`` = lr_mult, ``lrs[i]`` = float32(0.001·lr_i)."""
    return [_prepare_tensor(p, g, *st, wp, rate * lrs[i]) for i, (p, g, st) in enumerate(zip(ps, gs, states))]


def _apply_tensor(p: Tensor, g: Tensor, m_st: Tensor, r_st: Tensor, a_st: Tensor, wp: Tensor, coef: Tensor,
                  extras: tuple[Tensor, ...]) -> None:
    gx = g.float().clamp(-1000.0, 1000.0)
    ms = [m_st[i].float() for i in range(3)]
    if p.ndim >= 2:
        rf, cf, er, ec = extras
        fac_g = [gx * rf[i] * cf[i] for i in range(3)]
        fac_m = [ms[i] * rf[i] * cf[i] for i in range(3)]
        extra = [er[o] + ec[o] for o in range(4)]
    else:
        vs = [a_st[i].float() for i in range(3)]
        fac_g = [gx * torch.rsqrt(torch.clamp_min(v + 1e-9, 1e-9)) for v in vs]
        fac_m = [m * v.pow(-0.5) for m, v in zip(ms, vs)]
        extra = _lin(extras[0].view(4, 6), _pair(vs))
    dense = _dense(gx, p, ms, r_st.float(), fac_g, fac_m)
    b0, b1, b2 = _mat(wp, "b0"), _mat(wp, "b1"), _mat(wp, "b2")
    h1 = [torch.relu(b0[o, 0] + h + e) for o, (h, e) in enumerate(zip(_lin(coef[:-1].view(4, -1), dense), extra))]
    h2 = [torch.relu(b1[o, 0] + h) for o, h in enumerate(_lin(_mat(wp, "w1"), h1))]
    out = [b2[o, 0] + h for o, h in enumerate(_lin(_mat(wp, "w2"), h2))]
    step_mult = coef[-1]
    new_p = p - out[0] * torch.exp(out[1] * 0.001) * step_mult
    p.copy_(torch.where(step_mult == 0, p, new_p))


def celo_apply(ps: list[Tensor], gs: list[Tensor], states: list[tuple[Tensor, ...]], wp: Tensor,
               prepared: list[tuple[Tensor, ...]]) -> None:
    """Pass 2 for every tensor: the per-element MLP and θ ← θ − step (after ``celo_prepare``)."""
    for p, g, st, (coef, *extras) in zip(ps, gs, states, prepared):
        _apply_tensor(p, g, st[0], st[1], st[2], wp, coef, tuple(extras))
