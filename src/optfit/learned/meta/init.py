"""Initial parameters for meta-training.

``kind="adam"`` starts from a hand-written point: two hidden ReLU units carry ±x where x is the normalised
m·rsqrt(r) feature (β = the first momentum decay), the second layer passes them on, and the output is
``d = relu(x) − relu(−x) = x``, so the initial optimizer is a per-tensor RMS-normalised Adam-like step of RMS
``step_mult·lr``. Every other weight is random (scaled fan-in init) with a small output weight, so ES can use the
other units from the first iteration. ``kind="random"`` is the plain scaled init with small output weights
(learned_optimization style); ``kind="zero"`` gives an optimizer that does not move.
"""

from __future__ import annotations

import torch

from ..small_fc_lopt import N_FEATURES, LoptWeights

__all__ = ["initial_weights", "MOM_RSQRT_FEATURE", "DEFAULT_DECAYS"]

MOM_RSQRT_FEATURE = 6  # channel of m₁·rsqrt(r + ε) among the 28 gradient features
DEFAULT_DECAYS = ((0.9, 0.99, 0.999), (0.999,), (0.9, 0.99, 0.999))
KINDS = ("adam", "random", "zero")


def initial_weights(hidden: int = 32, seed: int = 0, kind: str = "adam", out_scale: float = 0.01,
                    n_hidden_layers: int = 2) -> LoptWeights:
    """An initial ``LoptWeights`` (MLP 39 → hidden (× n_hidden_layers) → 2) with the default decays."""
    if kind not in KINDS:
        raise ValueError(f"Invalid kind: {kind!r} (choose one of {', '.join(KINDS)})")
    if hidden < 2 or n_hidden_layers < 1:
        raise ValueError(f"Invalid hidden: {hidden} / n_hidden_layers: {n_hidden_layers} (need hidden >= 2, layers >= 1)")
    gen = torch.Generator().manual_seed(seed)
    sizes = [N_FEATURES] + [hidden] * n_hidden_layers + [2]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = torch.randn(fan_out, fan_in, generator=gen) / fan_in ** 0.5
        b = torch.zeros(fan_out)
        if i == len(sizes) - 2:
            w = w * out_scale
        layers.append([w, b])
    if kind == "zero":
        layers[-1] = [torch.zeros_like(layers[-1][0]), torch.zeros(2)]
    if kind == "adam":
        w0 = layers[0][0]
        w0[:2] = 0.0
        w0[0, MOM_RSQRT_FEATURE], w0[1, MOM_RSQRT_FEATURE] = 1.0, -1.0
        for w, _ in layers[1:-1]:
            w[:2] = 0.0
            w[:, :2] = 0.0
            w[0, 0], w[1, 1] = 1.0, 1.0
        w_out = layers[-1][0]
        w_out[:, :2] = 0.0
        w_out[0, 0], w_out[0, 1] = 1.0, -1.0
    decays = [torch.tensor(d, dtype=torch.float32) for d in DEFAULT_DECAYS]
    return LoptWeights(tuple((w, b) for w, b in layers), *decays,
                       metadata={"init": kind, "init_seed": str(seed)})
