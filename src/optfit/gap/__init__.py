"""The greedy alignment engine: optimizers that choose their own filter (momentum) every step, the scores'
filter norms and oracles, and a gradient-statistics probe. See docs/gap-method.md."""

from .adam import GapAdam, GapAdamW
from .auto import Auto
from .beta2 import GapAdamWBeta2
from .engine import GapOptimizer
from .logging import attach_summary_writer
from .filters import adam_scale, ar1_next_score, ar1_optimal_beta, ar1_score, heavy_ball_norm, nesterov_norm
from .grokfast import GapGrokfast
from .mix import GapMix
from .sgd import GapSGD
from .stats import GradientStats

__all__ = ["Auto", "GapAdam", "GapAdamW", "GapAdamWBeta2", "GapGrokfast", "GapMix", "GapOptimizer", "GapSGD", "GradientStats", "adam_scale", "attach_summary_writer", "ar1_next_score", "ar1_optimal_beta",
           "ar1_score", "heavy_ball_norm", "nesterov_norm"]
