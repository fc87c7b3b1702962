"""Muon, MomentUm Orthogonalized by Newton–Schulz (K. Jordan et al., kellerjordan.github.io/posts/muon;
shape scaling of Moonlight, Liu et al., arXiv 2502.16982). For each ≥2-D weight, viewed as a matrix:

    B ← βB + (1−β)G                              (EMA momentum, β = ``momentum``)
    U = (1−β)G + βB  (``nesterov``, default)  or  U = B
    O = NS5(U) · s                               (``optfit.optim.orthogonalize``, singular values → ~1)
    θ ← θ(1 − ηλ) − ηO

``adjust_lr_fn`` picks s: ``"original"`` √max(1, rows/cols) (the step is η in spectral norm) or
``"match_rms_adamw"`` 0.2·√max(rows, cols) (update RMS ≈ 0.2η like AdamW's, so AdamW's lr and λ carry over).
rows/cols are those of the flattened matrix: a conv kernel (out, in, kh, kw) is (out, in·kh·kw) (the reference
code takes them from the 4-D shape, i.e. kh/kw). Embeddings, the output head, biases, norm gains and scalars
belong to the internal AdamW (``adamw_*``; see ``optfit.optim._matrix``). Unlike the reference, ``p.grad`` is
not modified and Newton–Schulz runs in float32 for bf16 parameters on CPU. Hyperparameter names are
``torch.optim.Muon``'s; the defaults are the reference's (lr 0.02, λ 0; torch: lr 1e-3, λ 0.1, NS in bf16).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._matrix import ADJUST_LR_FNS, MatrixOptimizer, shape_scale
from .newton_schulz import MUON_COEFFICIENTS, check_coefficients, orthogonalize

__all__ = ["Muon"]


def nesterov_ema(G: Tensor, M: Tensor, beta: float, nesterov: bool) -> Tensor:
    """``M ← βM + (1−β)G`` in place; return ``(1−β)G + βM`` (Nesterov) or ``M``."""
    M.lerp_(G, 1 - beta)
    return G.lerp(M, beta) if nesterov else M


def check_ns(group: dict[str, Any]) -> None:
    """The Newton–Schulz hyperparameters every matrix optimizer shares."""
    V.integer("ns_steps", group["ns_steps"], 1)
    check_coefficients("ns_coefficients", group["ns_coefficients"], group["ns_steps"])


class Muon(MatrixOptimizer):
    """Muon with an internal AdamW for the non-matrix parameters; ``weight_decay`` is decoupled by default."""

    matrix_state = ("momentum_buffer",)

    def __init__(self, params: Any, lr: float = 0.02, momentum: float = 0.95, nesterov: bool = True,
                 weight_decay: float = 0.0, adjust_lr_fn: str = "original", ns_steps: int = 5,
                 ns_coefficients: Any = MUON_COEFFICIENTS, *, adamw_lr: float | None = 3e-4,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-10,
                 adamw_weight_decay: float | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                                      adjust_lr_fn=adjust_lr_fn, ns_steps=ns_steps, ns_coefficients=ns_coefficients),
                         adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                         adamw_weight_decay=adamw_weight_decay, **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "weight_decay")
        V.beta("momentum", group["momentum"])
        V.flag("nesterov", group["nesterov"])
        V.choice("adjust_lr_fn", group["adjust_lr_fn"], ADJUST_LR_FNS)
        check_ns(group)

    @staticmethod
    def _kernel(G: Tensor, S: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
        U = nesterov_ema(G, S["momentum_buffer"], group["momentum"], group["nesterov"])
        O = orthogonalize(U, group["ns_steps"], group["ns_coefficients"])
        return O.mul_(shape_scale(group["adjust_lr_fn"], G.shape[-2], G.shape[-1]))


register(OptimizerInfo(
    name="muon", cls=Muon, family="matrix", paper="kellerjordan.github.io/posts/muon", state_tensors=1,
    description="Muon: Nesterov EMA momentum orthogonalised by 5 quintic Newton–Schulz steps (same-shape matrices "
                "batched), scaled by √max(1, rows/cols) or 0.2·√max(rows, cols); embeddings, head and vectors "
                "use an internal AdamW (adamw_*).",
    has_momentum=True, supports_cautious=False, supports_complex=False,
    test_hparams={"lr": 0.05, "adamw_lr": 0.05}))
