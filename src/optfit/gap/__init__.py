"""The greedy alignment engine: optimizers that choose their own filter (momentum) every step, the scores'
filter norms and oracles, and a gradient-statistics probe. See docs/gap-method.md."""

from .adam import GapAdam, GapAdamW
from .engine import GapOptimizer
from .logging import attach_summary_writer
from .filters import adam_scale, ar1_next_score, ar1_optimal_beta, ar1_score, heavy_ball_norm, nesterov_norm
from .mix import GapMix
from .sgd import GapSGD
from .stats import GradientStats

__all__ = ["GapAdam", "GapAdamW", "GapMix", "GapOptimizer", "GapSGD", "GradientStats", "adam_scale", "attach_summary_writer", "ar1_next_score", "ar1_optimal_beta",
           "ar1_score", "heavy_ball_norm", "nesterov_norm"]
