"""Closed-form greedy-optimal linear optimizers (static view of arXiv 2512.06370)."""

from optfit.theory.closed_forms import (
    Optimum,
    diagonal,
    frobenius,
    left_matrix,
    operator_norm,
    optimal_step_scale,
    trace,
    update_covariance,
    update_energy,
)

__all__ = [
    "Optimum",
    "diagonal",
    "frobenius",
    "left_matrix",
    "operator_norm",
    "optimal_step_scale",
    "trace",
    "update_covariance",
    "update_energy",
]
