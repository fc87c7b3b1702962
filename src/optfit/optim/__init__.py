"""The optimizer catalogue: every class importable as ``optfit.optim.<ClassName>``.

Each module holds one optimizer family, registers its records with ``optfit.registry`` on import and
lists its public classes in ``__all__``.
"""

from ._base import ElementwiseOptimizer
from ._features import DECAY_MODES, grokfast_ema, grokfast_ma
from .adam import Adam, AdamW
from .sgd import SGD

# one module per family; each exports exactly what its __all__ names
from .adabelief import *  # noqa: F401,F403
from .adabound import *  # noqa: F401,F403
from .adadagrad import *  # noqa: F401,F403
from .adafactor import *  # noqa: F401,F403
from .adafisher import *  # noqa: F401,F403
from .adagrad import *  # noqa: F401,F403
from .adahessian import *  # noqa: F401,F403
from .adam_cm import *  # noqa: F401,F403
from .adamuon import *  # noqa: F401,F403
from .adan import *  # noqa: F401,F403
from .ademamix import *  # noqa: F401,F403
from .came import *  # noqa: F401,F403
from .core import *  # noqa: F401,F403
from .dadapt import *  # noqa: F401,F403
from .dash import *  # noqa: F401,F403
from .dog import *  # noqa: F401,F403
from .exadam import *  # noqa: F401,F403
from .fosi import *  # noqa: F401,F403
from .grad_avg import *  # noqa: F401,F403
from .gravity import *  # noqa: F401,F403
from .induced_metric import *  # noqa: F401,F403
from .lamb import *  # noqa: F401,F403
from .lion import *  # noqa: F401,F403
from .lion_k import *  # noqa: F401,F403
from .lookahead import *  # noqa: F401,F403
from .muon import *  # noqa: F401,F403
from .nadam import *  # noqa: F401,F403
from .newton_schulz import *  # noqa: F401,F403
from .oasis import *  # noqa: F401,F403
from .optimistic_amsgrad import *  # noqa: F401,F403
from .prodigy import *  # noqa: F401,F403
from .radam import *  # noqa: F401,F403
from .rmsprop import *  # noqa: F401,F403
from .roaree import *  # noqa: F401,F403
from .root import *  # noqa: F401,F403
from .sam import *  # noqa: F401,F403
from .sania import *  # noqa: F401,F403
from .schedule_free import *  # noqa: F401,F403
from .shampoo import *  # noqa: F401,F403
from .soap import *  # noqa: F401,F403
from .sophia import *  # noqa: F401,F403
from .universal_mm import *  # noqa: F401,F403
from .in_backward import *  # noqa: F401,F403
