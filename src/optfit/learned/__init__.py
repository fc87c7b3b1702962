"""Learned optimizers that run offline: Celo and Celo-Adam on the released weights, and small_fc_lopt
meta-trained by optfit itself. Each module registers its records on import."""

from .celo import *  # noqa: F401,F403
from .small_fc_lopt import *  # noqa: F401,F403
