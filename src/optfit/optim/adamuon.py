"""AdaMuon (Si, Zhang, Shen, arXiv 2507.11005), the sign-stabilised version of the authors' current code:

    M ← βM + (1−β)G ;  U = (1−β)G + βM  (``nesterov``, default)  or  U = M
    O = NS5(sign(U))                              (orthogonalise the sign pattern)
    V ← βV + (1−β)O⊙O                             (the same β, no bias correction)
    Ô = O/(√V + ε)
    Ô ← Ô · ρ√(rows·cols)/(‖Ô‖_F + ε)            (RMS(Ô) = ρ = ``target_rms``, 0.2 like AdamW's updates)
    θ ← θ(1 − ηλ) − ηÔ

so AdamW's learning rates carry over (paper runs: lr 6e-4, λ 0.1). The first release (no sign, separate
β₂ = 0.999 with bias correction) is not implemented. kozistr's port also multiplies η by Muon's shape factor,
a double scaling this class does not have. Non-matrix parameters use the internal AdamW (``adamw_*``;
``adamw_lr=None`` = the same lr, as in the paper). For bf16 parameters pass ``state_dtype="float32"``: V
divides O entrywise and should not be rounded to bf16.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._matrix import MatrixOptimizer
from .muon import check_ns, nesterov_ema
from .newton_schulz import MUON_COEFFICIENTS, orthogonalize

__all__ = ["AdaMuon"]


class AdaMuon(MatrixOptimizer):
    """AdaMuon; state per matrix: ``momentum_buffer`` (M) and ``exp_avg_sq`` (V, the EMA of O⊙O)."""

    matrix_state = ("momentum_buffer", "exp_avg_sq")

    def __init__(self, params: Any, lr: float = 6e-4, momentum: float = 0.95, nesterov: bool = True,
                 eps: float = 1e-8, weight_decay: float = 0.1, target_rms: float = 0.2, ns_steps: int = 5,
                 ns_coefficients: Any = MUON_COEFFICIENTS, *, adamw_lr: float | None = None,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, eps=eps,
                                      weight_decay=weight_decay, target_rms=target_rms, ns_steps=ns_steps,
                                      ns_coefficients=ns_coefficients),
                         adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                         adamw_weight_decay=adamw_weight_decay, **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "eps", "weight_decay")
        V.beta("momentum", group["momentum"])
        V.flag("nesterov", group["nesterov"])
        V.positive("target_rms", group["target_rms"])
        check_ns(group)

    @staticmethod
    def _kernel(G: Tensor, S: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
        beta, eps = group["momentum"], group["eps"]
        U = nesterov_ema(G, S["momentum_buffer"], beta, group["nesterov"])
        O = orthogonalize(U.sign(), group["ns_steps"], group["ns_coefficients"])
        V_ = S["exp_avg_sq"]
        V_.mul_(beta).addcmul_(O, O, value=1 - beta)
        D = O / (V_.sqrt() + eps)
        rows, cols = G.shape[-2], G.shape[-1]
        norm = torch.linalg.vector_norm(D, dim=(-2, -1), keepdim=True)
        return D.mul_(group["target_rms"] * math.sqrt(rows * cols) / (norm + eps))


register(OptimizerInfo(
    name="adamuon", cls=AdaMuon, family="matrix", paper="arXiv:2507.11005", state_tensors=2,
    description="AdaMuon: Newton–Schulz of sign(Nesterov momentum), divided by √EMA(O²), rescaled to RMS 0.2 so "
                "AdamW learning rates carry over; embeddings, head and vectors use an internal AdamW.",
    has_momentum=True, supports_cautious=False, supports_complex=False,
    test_hparams={"lr": 0.1}))
