"""ROOT, Robust Orthogonalized Optimizer (He et al., arXiv 2511.20626), as in the paper's algorithm and the
released example:

    M ← μM + G                                    (heavy-ball sum, no (1−μ) factor)
    U = G + μM  (``nesterov``, default)  or  U = M
    ε_t = quantile_q(|U|) + 1e-9                  (per matrix, q = ``outlier_quantile`` = 0.9)
    B = clamp(U, −ε_t, ε_t)                       (robust base; U − B = sign(U)·max(|U| − ε_t, 0) are the outliers)
    X = NS5(B) with ROOT's shape-keyed coefficients (Muon's outside the published table)
    θ ← θ(1 − ηλ) − η·s·X                         (s: ``adjust_lr_fn``, default 0.2·√max(rows, cols))

Only the base is orthogonalised; the outliers are dropped. The quantile is a selection (``topk``; linear
interpolation as ``torch.quantile``), so it works on matrices above ``torch.quantile``'s 16M-element limit;
``outlier_quantile=1`` disables the clipping. The internal AdamW (``adamw_*``) uses torch's ε convention,
not the reference's ε added to √v before bias correction.

The paper publishes coefficients for four shapes only. Matrices of other shapes use Muon's; this is said once, on
the ``optfit.optim.root`` logger (WARNING), when the optimizer is built: one message naming every such shape,
and never again in the process for those shapes (steps do not log).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from . import newton_schulz
from ._matrix import ADJUST_LR_FNS, MatrixOptimizer, matrix_shape, shape_scale
from .muon import check_ns
from .newton_schulz import MUON_COEFFICIENTS, ROOT_COEFFICIENTS, orthogonalize

_log = logging.getLogger(__name__)

__all__ = ["ROOT", "abs_quantile", "clip_outliers"]


def abs_quantile(U: Tensor, q: float) -> Tensor:
    """``torch.quantile(|U|, q)`` (linear interpolation) of each matrix over the last two dims, shape (…, 1, 1).

    The two order statistics around q·(n−1) come from a partial selection (``topk`` from the nearer end, then
    the two extreme values of that part): no sort and no size limit. ``kthvalue`` is avoided on purpose: its
    CPU quickselect is quadratic on some orderings (a rotated ramp of 640k values takes seconds)."""
    flat = U.abs().flatten(-2)
    n = flat.shape[-1]
    if n == 0:
        return flat.new_zeros(*flat.shape[:-1], 1, 1)
    pos = q * (n - 1)
    lo = min(int(math.floor(pos)), n - 1)
    if n - lo <= lo + 2:  # the n − lo largest values; their two smallest are the order statistics lo, lo + 1
        part = flat.topk(n - lo, dim=-1, largest=True, sorted=False).values
        two = part.topk(min(2, n - lo), dim=-1, largest=False, sorted=True).values
        low, high = two[..., :1], two[..., -1:]
    else:  # the lo + 2 smallest; their two largest are the order statistics lo + 1, lo
        part = flat.topk(lo + 2, dim=-1, largest=False, sorted=False).values
        two = part.topk(2, dim=-1, largest=True, sorted=True).values
        low, high = two[..., 1:], two[..., :1]
    return torch.lerp(low, high, pos - lo).unsqueeze(-1)


def clip_outliers(U: Tensor, q: float = 0.9) -> tuple[Tensor, Tensor]:
    """``(B, ε)``: the base ``clamp(U, −ε, ε)`` and the threshold ``ε = quantile_q(|U|) + 1e-9`` per matrix."""
    eps = abs_quantile(U, q) + 1e-9
    return torch.minimum(torch.maximum(U, -eps), eps), eps


class ROOT(MatrixOptimizer):
    """ROOT; ``weight_decay`` is decoupled by default. Non-matrix parameters use the internal AdamW."""

    matrix_state = ("momentum_buffer",)

    def __init__(self, params: Any, lr: float = 1e-3, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.1, outlier_quantile: float = 0.9, adjust_lr_fn: str = "match_rms_adamw",
                 ns_steps: int = 5, ns_coefficients: Any = "root", *, adamw_lr: float | None = None,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      outlier_quantile=outlier_quantile, adjust_lr_fn=adjust_lr_fn,
                                      ns_steps=ns_steps, ns_coefficients=ns_coefficients),
                         adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                         adamw_weight_decay=adamw_weight_decay, **options)
        self._report_unfitted_shapes()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if "_root_built" in self.__dict__:  # a group added after construction
            self._report_unfitted_shapes()

    def _report_unfitted_shapes(self) -> None:
        """One log message for the matrix shapes without published coefficients, not yet reported in this
        process; they are marked as reported, so ``orthogonalize`` does not log them again."""
        self._root_built = True
        new: list[tuple[int, int]] = []
        for group in self.param_groups:
            if group.get("kind") != "matrix" or group.get("ns_coefficients") != "root":
                continue
            for p in group["params"]:
                rows, cols = matrix_shape(p)
                key = (min(rows, cols), max(rows, cols))
                if key not in ROOT_COEFFICIENTS and key not in newton_schulz._warned and key not in new:
                    new.append(key)
        if new:
            newton_schulz._warned.update(new)
            _log.warning("ROOT has no fitted Newton-Schulz coefficients for %d matrix shape(s) (%s); Muon's %s are "
                         "used for them (the paper publishes %s only)", len(new),
                         ", ".join(f"{a}x{b}" for a, b in new), MUON_COEFFICIENTS,
                         ", ".join(f"{a}x{b}" for a, b in ROOT_COEFFICIENTS))

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "weight_decay")
        V.beta("momentum", group["momentum"])
        V.flag("nesterov", group["nesterov"])
        V.in_range("outlier_quantile", group["outlier_quantile"], 0.0, 1.0, hi_open=False, lo_open=True)
        V.choice("adjust_lr_fn", group["adjust_lr_fn"], ADJUST_LR_FNS)
        check_ns(group)

    @staticmethod
    def _kernel(G: Tensor, S: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
        mu, M = group["momentum"], S["momentum_buffer"]
        M.mul_(mu).add_(G)
        U = G.add(M, alpha=mu) if group["nesterov"] else M
        base, _ = clip_outliers(U, group["outlier_quantile"])
        X = orthogonalize(base, group["ns_steps"], group["ns_coefficients"])
        return X.mul_(shape_scale(group["adjust_lr_fn"], G.shape[-2], G.shape[-1]))


register(OptimizerInfo(
    name="root", cls=ROOT, family="matrix", paper="arXiv:2511.20626", state_tensors=1,
    description="ROOT: heavy-ball Nesterov momentum clipped at the 90th percentile of its magnitudes (outliers "
                "dropped), orthogonalised by Newton–Schulz with shape-keyed coefficients, scaled 0.2·√max(rows, cols); "
                "embeddings, head and vectors use an internal AdamW.",
    has_momentum=True, supports_cautious=False, supports_complex=False,
    test_hparams={"lr": 0.1}))
