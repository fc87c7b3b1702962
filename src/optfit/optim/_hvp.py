"""Curvature from Hessian-vector products, shared by AdaHessian and FOSI.

Both optimizers read the Hessian through the gradients' own autograd graph: ``loss.backward(create_graph=True)``
leaves ``g = ∇f(θ)`` differentiable, and one reverse pass of ``gᵀv`` gives ``Hv = ∂(gᵀv)/∂θ`` (Pearlmutter 1994).

* ``hutchinson_diagonal`` — ``z ⊙ Hz`` with Rademacher ``z`` (Hutchinson 1990; Bekas, Kokiopoulou & Saad 2007):
  ``E[z ⊙ Hz]_i = Σ_j H_ij E[z_i z_j] = H_ii``, exact for diagonal ``H``, variance ``Σ_{j≠i} H_ij²`` otherwise.
* ``curvature_step`` — the step of an elementwise optimizer whose update needs a curvature estimate first
  (AdaHessian, Sophia): closure, the non-finite policy, the estimate, the update; the generator is rewound when
  the estimate asks to skip the step or anything fails, and the gradients lose their graph afterwards.
* ``lanczos`` / ``extreme_eigenpairs`` — Lanczos tridiagonalisation with full reorthogonalisation (done twice,
  "twice is enough"): after m steps ``QᵀHQ = T`` (tridiagonal), and the Ritz pairs ``(θ_i, Qᵀs_i)`` of
  ``T s_i = θ_i s_i`` approximate the extreme eigenpairs of ``H`` (Lanczos 1950; Golub & Van Loan §10.1).

Random draws come from a caller-owned CPU ``torch.Generator`` so that trajectories do not depend on the device and
a checkpoint of the generator state resumes them bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._features import first_nonfinite

__all__ = ["GRAPH_HINT", "has_graph", "hvp", "curvature_step", "HutchinsonState", "hutchinson_estimates", "rademacher_like", "hutchinson_diagonal", "lanczos",
           "extreme_eigenpairs"]

GRAPH_HINT = ("compute the gradients with `loss.backward(create_graph=True)` (or pass `step` a closure that "
              "does), so that they carry the autograd graph the Hessian-vector products differentiate")


def has_graph(grads: Sequence[Tensor]) -> bool:
    """Whether any gradient is differentiable (computed under ``create_graph=True``)."""
    return any(g.grad_fn is not None for g in grads)


def hvp(params: Sequence[Tensor], grads: Sequence[Tensor], vectors: Sequence[Tensor], *,
        retain_graph: bool = True) -> list[Tensor]:
    """``Hv`` for every parameter in one reverse pass: ``∂(Σ gᵀv)/∂θ``.

    Gradients without a graph (constant in θ: their Hessian rows are zero) are left out of ``gᵀv``; parameters
    the product does not reach get zeros. ``vectors`` are cast to each gradient's dtype.
    """
    outs = [(g, v.to(g.dtype)) for g, v in zip(grads, vectors) if g.grad_fn is not None]
    if not outs:
        return [torch.zeros_like(p) for p in params]
    with torch.enable_grad():
        hv = torch.autograd.grad([g for g, _ in outs], list(params), grad_outputs=[v for _, v in outs],
                                 retain_graph=retain_graph, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]


def curvature_step(opt, closure: Callable[[], object] | None,
                   estimate: Callable[[list], tuple[bool, list]]) -> object:
    """One step of ``opt`` (an ``ElementwiseOptimizer`` with a ``generator``, ``_hessians`` and
    ``_hessians_by_state``): evaluate ``closure`` (with gradients enabled), gather, apply the non-finite policy,
    then ``estimate(work) -> (ok, work)`` — ``ok=False`` skips the step (counted) — and the update of every group
    (for a ``two_pass`` optimizer: its first pass over every group, then ``_second_pass``). The generator is rewound
    to its state before the estimate when the step is skipped or raises, so a resumed run draws the same probes."""
    loss = None
    if closure is not None:
        with torch.enable_grad():
            loss = closure()
    work = opt._gather()
    if not opt._finite_or_policy(work):
        return loss
    saved = opt.generator.get_state()
    two_pass, pending, write_back = opt.two_pass, [], []
    if two_pass:
        opt._pending, opt._pending_write_back, opt._deferring = [], [], True
    try:
        ok, work = estimate(work)
        if not ok:
            opt.generator.set_state(saved)
            opt.skipped_steps += 1
            return loss
        for group, items in work:
            if items:
                opt._step_group(group, items, loss)
        if two_pass:
            pending, write_back = opt._pending, opt._pending_write_back
    except BaseException:
        opt.generator.set_state(saved)
        raise
    finally:
        if two_pass:
            opt._pending, opt._pending_write_back, opt._deferring = [], [], False
        opt._hessians, opt._hessians_by_state = {}, {}
    if pending:
        opt._second_pass(pending, loss)
    if two_pass:
        opt._write_back(write_back)
    for _, items in work:
        for _, p, _ in items:
            if p.grad is not None and p.grad.requires_grad:
                p.grad = p.grad.detach()
    return loss


def hutchinson_estimates(opt, due: list, transform: Callable[[dict, Tensor], Tensor] | None = None) -> list | None:
    """One Hutchinson sample per entry of ``due`` ((group, index, param, grad), one HVP over all of them):
    ``z ⊙ Hz`` with Rademacher ``z`` from ``opt.generator``, plus λ where the group's decay is coupled (the Hessian of
    the L2 term), then ``transform(group, sample)`` if given. The non-finite policy of each group applies to the
    results: "raise" names the parameter, "skip" returns ``None`` (skip the step)."""
    if not has_graph([g for *_, g in due]):
        raise RuntimeError(f"{type(opt).__name__} needs Hessian-vector products at this step but no gradient has an "
                           f"autograd graph: {GRAPH_HINT}")
    zs = [rademacher_like(g, opt.generator) for *_, g in due]
    hz = hvp([p for _, _, p, _ in due], [g for *_, g in due], zs, retain_graph=False)
    estimates = []
    for (group, *_), z, h in zip(due, zs, hz):
        v = z * h
        if group["decay_mode"] == "coupled" and group["weight_decay"]:
            v = v + group["weight_decay"]
        estimates.append(transform(group, v) if transform is not None else v)
    checked = [i for i, (group, *_) in enumerate(due) if group["nonfinite"] != "ignore"]
    bad = first_nonfinite([estimates[i] for i in checked])
    if bad is not None:
        group, index, p, _ = due[checked[bad]]
        if group["nonfinite"] == "raise":
            raise FloatingPointError(f"non-finite Hessian estimate in {opt._describe(index, p)}; no parameter or "
                                     "state was modified (pass nonfinite='skip' to skip such steps)")
        return None
    return estimates


class HutchinsonState:
    """Mixin for optimizers whose kernel reads a curvature estimate drawn from ``self.generator``:

    * the generator's state travels in ``state_dict()["optfit"]["generator"]``, so a resumed run draws the same
      probes;
    * ``self._hessians`` (the step's estimates by parameter, set by the optimizer's estimate) is handed to the kernel
      as ``self._hessians_by_state`` (by state, in the working dtype), for ``_run_kernel`` to add as ``st["hessian"]``.
    """

    def state_dict(self) -> dict:
        sd = super().state_dict()
        sd["optfit"]["generator"] = self.generator.get_state()
        return sd

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        gen = state_dict.get("optfit", {}).get("generator")
        if gen is not None:
            self.generator.set_state(gen.to(device="cpu", dtype=torch.uint8))

    def _working_set(self, group: dict, items: list) -> tuple[list, list, list, list]:
        targets, work_params, grads, states = super()._working_set(group, items)
        by_param, self._hessians_by_state = self._hessians, {}
        for (_, p, _), wp, st in zip(items, work_params, states):
            d = by_param.get(id(p))
            if d is not None:
                self._hessians_by_state[id(st)] = d.to(wp.dtype)
        return targets, work_params, grads, states

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_hessians", {})
        self.__dict__.setdefault("_hessians_by_state", {})


def rademacher_like(t: Tensor, generator: torch.Generator) -> Tensor:
    """±1 with probability ½ each (``randint`` with the exclusive upper bound 2), shaped and typed like ``t``."""
    bits = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.int8, device=generator.device)
    return bits.to(device=t.device, dtype=t.dtype).mul_(2).sub_(1)


def hutchinson_diagonal(params: Sequence[Tensor], grads: Sequence[Tensor], generator: torch.Generator, *,
                        retain_graph: bool = False) -> list[Tensor]:
    """One Hutchinson sample ``z ⊙ Hz`` per parameter (an unbiased estimate of ``diag H``); one shared ``z``
    over all the parameters, drawn in their order."""
    zs = [rademacher_like(g, generator) for g in grads]
    hz = hvp(params, grads, zs, retain_graph=retain_graph)
    return [z * h for z, h in zip(zs, hz)]


def lanczos(matvec: Callable[[Tensor], Tensor], n: int, order: int, *, generator: torch.Generator,
            dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """``order`` Lanczos steps on the symmetric operator ``matvec`` (ℝⁿ → ℝⁿ) from a random unit start vector.

    Returns ``(alphas, betas, Q)``: the diagonal and off-diagonal of ``T`` (float64) and the orthonormal basis
    ``Q`` (rows, ``dtype``). Stops early when the Krylov space becomes invariant (β below rounding level); then
    ``len(alphas) < order``.
    """
    if n < 1 or order < 1:
        raise ValueError(f"lanczos needs n >= 1 and order >= 1, got n={n}, order={order}")
    order = min(order, n)
    q = torch.randn(n, generator=generator, dtype=torch.float64, device=generator.device).to(device=device, dtype=dtype)
    q /= torch.linalg.vector_norm(q)
    basis = torch.zeros(order, n, dtype=dtype, device=device)
    alphas: list[float] = []
    betas: list[float] = []
    tiny = torch.finfo(dtype).eps
    for i in range(order):
        basis[i] = q
        w = matvec(q).to(dtype)
        alphas.append(float(torch.dot(w.double(), q.double())))
        if i + 1 == order or not math.isfinite(alphas[-1]):
            break
        done = basis[: i + 1]
        for _ in range(2):  # full reorthogonalisation, twice
            w = w - done.T @ (done @ w)
        beta = float(torch.linalg.vector_norm(w.double()))
        if not math.isfinite(beta):
            alphas.append(beta)  # a non-finite T: extreme_eigenpairs reports NaN
            break
        scale = max(max(abs(a) for a in alphas), max(betas, default=0.0))
        if beta <= 100 * tiny * scale or beta == 0.0:
            break  # invariant subspace: T's spectrum is exact for it
        betas.append(beta)
        q = w / beta
    k = len(alphas)
    return (torch.tensor(alphas, dtype=torch.float64), torch.tensor(betas[: k - 1], dtype=torch.float64),
            basis[:k])


def extreme_eigenpairs(matvec: Callable[[Tensor], Tensor], n: int, k: int, l: int = 0, *,
                       order: int | None = None, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                       device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The ``k`` largest and ``l`` smallest (algebraic) Ritz pairs after ``order = 4(k+l)`` Lanczos steps.

    Returns ``(eigenvalues, vectors)``: eigenvalues (float64) largest first, then the ``l`` smallest in
    increasing order; ``vectors`` has one unit row per eigenvalue (``dtype``). Fewer than ``k + l`` rows come back
    when ``n`` or an early invariant subspace leaves fewer Ritz pairs; all NaN when a product was non-finite.
    """
    if k < 0 or l < 0 or k + l == 0:
        raise ValueError(f"extreme_eigenpairs needs k, l >= 0 and k + l >= 1, got k={k}, l={l}")
    order = 4 * (k + l) if order is None else order
    alphas, betas, basis = lanczos(matvec, n, order, generator=generator, dtype=dtype, device=device)
    m = len(alphas)
    if not torch.isfinite(alphas).all():  # a non-finite Hessian-vector product: no spectrum to report
        r = min(k + l, m)
        nan = float("nan")
        return (torch.full((r,), nan, dtype=torch.float64),
                torch.full((r, n), nan, dtype=basis.dtype, device=basis.device))
    tri = torch.diag(alphas)
    if m > 1:
        tri += torch.diag(betas, 1) + torch.diag(betas, -1)
    theta, s = torch.linalg.eigh(tri)  # ascending
    top = list(range(m - 1, max(m - 1 - k, -1), -1))
    bottom = [i for i in range(min(l, m)) if i not in top]
    idx = torch.tensor(top + bottom, dtype=torch.long)
    vectors = s[:, idx].T.to(device=basis.device, dtype=basis.dtype) @ basis
    return theta[idx], vectors
