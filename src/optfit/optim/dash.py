"""DASH, Distributed Accelerated SHampoo (Modoranu et al., arXiv 2602.02016; catalogue C6), single-device:
Distributed Shampoo with Adam grafting whose same-size blocks are stacked and preconditioned by batched
kernels. For each block, with t the step:

    L ← β_LR L + (1−β_LR) GGᵀ ;  R ← β_LR R + (1−β_LR) GᵀG           (betas = (β_G, β_LR); no bias correction)
    A ← β_g A + (1−β_g) G²                                           (Adam grafting state, raw G)
    G̃ ← β_G G̃ + (1−β_G) G                                            (if β_G > 0)
    every F steps from t = T₀: L̄ = (L + εI)^{−1/4}, R̄ = (R + εI)^{−1/4}
    P_g = (G̃/(1−β_Gᵗ)) / (ε_g + √(A/(1−β_gᵗ)))
    P = (‖P_g‖_F/‖L̄ G̃ R̄‖_F) · L̄ G̃ R̄    (before T₀: P = P_g)
    M ← μM + P ;  P ← P + μM (``nesterov``) or M   (if μ > 0)
    θ ← θ(1 − ηλ) − ηP                                                (decoupled decay)

This is ``optfit.optim.Shampoo`` with ``grafting="adam"``, DASH's defaults and factors that are not
bias-corrected (with grafting only ε sees that scale). Batching is ``impl="foreach"`` (every same-shape
block of a param group, across parameters, in one stack; one batched root per stack). Root methods:
``"eigh"`` (EVD, DASH's default), ``"newton"`` (coupled Newton, "CN") and ``"ndb"`` (Newton–Denman–Beavers
with power-iteration scaling by 2·λ̂_max); ``newton_iters`` = DASH's newton_steps. With 10 steps (measured,
relative error of (A + εI)^{−1/4}): NDB 1e-7 at condition number 10², 5e-4 at 3·10², 2 % at 10³; coupled
Newton 2e-5 at 10³, 0.3 % at 3·10³; raise it for worse-conditioned factors. Not implemented: the Chebyshev
root (not catalogued in full), bf16/fp16 Newton matmuls, the reference's "every k steps and at t = 1"
refresh (here: t = T₀, T₀ + F, …) and its second ε in the eigenvalue fix; 1-D parameters go to the internal
AdamW (DASH: AdamW with β (0.9, 0.95), ε 1e-8). The DashConfig defaults leave lr to the training script;
1e-3 (AdamW-like, as the graft is Adam) is this class's choice.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..registry import OptimizerInfo, register
from .shampoo import Shampoo

__all__ = ["DASH"]


class DASH(Shampoo):
    """DASH: Shampoo with Adam grafting and DASH's defaults (β_G 0.9, β_LR 0.95, β_graft 0.95, ε 1e-10, F 10)."""

    factor_bias_correction: ClassVar[bool] = False

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-10,
                 weight_decay: float = 0.0, block_size: int = 1024, precondition_frequency: int = 10,
                 start_preconditioning_step: int = 1, graft_beta2: float = 0.95, graft_eps: float = 1e-8,
                 momentum: float = 0.0, nesterov: bool = True, bias_correction: bool = True,
                 root_method: str = "eigh", newton_iters: int = 10, *, adamw_lr: float | None = None,
                 adamw_betas: tuple[float, float] = (0.9, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float | None = None, **options: Any) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, block_size=block_size,
                         precondition_frequency=precondition_frequency,
                         start_preconditioning_step=start_preconditioning_step, grafting="adam",
                         graft_beta2=graft_beta2, graft_eps=graft_eps, momentum=momentum, nesterov=nesterov,
                         bias_correction=bias_correction, root_method=root_method, newton_iters=newton_iters,
                         adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                         adamw_weight_decay=adamw_weight_decay, **options)


register(OptimizerInfo(
    name="dash", cls=DASH, family="matrix", paper="arXiv:2602.02016", state_tensors=2,
    description="DASH: batched block Shampoo (same-size blocks stacked, one batched inverse root per stack by "
                "eigh, coupled Newton or Newton–Denman–Beavers every 10 steps) on an EMA of the gradient, grafted "
                "to Adam's per-block norm; factors L, R and roots as Shampoo's; embeddings, head and vectors use an "
                "internal AdamW.",
    has_betas=True, has_momentum=True, supports_cautious=False, supports_complex=False,
    test_hparams={"lr": 0.03}))
