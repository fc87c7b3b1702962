"""FOSI (Sivan, Gabel & Schuster, ICML 2023, arXiv 2302.08484): Newton's method on the Hessian's extreme
eigen-subspace, any first-order base optimizer on its orthogonal complement.

Every ``update_freq`` steps from step ``warmup`` on, Lanczos (order 4(k+ℓ), full reorthogonalisation) on the
Hessian of the current loss estimates the k largest and ℓ smallest eigenpairs (λ_i, v_i); V holds the v_i as rows.
With g the gradient of every parameter flattened together:

    c = V g ;  g₁ = Vᵀc ;  g₂ = g − g₁                       (g₁ ∈ span V, g₂ ⟂ span V)
    u ← βu + (1−β)c   ("ema", the Adam wrapper)   or   u ← c + βu   ("heavy-ball");  β = momentum
    d_newton = Vᵀ diag(1/|λ_i|) u
    d_base   = Δθ of the base optimizer fed g₂ ;  d_base ← d_base − VᵀV d_base
    θ ← θ + s·d_base − α·(η/η₀)·d_newton ,   s = clip(|λ₁|/|λ_k|, 1, lr_clip)

k = ``top_k`` (5), ℓ = ``bottom_l`` (0), α = ``alpha`` (0.1) and β (0.9) are the reference Adam wrapper's defaults.
s lets the base take larger steps once the top-k curvature is handled by Newton (``lr_clip=None``: 1 for adaptive
bases, where lr is not tied to curvature, as the reference's Adam wrapper; 3 otherwise). η/η₀ (the group's lr
over its initial lr) makes an lr schedule scale the Newton part too, so a group at lr 0 does not move. Before the
first estimate, and always with k = ℓ = 0, a step is exactly the base optimizer's step.

Deliberate differences from the reference PyTorch port (catalog D3): the Hessian is the current mini-batch's,
through the gradients' own graph (``loss.backward(create_graph=True)``, ``needs_create_graph = True``; only
refresh steps need it: ``next_step_needs_graph()``), not a fixed batch; the velocity lives in eigen-coordinates
(m numbers, not a P-vector) and is carried into a new basis by projection (the reference's full-length velocity
keeps an outside part that has decayed by β^F ≈ 3e-5 when it would matter); pairs with |λ| ≤ 1e-6·max|λ| get no
Newton step (1/|λ| would explode); Lanczos stops early on an invariant subspace instead of dividing by zero; a
non-finite Hessian follows the ``nonfinite`` policy like a gradient. The Lanczos start vector comes from a CPU
generator seeded by ``seed`` whose state is in the state_dict.

``maximize=True`` (passed to the base) works with −f throughout: the gradients are negated with their graph, so
Lanczos sees the Hessian of −f too. k, ℓ, α, β, ``momentum_style`` and ``lr_clip`` are optimizer-wide (the
velocity lives in the eigen-coordinates of all parameters together): they are attributes (``opt.momentum``,
``opt.alpha``, …, read at every step), not param-group keys; ``param_groups`` and ``defaults`` are the base's, so an LR scheduler
(``cycle_momentum`` too) drives the base, and the Newton part follows the lr ratio η/η₀. The base's step runs
inside FOSI's without its hooks (step, state-dict and load hooks registered on FOSI run once, on FOSI).

Weight decay belongs in the loss (add ½λ‖θ‖² to it): decay done by the base would make the eigen-estimates refer
to another objective, so the base gets ``weight_decay=0`` unless ``base_kwargs`` says otherwise. Memory: k+ℓ
parameter-sized rows (``fosi_V``, one slice per parameter) + the base's state + a transient 4(k+ℓ)×P Lanczos basis
and a copy of θ per step. Complex parameters are rejected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from . import _hvp
from . import _validation as V
from ..registry import OptimizerInfo, optimizer_info, register
from ._base import _HOOK_ATTRS, _LOW_PRECISION, LR0, ElementwiseOptimizer

__all__ = ["FOSI"]

MOMENTUM_STYLES = ("ema", "heavy-ball")
_NEGLIGIBLE = 1e-6  # eigenvalues below this fraction of the largest |λ| get no Newton step


class _SkipStep(Exception):
    """A refresh met a non-finite Hessian under ``nonfinite="skip"``."""


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _step_without_hooks(opt: Optimizer) -> Any:
    """``opt.step()`` without the step hooks torch wraps around it (its own and the global ones): the inner
    optimizer's step is part of FOSI's, whose hooks run once around the whole."""
    step = type(opt).step
    if getattr(step, "hooked", False):
        step = step.__wrapped__
    return step(opt)


class FOSI(Optimizer):
    """FOSI around a registered base optimizer (``base``, ``base_kwargs``); ``lr`` and the options ``nonfinite``,
    ``impl``, ``state_dtype``, ``maximize`` go to the base. ``param_groups``, ``defaults`` and ``state`` are the
    base's own."""

    needs_create_graph = True
    needs_closure = False
    supports_complex = False
    OPTIONS = ("nonfinite", "impl", "state_dtype", "maximize")

    def __init__(self, params: Any, lr: float | None = None, base: str = "adam", base_kwargs: dict | None = None,
                 top_k: int = 5, bottom_l: int = 0, update_freq: int = 100, warmup: int | None = None,
                 alpha: float = 0.1, momentum: float = 0.9, momentum_style: str = "ema",
                 lr_clip: float | None = None, seed: int = 0, **options: Any) -> None:
        unknown = set(options) - set(self.OPTIONS)
        if unknown:
            raise TypeError(f"FOSI got unexpected keyword argument(s) {sorted(unknown)}; base hyperparameters go "
                            f"in base_kwargs, options accepted here: {list(self.OPTIONS)}")
        if lr is not None:
            V.nonneg("lr", lr)
        V.integer("top_k", top_k)
        V.integer("bottom_l", bottom_l)
        V.integer("update_freq", update_freq, minimum=1)
        warmup = update_freq if warmup is None else V.integer("warmup", warmup, minimum=1)
        V.nonneg("alpha", alpha)
        V.beta("momentum", momentum)
        V.choice("momentum_style", momentum_style, MOMENTUM_STYLES)
        if lr_clip is not None:
            V.in_range("lr_clip", lr_clip, 1.0, math.inf)
        V.integer("seed", seed)
        info = self._base_info(base)
        if base_kwargs is not None and not isinstance(base_kwargs, dict):
            raise ValueError(f"Invalid base_kwargs: {base_kwargs!r} (must be a dict of {info.name} hyperparameters)")
        kwargs = dict(base_kwargs or {})
        clash = sorted(set(kwargs) & (set(options) | ({"lr"} if lr is not None else set())))
        if clash:
            raise ValueError(f"Invalid base_kwargs: {clash} also given to FOSI directly; give each once")
        if "weight_decay" in info.defaults and "weight_decay" not in info.preset:
            kwargs.setdefault("weight_decay", 0.0)  # decay belongs in the loss (see the module docstring)
        kwargs.update(options)
        if lr is not None:
            kwargs["lr"] = lr
        from ..factory import create_optimizer  # the factory imports the registry, which imports optim

        params = list(params) if not isinstance(params, Tensor) else params
        self.base: ElementwiseOptimizer = create_optimizer(params, info.name, **kwargs)  # type: ignore[assignment]
        self.top_k, self.bottom_l, self.update_freq, self.warmup = top_k, bottom_l, update_freq, warmup
        self.alpha, self.momentum, self.momentum_style, self.seed = alpha, momentum, momentum_style, seed
        self.lr_clip = (1.0 if info.family == "adaptive" else 3.0) if lr_clip is None else float(lr_clip)
        self.base_name = info.name
        self.generator = torch.Generator().manual_seed(seed)
        self._fosi = self._fresh_state()
        self._building = True
        super().__init__(self.base.param_groups, {})
        self._building = False
        self._share_base()
        self.defaults = self.base.defaults  # the param groups are the base's: so are their defaults

    def _offered_impls(self) -> tuple[str, ...]:
        """``impl`` belongs to the base optimizer."""
        return self.base._offered_impls()

    @staticmethod
    def _base_info(base: Any):
        try:
            info = optimizer_info(base)
        except (ValueError, TypeError) as err:
            raise ValueError(f"Invalid base: {base!r} ({err})") from None
        if not issubclass(info.cls, ElementwiseOptimizer) or info.needs_closure \
                or getattr(info.cls, "needs_create_graph", False):
            raise ValueError(f"Invalid base: {base!r} (FOSI needs a first-order optfit optimizer whose step() takes "
                             "the gradient alone: no closure, no curvature of its own)")
        return info

    def _fresh_state(self) -> dict[str, Any]:
        m = self.top_k + self.bottom_l
        return {"step": 0, "has_basis": False, "eigenvalues": torch.zeros(m, dtype=torch.float64),
                "inv_eig": torch.zeros(m, dtype=torch.float64), "velocity": torch.zeros(m, dtype=torch.float64),
                "scaling": 1.0}

    def _share_base(self) -> None:
        self.param_groups = self.base.param_groups
        self.state = self.base.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_building", False):
            super().add_param_group(param_group)  # the base's own group dicts, during __init__
        else:
            self.base.add_param_group(param_group)

    def set_param_names(self, names: Any) -> None:
        """Names used in error messages (as ``ElementwiseOptimizer.set_param_names``)."""
        self.base.set_param_names(names)

    @property
    def skipped_steps(self) -> int:
        return self.base.skipped_steps

    @property
    def eigenvalues(self) -> Tensor:
        """The latest estimate: k largest first, then the ℓ smallest (zeros before the first estimate)."""
        return self._fosi["eigenvalues"].clone()

    def next_step_needs_graph(self) -> bool:
        """Whether the next ``step()`` runs Lanczos (then the gradients need ``create_graph=True``; the other
        steps accept a plain ``backward()``, which is cheaper)."""
        t = self._fosi["step"] + 1
        return self.top_k + self.bottom_l > 0 and t >= self.warmup and (t - self.warmup) % self.update_freq == 0

    # ------------------------------------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; the gradients (from ``closure`` if given) must come from ``backward(create_graph=True)``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        base = self.base
        work = base._gather()
        items = [(group, index, p, g) for group, its in work for index, p, g in its]
        for _, index, p, _ in items:
            if p.is_complex():
                raise RuntimeError(f"FOSI does not support complex parameters ({base._describe(index, p)}); split "
                                   "them with torch.view_as_real")
        if not base._finite_or_policy(work) or not items:
            return loss
        m, t = self.top_k + self.bottom_l, self._fosi["step"] + 1
        new_basis = None
        if self.next_step_needs_graph():
            if not _hvp.has_graph([g for *_, g in items]):
                raise RuntimeError(f"FOSI estimates the Hessian at this step (step {t}) but no gradient has an "
                                   f"autograd graph: {_hvp.GRAPH_HINT}")
            saved = self.generator.get_state()
            try:
                new_basis = self._estimate(items)
            except _SkipStep:
                self.generator.set_state(saved)
                base.skipped_steps += 1
                return loss
            except BaseException:
                self.generator.set_state(saved)
                raise
        if new_basis is None and not self._fosi["has_basis"]:
            _step_without_hooks(base)
        else:
            self._fosi_step(items, new_basis)
        self._fosi["step"] = t
        if m:
            self._allocate(items, new_basis)
        for _, _, p, _ in items:
            if p.grad is not None and p.grad.requires_grad:
                p.grad = p.grad.detach()  # frees the graph, breaks the param ↔ grad cycle of create_graph
        return loss

    def _estimate(self, items: list) -> dict[int, Tensor]:
        """Lanczos on the current Hessian: new eigen-pairs, the scaling s, the velocity carried into the new
        basis. Returns the new rows of V per parameter (in the compute dtype)."""
        ps, gs = [p for _, _, p, _ in items], [g for *_, g in items]
        sizes = [p.numel() for p in ps]
        dtype = torch.float64 if any(p.dtype == torch.float64 for p in ps) else torch.float32
        device = ps[0].device

        def matvec(v: Tensor) -> Tensor:
            chunks = [c.reshape(p.shape).to(p.device) for c, p in zip(v.split(sizes), ps)]
            hv = _hvp.hvp(ps, gs, chunks, retain_graph=True)
            return torch.cat([h.reshape(-1).to(device=device, dtype=dtype) for h in hv])

        k, m = self.top_k, self.top_k + self.bottom_l
        lam, vecs = _hvp.extreme_eigenpairs(matvec, sum(sizes), k, self.bottom_l, generator=self.generator,
                                            dtype=dtype, device=device)
        if not (torch.isfinite(lam).all() and torch.isfinite(vecs).all()):
            policies = {group["nonfinite"] for group, *_ in items}
            if "raise" in policies:
                raise FloatingPointError("non-finite Hessian-vector product in FOSI's Lanczos refresh; no parameter "
                                         "or state was modified (pass nonfinite='skip' to skip such steps)")
            if "skip" in policies:
                raise _SkipStep
        r = len(lam)
        found_top = min(k, r)
        rows = torch.zeros(m, sum(sizes), dtype=dtype, device=device)
        eig = torch.zeros(m, dtype=torch.float64)
        place = list(range(found_top)) + list(range(k, k + r - found_top))  # top-k first, then bottom-ℓ
        rows[place] = vecs
        eig[place] = lam
        mag = eig.abs()
        usable = torch.isfinite(eig) & (mag > _NEGLIGIBLE * mag.max().clamp_min(1e-300))
        inv = torch.where(usable, 1.0 / mag.clamp_min(1e-300), torch.zeros_like(mag))
        scaling = 1.0
        if found_top and bool(usable[found_top - 1]):
            scaling = min(max(float(mag[0] / mag[found_top - 1]), 1.0), self.lr_clip)
        new = {id(p): row.reshape(m, *p.shape).to(p.device)
               for p, row in zip(ps, rows.split(sizes, dim=1))}
        st = self._fosi
        if st["has_basis"]:  # u_new = V_new V_oldᵀ u_old
            carry = torch.zeros(m, m, dtype=torch.float64, device=device)
            for p in ps:
                old = self.state.get(p, {}).get("fosi_V")
                if old is not None:
                    fresh = new[id(p)].reshape(m, -1)
                    carry += (fresh @ old.reshape(m, -1).to(fresh.dtype).T).double().to(device)
            st["velocity"] = carry @ st["velocity"].to(device)
        st.update(has_basis=True, eigenvalues=eig, inv_eig=inv, scaling=scaling)
        return new

    def _basis(self, p: Tensor, new_basis: dict[int, Tensor] | None) -> Tensor | None:
        if new_basis is not None:
            return new_basis.get(id(p))
        return self.state.get(p, {}).get("fosi_V")

    def _fosi_step(self, items: list, new_basis: dict[int, Tensor] | None) -> None:
        m, st = self.top_k + self.bottom_l, self._fosi
        device = items[0][2].device
        rows = []  # (group, p, g, V as (m, numel) in the compute dtype or None)
        for group, _, p, g in items:
            vp = self._basis(p, new_basis)
            rows.append((group, p, g, None if vp is None else vp.reshape(m, -1).to(_compute_dtype(p))))

        def project(vectors: list[Tensor]) -> Tensor:
            out = torch.zeros(m, dtype=torch.float64, device=device)
            for (_, p, _, vp), x in zip(rows, vectors):
                if vp is not None:
                    out += (vp @ x.reshape(-1).to(vp.dtype)).double().to(device)
            return out

        coef = project([g for _, _, g, _ in rows])
        u = st["velocity"].to(device)
        u = self.momentum * u + ((1 - self.momentum) * coef if self.momentum_style == "ema" else coef)
        st["velocity"] = u
        newton = st["inv_eig"].to(device) * u
        before = [p.detach().clone() for _, p, _, _ in rows]
        originals = [p.grad for _, p, _, _ in rows]
        try:
            for (group, p, g, vp), orig in zip(rows, originals):
                if vp is not None:  # g₂ = g − Vᵀc, one fused pass
                    g2 = torch.addmv(g.reshape(-1).to(vp.dtype), vp.T, coef.to(device=vp.device, dtype=vp.dtype),
                                     alpha=-1).reshape(p.shape).to(g.dtype)
                    p.grad = g2.neg_() if group["maximize"] else g2  # g is −∇f there; the base negates it back
                else:
                    p.grad = orig.detach()
            _step_without_hooks(self.base)
        finally:
            for (_, p, _, _), orig in zip(rows, originals):
                p.grad = orig
        deltas = [(p.detach().to(_compute_dtype(p)) - b.to(_compute_dtype(p))) for (_, p, _, _), b in zip(rows, before)]
        inside = project(deltas)
        s = st["scaling"]
        for (group, p, _, vp), b, d in zip(rows, before, deltas):
            if vp is None:
                continue
            initial = group[LR0]
            rho = group["lr"] / initial if initial > 0 else 0.0
            mix = -s * inside - self.alpha * rho * newton  # along V: drop the base's part, add Newton's
            new = d.mul_(s).add_(b).reshape(-1)  # θ_before + s·d_base, then + Vᵀ mix in place
            new.addmv_(vp.T, mix.to(device=vp.device, dtype=vp.dtype))
            p.copy_(new.reshape(p.shape))

    def _allocate(self, items: list, new_basis: dict[int, Tensor] | None) -> None:
        """V's rows live beside the base's state (after the base created it), in the state dtype."""
        m = self.top_k + self.bottom_l
        for group, _, p, _ in items:
            st = self.state[p]
            dtype = torch.float32 if group["state_dtype"] == "float32" and p.dtype in _LOW_PRECISION else p.dtype
            if "fosi_V" not in st:
                st["fosi_V"] = torch.zeros((m, *p.shape), dtype=dtype, device=p.device)
            if new_basis is not None and id(p) in new_basis:
                st["fosi_V"].copy_(new_basis[id(p)])

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The base's state_dict (``fosi_V`` sits in the per-parameter state) plus FOSI's own under
        ``["optfit"]["fosi"]``, the Lanczos generator included; FOSI's state-dict hooks run around it."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        sd = self.base.state_dict()
        f = self._fosi
        sd["optfit"] = {**sd["optfit"], "optimizer": type(self).__name__}
        sd["optfit"]["fosi"] = {"base": type(self.base).__name__, "step": f["step"], "has_basis": f["has_basis"],
                                "scaling": f["scaling"], "eigenvalues": f["eigenvalues"].cpu().clone(),
                                "inv_eig": f["inv_eig"].cpu().clone(), "velocity": f["velocity"].cpu().clone(),
                                "generator": self.generator.get_state()}
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``FOSI.state_dict()`` (one written by another optimizer, or around another base, is refused);
        FOSI's load hooks run around it."""
        if isinstance(state_dict, dict):
            state_dict = dict(state_dict)
            for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
                result = pre_hook(self, state_dict)
                if result is not None:
                    state_dict = result
        extra = state_dict.get("optfit") if isinstance(state_dict, dict) else None
        if isinstance(state_dict, dict) and extra is None:
            raise ValueError("FOSI.load_state_dict: this state dict has no 'optfit' entry (torch.optim's, or another "
                             "library's); torch.optim has no FOSI, so it cannot be resumed here")
        saved = extra.get("fosi") if isinstance(extra, dict) else None
        if isinstance(extra, dict):
            writer = extra.get("optimizer")
            if writer is not None and writer != type(self).__name__:
                raise ValueError(f"FOSI.load_state_dict: this state dict was written by {writer}, not FOSI (build a "
                                 f"{writer} to resume it)")
            # the base checks the rest: its own class against the one FOSI ran around
            base_writer = saved.get("base") if isinstance(saved, dict) else None
            state_dict = {**state_dict, "optfit": {**extra, "optimizer": base_writer}}
        self.base.load_state_dict(state_dict)
        self._share_base()
        if saved is None:
            self._fosi = self._fresh_state()
        else:
            self._fosi = {"step": int(saved["step"]), "has_basis": bool(saved["has_basis"]),
                          "scaling": float(saved["scaling"]),
                          **{k: saved[k].to(dtype=torch.float64, device="cpu").clone()
                             for k in ("eigenvalues", "inv_eig", "velocity")}}
            self.generator.set_state(saved["generator"].to(device="cpu", dtype=torch.uint8))
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def __getstate__(self) -> dict[str, Any]:
        """Every attribute (the base, the generator, FOSI's own state), less the hooks, as the optfit base does."""
        return {k: v for k, v in self.__dict__.items() if k not in _HOOK_ATTRS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        if "base" in self.__dict__:
            self._share_base()


register(OptimizerInfo(
    name="fosi", cls=FOSI, family="curvature", paper="arXiv:2302.08484",
    description="FOSI: Newton on the top-k Hessian eigenspace (Lanczos every update_freq steps) + a base optimizer "
                "(default adam) on the rest; needs loss.backward(create_graph=True); weight decay in the loss.",
    state_tensors=7, has_momentum=True, supports_cautious=False, supports_complex=False,
    test_hparams={"lr": 0.05, "update_freq": 4},
))
