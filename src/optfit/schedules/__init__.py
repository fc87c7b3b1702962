"""Learning-rate schedules as ``torch.optim.lr_scheduler.LRScheduler`` subclasses, as plain multiplier
functions, and the lr–batch-size rule.

t = optimizer steps already taken (0 on the first step), T = ``total_steps``, W = ``warmup_steps``,
f = ``final``; every schedule multiplies each group's ``initial_lr`` by m(t):

    warmup (all but Refined)  m(t) = (t + 1) / W                              t < W
    WarmupCosine / warmup_cosine   m(t) = f + (1 − f) · ½ (1 + cos(π (t − W) / (T − W)))   W ≤ t < T;  f after
    WarmupLinear / warmup_linear   m(t) = f + (1 − f) · (T − t) / (T − W)                   W ≤ t < T;  f after
    WSD / wsd       m(t) = 1 for W ≤ t < S;  f + (1 − f) · shape((t − S) / D) for S ≤ t < T;  f after
                    D = round(decay_fraction · T), S = T − D, shape(s) = 1 − s | ½ (1 + cos πs) | 1 − √s
    Constant / constant            m(t) = 1                                                 t ≥ W
    Refined / refined   from a previous run's gradient norms G (arXiv 2310.07831): ĝ = median filter of G,
                    w_t = ĝ_t⁻² (SGD, ℓ2 norms) or ĝ_t⁻¹ (Adam, ℓ1 norms), η_t = w_t Σ_{p>t} w_p, m = η / max η
                    (stretched to T steps by linear interpolation)

The warmup starts at 1/W and reaches 1 on its last step (the benchmark's convention, so its numbers stay
comparable). ``GradNormRecorder(optimizer)`` records the ℓ2 and ℓ1 gradient norms of any run;
``Refined.from_recorder`` refines from it.

``scale_lr(lr, B, B₀, rule)``: lr · B/B₀ ("linear", SGD family) or lr · √(B/B₀) ("sqrt", adaptive and
sign-based optimizers), arXiv 2006.09092; ``rule`` may name an optimizer (``batch_scaling_rule``).
"""

from .batch_size import batch_scaling_rule, scale_lr
from .multipliers import DECAY_SHAPES, constant, warmup_cosine, warmup_linear, wsd
from .refined import GradNormRecorder, median_smooth, refined, refined_weights
from .schedulers import WSD, Constant, Refined, Schedule, WarmupCosine, WarmupLinear

__all__ = ["Schedule", "WarmupCosine", "WarmupLinear", "WSD", "Constant", "Refined", "GradNormRecorder",
           "warmup_cosine", "warmup_linear", "wsd", "constant", "refined", "refined_weights", "median_smooth",
           "scale_lr", "batch_scaling_rule", "DECAY_SHAPES"]
