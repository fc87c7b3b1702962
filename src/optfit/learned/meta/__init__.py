"""Meta-training of small_fc_lopt on CPU: a Celo-style task family, truncated unrolls and persistent
evolution strategies (PES), with checkpoints and resume (``optfit learned meta-train``)."""

from .init import initial_weights

__all__ = ["initial_weights"]
