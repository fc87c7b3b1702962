"""The update rules of AdAdaGrad and AdAdaGrad-Norm (Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes
for Adaptive Gradient Methods", arXiv 2402.11215). The paper pairs AdaGrad / AdaGrad-Norm with a batch size grown
by the (coordinate-wise) norm test; the batch-size half lives in :mod:`optfit.batch` (``AdaptiveBatchSize``), the
step half is here. With g = ∇F_B(θ_k), the mini-batch gradient:

    AdaGrad (coordinate-wise, ``AdAdaGrad``):
        v ← v + g⊙g                 (v₀ = b₀², per coordinate)
        θ ← θ − α g / (√v + ε)

    AdaGrad-Norm (scalar, ``AdAdaGradNorm``):
        b² ← b² + ‖g‖²              (b₀ > 0; ONE scalar: ‖g‖² sums over every parameter of every group)
        θ ← θ − α g / b

The current gradient enters the accumulator before it is used (b_{k+1}² = b_k² + ‖g_k‖², θ_{k+1} = θ_k − α g_k /
b_{k+1}, as in the paper and Ward, Wu & Bottou 2019). The paper writes AdaGrad with b₀ > 0 and no ε; ε is added
(default 1e-10, with b₀ = 0) because the authors' experiments ran ``torch.optim.Adagrad`` at its defaults: with
those defaults ``adadagrad`` is torch's Adagrad (lr_decay = 0, ``initial_accumulator_value = b₀²``), and the
paper's exact form is ``eps=0, b0>0``. AdaGrad-Norm's x ∈ ℝᵈ is the whole model, so b is global: a two-pass step
(as SANIA's) first sums ‖g‖² over all groups, then moves each group with its own α. Its defaults (α = 1,
b₀ = 0.1) are those of the authors' AdaGrad-Norm (``lr=1.0``, ``initial_accumulator_value = b₀² = 1e-2``).
``weight_decay`` (not in the paper) is L2 added to g, as in torch.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from . import _validation as V
from ..registry import OptimizerInfo, register
from ._base import ElementwiseOptimizer
from .adagrad import Adagrad

__all__ = ["AdAdaGrad", "AdAdaGradNorm"]


class AdAdaGrad(Adagrad):
    """AdaGrad as used by AdAdaGrad: per-coordinate ``v = b₀² + Σg²``, ``θ ← θ − α g/(√v + ε)`` — optfit's
    ``Adagrad`` kernel (lr_decay fixed at 0), parametrised by the paper's b₀ instead of ``initial_accumulator_value``."""

    def __init__(self, params: Any, lr: float = 1e-2, b0: float = 0.0, eps: float = 1e-10,
                 weight_decay: float = 0.0, **options: Any) -> None:
        ElementwiseOptimizer.__init__(self, params, dict(lr=lr, b0=b0, eps=eps, weight_decay=weight_decay,
                                                         lr_decay=0.0), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("b0", group["b0"])
        V.nonneg("eps", group["eps"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["b0"] == 0 and group["eps"] == 0:
            raise ValueError("Invalid b0 and eps: both 0 (a coordinate whose gradients are all 0 would divide 0 by 0)")

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        state["sum"] = torch.full_like(p, group["b0"] ** 2, memory_format=torch.preserve_format)


class AdAdaGradNorm(ElementwiseOptimizer):
    """AdaGrad-Norm: one scalar ``b² = b₀² + Σ‖g‖²`` over every parameter of every group; ``θ ← θ − α g/b``.

    ``b0`` is global (one accumulator for the whole optimizer), so it is a constructor argument, not a per-group
    hyperparameter. ``accumulator`` is b² (a float64 0-d tensor, ``None`` before the first step); it is saved in
    ``state_dict()["optfit"]["adagrad_norm"]``."""

    default_decay_mode = "coupled"
    two_pass = True
    IMPLS = ("auto", "reference")  # a handful of foreach ops, one path

    def __init__(self, params: Any, lr: float = 1.0, b0: float = 0.1, weight_decay: float = 0.0,
                 **options: Any) -> None:
        self.b0 = V.positive("b0", b0)
        self.accumulator: Tensor | None = None
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), **options)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["cautious"]:
            raise ValueError("Invalid cautious: True (AdaGrad-Norm's step g/b always agrees in sign with g, so the "
                             "mask would only rescale)")

    # ------------------------------------------------------------------ two passes: Σ‖g‖², then θ ← θ − α g / b
    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        """First pass: this bucket's share of ‖g‖² (float64); nothing moves yet."""
        sq = [torch.sum(g * g, dtype=torch.float64 if g.dtype == torch.float64 else torch.float32).double()
              for g in gs]
        self._pending.append((ps, gs, c, sq))

    def _second_pass(self, pending: list, loss: Any) -> None:
        sqs = [x for *_, sq in pending for x in sq]
        device = sqs[0].device
        total = torch.stack([x.to(device) for x in sqs]).sum()
        if self.accumulator is None:
            self.accumulator = torch.tensor(self.b0 ** 2, dtype=torch.float64, device=device)
        self.accumulator = self.accumulator.to(device) + total
        inv_b = 1.0 / self.accumulator.sqrt()
        for ps, gs, c, _ in pending:
            scale = (c["lr"] * inv_b).to(device=ps[0].device)
            steps = [g * scale.to(g.dtype) for g in gs]
            if c["decay"] != 1.0:
                torch._foreach_mul_(ps, c["decay"])
            torch._foreach_sub_(ps, steps)

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optfit"]["adagrad_norm"] = {"b0": self.b0, "accumulator": self.accumulator}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("optfit", {}).get("adagrad_norm")
        if saved is not None:
            acc = saved["accumulator"]
            self.accumulator = None if acc is None else acc.detach().to(dtype=torch.float64).clone()
            self.b0 = float(saved["b0"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("accumulator", None)

    @property
    def b(self) -> float:
        """The current scalar b = √(b₀² + Σ‖g‖²) (b₀ before the first step)."""
        return self.b0 if self.accumulator is None else math.sqrt(float(self.accumulator))


register(OptimizerInfo(
    name="adadagrad", cls=AdAdaGrad, family="adaptive", paper="arXiv:2402.11215",
    description="AdAdaGrad's update: per-coordinate AdaGrad θ ← θ − α g/(√(b₀² + Σg²) + ε) (= torch Adagrad at "
                "lr_decay 0); pair with optfit.batch.AdaptiveBatchSize(test='coordinate') for the adaptive batch.",
    state_tensors=1, torch_equivalent=("Adagrad", {}), test_hparams={"lr": 0.5},
))

register(OptimizerInfo(
    name="adadagrad-norm", cls=AdAdaGradNorm, family="adaptive", paper="arXiv:2402.11215",
    description="AdAdaGrad-Norm's update: AdaGrad-Norm θ ← θ − α g/b, b² = b₀² + Σ‖g‖², one scalar over all "
                "groups; pair with optfit.batch.AdaptiveBatchSize(test='norm') for the adaptive batch.",
    state_tensors=0, aliases=("adadagradnorm",), supports_cautious=False, supports_foreach=False,
    test_hparams={"lr": 1.0},
))
