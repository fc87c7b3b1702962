"""optfit: fit the optimizer to the task."""

from . import batch, gap, learned, optim, schedules
from .factory import create_optimizer
from .optim.in_backward import in_backward_unsupported, step_in_backward
from .params import split_params
from .registry import OptimizerInfo, list_optimizers, optimizer_info

__version__ = "0.1.0"
__all__ = ["batch", "gap", "learned", "optim", "schedules", "create_optimizer", "step_in_backward", "in_backward_unsupported", "split_params", "list_optimizers", "optimizer_info", "OptimizerInfo", "__version__"]
