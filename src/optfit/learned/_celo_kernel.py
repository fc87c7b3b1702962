"""Celo's per-element update, vectorised over many tensors at once (float32).

The 30 MLP inputs of an element (see ``celo.py``) fall in two kinds:

* 18 **dense** channels that vary per element — g, clip(g, ±0.1), θ, m (3), r, m·rsqrt(r+1e-6) (3),
  rsqrt(r+1e-6), fac_g (3), g·rsqrt(r+1e-6), m·row·col factors (3) — written for all tensors of a chunk into one
  (18, N) buffer, normalised per tensor, and multiplied by the matching 18 rows of the first layer in one
  ``addmm``;
* 12 **factored** channels — the row/column accumulators broadcast along a tensor axis and their
  rsqrt(·+1e-8). Broadcasting commutes with the (linear) first layer, so their contribution is computed on the
  small vectors (a (4, rows) and a (4, cols) matrix per tensor) and broadcast-added: never materialised.
  The normalising mean of a broadcast channel is the mean over its vector (each entry is repeated equally).
  For 1-D tensors the 12 channels are the diagonal accumulator (twice) and its rsqrt (twice): one (6, n)
  block with the paired first-layer rows summed.

The original sums 14 per-group products; here the same terms are summed in another order (float32 rounding
differs at the 1e-7 level, far inside the oracle tolerances).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

F32 = np.float32
MOM_DECAYS = torch.tensor([0.9, 0.99, 0.999], dtype=torch.float32)
FAC_DECAYS = torch.tensor([0.9, 0.99, 0.999], dtype=torch.float32)
RMS_DECAY = F32(0.999)
N_DENSE = 18
# rows of the original 30-row first layer: dense channels, row features (v_row, rsqrt), column features
DENSE_ROWS = list(range(15)) + [27, 28, 29]
ROW_ROWS = [15, 16, 17, 21, 22, 23]
COL_ROWS = [18, 19, 20, 24, 25, 26]


def f32(t: Tensor) -> Tensor:
    return t if t.dtype == torch.float32 else t.float()


def factored_dims(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    """(d1, d0): the second-largest and largest axes, ties broken like numpy's argsort on small arrays."""
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    return order[-2], order[-1]


def prepare_mlp(mlp: tuple[Tensor, ...], device: torch.device) -> tuple[Tensor, ...]:
    """The MLP laid out for channel-major inputs: (W_denseᵀ, W_rowᵀ, W_colᵀ, W_diagᵀ, b0, W1ᵀ, b1, W2ᵀ, b2),
    with only the two used outputs (direction, magnitude) of the last layer."""
    w0, b0, w1, b1, w2, b2 = mlp
    w_diag = torch.cat([w0[15:18] + w0[18:21], w0[21:24] + w0[24:27]])
    out = (w0[DENSE_ROWS].T, w0[ROW_ROWS].T, w0[COL_ROWS].T, w_diag.T, b0[:, None], w1.T, b1[:, None],
           w2[:, :2].T, b2[:2, None])
    return tuple(t.contiguous().to(device) for t in out)


def _col(v: Tensor, k: int) -> Tensor:
    return v.view(3, *([1] * k))


def _mean_sq(v: Tensor) -> Tensor:
    """Per-channel mean of v² over every axis but the first."""
    return v.square().reshape(v.shape[0], -1).mean(1)


def tensor_features(X: Tensor, p: Tensor, g: Tensor, st: dict[str, Tensor], mom: Tensor, fac: Tensor,
                    W: tuple[Tensor, ...]) -> tuple:
    """Update one tensor's accumulators and write its dense feature rows 0, 2, 3–6, 11–13, 15–17 into ``X``
    (18, n). Return the factored contribution: ("fac", U_row, d0, U_col, d1) or ("diag", Y)."""
    shape, nd = p.shape, p.ndim
    rows = lambda a, b: X[a:b].view(b - a, *shape)  # noqa: E731
    gx = X[0].view(shape)
    gx.copy_(g).clamp_(-1000.0, 1000.0)
    X[2].view(shape).copy_(p)
    gb = gx.unsqueeze(0)

    m = f32(st["momentum"])
    m.mul_(_col(mom, nd)).addcmul_(gb, _col(1.0 - mom, nd))
    rows(3, 6).copy_(m)
    r = f32(st["second_moment"])
    r.mul_(float(RMS_DECAY)).addcmul_(gx, gx, value=float(F32(1) - RMS_DECAY))
    X[6].view(shape).copy_(r)
    gsq = gx * gx + 1e-30
    if nd >= 2:
        d1, d0 = factored_dims(shape)
        vr, vc = f32(st["factored_row"]), f32(st["factored_col"])
        k = nd - 1
        vr.mul_(_col(fac, k)).addcmul_(gsq.mean(dim=d0).unsqueeze(0), _col(1.0 - fac, k))
        vc.mul_(_col(fac, k)).addcmul_(gsq.mean(dim=d1).unsqueeze(0), _col(1.0 - fac, k))
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_mean = vr.mean(dim=reduced_d1 + 1, keepdim=True)
        row_factor = torch.rsqrt(torch.clamp_min(vr / (row_mean + 1e-9), 1e-9)).unsqueeze(d0 + 1)
        col_factor = torch.rsqrt(torch.clamp_min(vc, 1e-9)).unsqueeze(d1 + 1)
        torch.mul(gb, row_factor, out=rows(11, 14)).mul_(col_factor)
        torch.mul(m, row_factor, out=rows(15, 18)).mul_(col_factor)
        extra = ("fac", _broadcast_part(vr, W[1]), d0, _broadcast_part(vc, W[2]), d1)
        for key, w in (("factored_row", vr), ("factored_col", vc)):
            if w is not st[key]:
                st[key].copy_(w)
    else:
        v = f32(st["factored_diag"])
        v.mul_(_col(fac, nd)).addcmul_(gsq.unsqueeze(0), _col(1.0 - fac, nd))
        torch.mul(gb, torch.rsqrt(torch.clamp_min(v + 1e-9, 1e-9)), out=rows(11, 14))
        torch.mul(m, v.pow(-0.5), out=rows(15, 18))
        q = torch.rsqrt(v + 1e-8)
        y = torch.cat([v * torch.rsqrt(1e-5 + _mean_sq(v)).view(3, *([1] * nd)),
                       q * torch.rsqrt(1e-5 + _mean_sq(q)).view(3, *([1] * nd))]).view(6, -1)
        extra = ("diag", y)
        if v is not st["factored_diag"]:
            st["factored_diag"].copy_(v)
    if m is not st["momentum"]:
        st["momentum"].copy_(m)
    if r is not st["second_moment"]:
        st["second_moment"].copy_(r)
    return extra


def _broadcast_part(v: Tensor, w_t: Tensor) -> Tensor:
    """First-layer contribution (4, *v.shape[1:]) of a factored accumulator v (3, ...) and rsqrt(v + 1e-8),
    each channel normalised by its mean square (= its mean square over the whole broadcast tensor)."""
    q = torch.rsqrt(v + 1e-8)
    k = v.ndim - 1
    y = torch.cat([v * torch.rsqrt(1e-5 + _mean_sq(v)).view(3, *([1] * k)),
                   q * torch.rsqrt(1e-5 + _mean_sq(q)).view(3, *([1] * k))])
    return (w_t @ y.view(6, -1)).view(4, *v.shape[1:])


def celo_chunk(items: list, lr_mult: Tensor, W: tuple[Tensor, ...], workspace: Tensor) -> None:
    """Apply one Celo step to every (lr, θ, g, state) of ``items`` (same device); ``workspace`` holds at least
    26·N float32 (N = total elements)."""
    n_total = sum(p.numel() for _, p, _, _ in items)
    X = workspace[:N_DENSE * n_total].view(N_DENSE, n_total)
    H1 = workspace[N_DENSE * n_total:(N_DENSE + 4) * n_total].view(4, n_total)
    H2 = workspace[(N_DENSE + 4) * n_total:(N_DENSE + 8) * n_total].view(4, n_total)
    device = X.device
    mom, fac = MOM_DECAYS.to(device), FAC_DECAYS.to(device)
    offsets, extras = [], []
    off = 0
    for _, p, g, st in items:
        n = p.numel()
        offsets.append((off, n))
        extras.append(tensor_features(X[:, off:off + n], p, g, st, mom, fac, W))
        off += n
    torch.clamp(X[0], -0.1, 0.1, out=X[1])
    torch.add(X[6], 1e-6, out=X[10]).rsqrt_()
    torch.mul(X[3:6], X[10], out=X[7:10])
    torch.mul(X[0], X[10], out=X[14])
    scales = []
    for off, n in offsets:  # each channel normalised over its tensor; the θ row also gives RMS(θ)
        seg = X[:, off:off + n]
        mean_sq = torch.linalg.vector_norm(seg, dim=1).square_().div_(n)
        scales.append(torch.sqrt(mean_sq[2] + 1e-9))
        seg.mul_(torch.rsqrt(mean_sq + 1e-5).unsqueeze(1))
    w_dense, _, _, w_diag, b0, w1, b1, w2, b2 = W
    torch.addmm(b0, w_dense, X, out=H1)
    for (off, n), (_, p, _, _), extra in zip(offsets, items, extras):
        seg = H1[:, off:off + n]
        if extra[0] == "diag":
            seg.addmm_(w_diag, extra[1])
        else:
            _, u_row, d0, u_col, d1 = extra
            h = seg.view(4, *p.shape)
            h.add_(u_row.unsqueeze(d0 + 1)).add_(u_col.unsqueeze(d1 + 1))
    H1.relu_()
    torch.addmm(b1, w1, H1, out=H2).relu_()
    out = torch.addmm(b2, w2, H2, out=X[:2])
    direction = out[0].mul_(out[1].mul_(0.001).exp_())
    ps, steps = [], []
    rate = lr_mult.to(device)
    for (lr, p, _, _), (off, n), scale in zip(items, offsets, scales):
        if lr == 0:
            continue
        s = direction[off:off + n].view(p.shape)
        s.mul_(scale * (rate * (0.001 * lr)))
        ps.append(p), steps.append(s)
    if ps:
        torch._foreach_sub_(ps, steps)
