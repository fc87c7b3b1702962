"""SOAP, ShampoO with Adam in the Preconditioner's eigenbasis (Vyas et al., arXiv 2409.11321; reference code
nikhilvyas/SOAP). Each ≥2-D weight, viewed as the matrix G (rows × cols), keeps Shampoo's factors L, R, uses
only their eigenvectors Q_L, Q_R, and runs Adam (its own m, v) in that rotated basis:

    first step of a parameter:  L = (1−β_s)GGᵀ, R = (1−β_s)GᵀG, Q = eigenvectors (eigh, eigenvalues descending);
                                θ does not move (not even by weight decay); the first gradient builds the basis only
    each later step, k = 1, 2, …:
        G′ = Q_Lᵀ G Q_R                                  (project)
        m ← β₁m + (1−β₁)G′ ;  v ← β₂v + (1−β₂)G′⊙G′      (m and v live in the rotated basis)
        N = Q_L (m/(√v + ε)) Q_Rᵀ                         (project back; ``normalize_grads``: N ← N/RMS(N))
        θ ← θ(1 − ηλ) − η·√(1−β₂ᵏ)/(1−β₁ᵏ)·N           (``correct_bias``; ε is added before the correction)
        L ← β_sL + (1−β_s)GGᵀ ;  R ← β_sR + (1−β_s)GᵀG  (β_s = ``shampoo_beta``, None = β₂)
        if k % F == 0 (F = ``precondition_frequency``), for each factor (L, Q_L) and (R, Q_R):
            order the columns of Q by the estimated eigenvalues diag(QᵀLQ), descending; permute v alike;
            Q ← QR(L·Q)   (one power iteration, then re-orthonormalise)
        and m is rotated from the old basis into the new one: m ← Q_L′ᵀ(Q_L m Q_Rᵀ)Q_R′ (v is only permuted).

A side longer than ``max_precond_dim`` (e.g. a vocabulary) gets no factor: Q is the identity there (plain Adam
along that dimension; both sides too long = Adam). eigh and QR run in float32 (float64 for float64 parameters;
eigh retries in float64 if float32 fails), with the reference's 1e-30·I jitter; batched over a stack of
same-shape matrices. State per matrix: ``exp_avg``, ``exp_avg_sq`` (2×P) and ``L``, ``R``, ``Q_L``, ``Q_R``
(2(rows² + cols²)), kept in the state dtype: for bf16 parameters pass ``state_dtype="float32"``, or Q is rounded
to bf16 after every refresh.

Differences from the reference: decay is applied in torch's order θ(1−ηλ) − ηN (the reference decays after the
step, (θ − ηN)(1−ηλ): equal to first order); the reference's rotation of m out of and back into an unchanged basis
between refreshes is skipped (the same maths); conv kernels are the matrix (out, in·kh·kw) with two factors
(the reference without ``merge_dims`` has one factor per dimension); 1-D tensors, embeddings and the output head
use the internal AdamW in torch's convention (``adamw_*``; the reference runs Adam on 1-D tensors, skipping the
first gradient); ``precondition_1d``, ``merge_dims`` and ``data_format`` are not offered.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._matrix import MatrixOptimizer, matrix_shape

__all__ = ["SOAP", "eigenbasis", "refresh_eigenbasis"]


def eigenbasis(L: Tensor) -> Tensor:
    """Eigenvectors of the symmetric (…, d, d) ``L`` as columns, eigenvalues descending (``eigh`` of L + 1e-30·I in
    L's dtype, float32 at least; float64 if that fails)."""
    A = L.float() if L.dtype in (torch.bfloat16, torch.float16) else L
    jitter = 1e-30 * torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    try:
        Q = torch.linalg.eigh(A + jitter).eigenvectors
    except RuntimeError:  # torch.linalg.LinAlgError: did not converge
        Q = torch.linalg.eigh(A.double() + jitter.double()).eigenvectors.to(A.dtype)
    return Q.flip(-1)


def refresh_eigenbasis(L: Tensor, Q: Tensor) -> tuple[Tensor, Tensor]:
    """One power-iteration step on the stack ``L`` (…, d, d) from the basis ``Q``: columns ordered by the estimated
    eigenvalues diag(QᵀLQ) (descending, stable), then ``QR(L·Q)``. Returns (new Q, the column order)."""
    LQ = L @ Q
    order = (Q * LQ).sum(-2).argsort(dim=-1, descending=True, stable=True)
    LQ = LQ.gather(-1, order.unsqueeze(-2).expand_as(LQ))
    return torch.linalg.qr(LQ).Q, order


def _rotate(X: Tensor, QL: Tensor | None, QR: Tensor | None, back: bool = False) -> Tensor:
    """``Q_Lᵀ X Q_R`` (or ``Q_L X Q_Rᵀ`` with ``back``); a missing side is the identity."""
    if QL is not None:
        X = (QL if back else QL.mT) @ X
    if QR is not None:
        X = X @ (QR.mT if back else QR)
    return X


def _basis(S: dict[str, Tensor], side: str, dtype: torch.dtype) -> Tensor | None:
    """Q_L or Q_R as a (B, d, d) stack in the compute dtype, or None when that side has no factor."""
    Q = S["Q_" + side]
    return Q.to(dtype) if Q.ndim == 3 else None  # else an empty placeholder: the side exceeds max_precond_dim


class SOAP(MatrixOptimizer):
    """SOAP for ≥2-D weights with an internal AdamW for the rest; ``weight_decay`` is decoupled by default."""

    # "step" (the base's 0-d counter, already incremented when the kernel runs) is stacked like the others so the
    # kernel sees each matrix's own step count
    matrix_state = ("step", "exp_avg", "exp_avg_sq", "L", "R", "Q_L", "Q_R")

    def __init__(self, params: Any, lr: float = 3e-3, betas: tuple[float, float] = (0.95, 0.95),
                 shampoo_beta: float | None = None, eps: float = 1e-8, weight_decay: float = 0.01,
                 precondition_frequency: int = 10, max_precond_dim: int = 10000, normalize_grads: bool = False,
                 correct_bias: bool = True, *, adamw_lr: float | None = None,
                 adamw_betas: tuple[float, float] = (0.95, 0.95), adamw_eps: float = 1e-8,
                 adamw_weight_decay: float | None = None, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, shampoo_beta=shampoo_beta, eps=eps,
                                      weight_decay=weight_decay, precondition_frequency=precondition_frequency,
                                      max_precond_dim=max_precond_dim, normalize_grads=normalize_grads,
                                      correct_bias=correct_bias),
                         adamw_lr=adamw_lr, adamw_betas=adamw_betas, adamw_eps=adamw_eps,
                         adamw_weight_decay=adamw_weight_decay, **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.standard(group, "lr", "betas", "eps", "weight_decay")
        if group["shampoo_beta"] is not None:
            V.beta("shampoo_beta", group["shampoo_beta"])
        V.integer("precondition_frequency", group["precondition_frequency"], 1)
        V.integer("max_precond_dim", group["max_precond_dim"], 0)
        V.flag("normalize_grads", group["normalize_grads"])
        V.flag("correct_bias", group["correct_bias"])

    def _init_matrix_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        """m, v of the parameter's shape; per side d ≤ ``max_precond_dim``: L (or R) and Q as d×d (filled at the
        first step), else empty placeholders. ``state["step"]`` is the base's."""
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
        for side, d in zip(("L", "R"), matrix_shape(p)):
            shape = (d, d) if d <= group["max_precond_dim"] else (0,)
            state[side] = p.new_zeros(shape)
            state["Q_" + side] = p.new_zeros(shape)

    def _step_group(self, group: dict[str, Any], items: list, loss: Any) -> None:
        """A parameter's first step only builds its preconditioner: it runs with lr = 0 (θ stays, decay too)."""
        if group["kind"] == "matrix":
            fresh = {i for i, p, _ in items if not self.state.get(p)}
            if fresh:
                super()._step_group({**group, "lr": 0.0}, [it for it in items if it[0] in fresh], loss)
                items = [it for it in items if it[0] not in fresh]
        if items:
            super()._step_group(group, items, loss)

    @staticmethod
    def _kernel(G: Tensor, S: dict[str, Tensor], group: dict[str, Any]) -> Tensor:
        dtype = torch.float64 if G.dtype == torch.float64 else torch.float32  # eigenbasis maths: fp32 at least
        Gc = G.to(dtype)
        b1, b2 = group["betas"]
        b_sh = b2 if group["shampoo_beta"] is None else group["shampoo_beta"]
        QL, QR = _basis(S, "L", dtype), _basis(S, "R", dtype)
        steps = [int(s) for s in S["step"].tolist()]  # calls so far, this one included
        if steps[0] == 1:  # first step (SOAP._step_group never stacks first and later steps): basis only
            for side, Q, outer in (("L", QL, lambda: Gc @ Gc.mT), ("R", QR, lambda: Gc.mT @ Gc)):
                if Q is not None:
                    S[side].lerp_(outer().to(S[side].dtype), 1 - b_sh)
                    S["Q_" + side].copy_(eigenbasis(S[side].to(dtype)))
            return torch.zeros_like(G)

        m, v = S["exp_avg"], S["exp_avg_sq"]
        Gp = _rotate(Gc, QL, QR).to(m.dtype)
        m.lerp_(Gp, 1 - b1)
        v.mul_(b2).addcmul_(Gp, Gp, value=1 - b2)
        N = _rotate(m.to(dtype) / (v.to(dtype).sqrt() + group["eps"]), QL, QR, back=True)
        if group["normalize_grads"]:
            N = N / (N.square().mean((-2, -1), keepdim=True).sqrt() + 1e-30)
        ks = [s - 1 for s in steps]  # Adam's count: the first gradient made no step
        if group["correct_bias"]:
            scale = [math.sqrt(1 - b2**k) / (1 - b1**k) for k in ks]
            N = N * (scale[0] if len(set(scale)) == 1 else N.new_tensor(scale).view(-1, 1, 1))

        # Shampoo's factors take the current gradient after the step (it never projects itself)
        if QL is not None:
            S["L"].lerp_((Gc @ Gc.mT).to(S["L"].dtype), 1 - b_sh)
        if QR is not None:
            S["R"].lerp_((Gc.mT @ Gc).to(S["R"].dtype), 1 - b_sh)
        due = [j for j, k in enumerate(ks) if k % group["precondition_frequency"] == 0]
        if due and (QL is not None or QR is not None):
            _refresh(S, due, len(ks), dtype)
        return N.to(G.dtype)


def _refresh(S: dict[str, Tensor], due: list[int], size: int, dtype: torch.dtype) -> None:
    """New bases for the matrices ``due`` of the stack: m back to the original basis with the old Q, each factor's
    power-iteration/QR step (v permuted along that dimension by the new column order), m into the new basis."""
    sel: Any = slice(None) if len(due) == size else torch.tensor(due, device=S["exp_avg"].device)
    m, v = S["exp_avg"], S["exp_avg_sq"]
    old = {side: (S[side][sel].to(dtype), S["Q_" + side][sel].to(dtype)) if S["Q_" + side].ndim == 3
           else (None, None) for side in ("L", "R")}
    M = _rotate(m[sel].to(dtype), old["L"][1], old["R"][1], back=True)
    v_sel = v[sel]
    new: dict[str, Tensor | None] = {"L": None, "R": None}
    for side, dim in (("L", -2), ("R", -1)):
        F, Q = old[side]
        if F is None:
            continue
        new[side], order = refresh_eigenbasis(F, Q)
        index = order.unsqueeze(-1) if dim == -2 else order.unsqueeze(-2)
        v_sel = v_sel.gather(dim, index.expand_as(v_sel))
        S["Q_" + side][sel] = new[side].to(S["Q_" + side].dtype)
    v[sel] = v_sel
    m[sel] = _rotate(M, new["L"], new["R"]).to(m.dtype)


register(OptimizerInfo(
    name="soap", cls=SOAP, family="matrix", paper="arXiv:2409.11321", state_tensors=2,
    description="SOAP: Adam run in the eigenbasis of Shampoo's factors L = EMA(GGᵀ), R = EMA(GᵀG) (extra "
                "2(rows² + cols²) per matrix), the basis refreshed every 10 steps by one power iteration + QR; "
                "the first step only builds the basis; sides > max_precond_dim unrotated; embeddings, head and "
                "vectors use an internal AdamW.",
    has_betas=True, has_momentum=True, supports_cautious=False, supports_complex=False,
    test_hparams={"lr": 0.05}))
