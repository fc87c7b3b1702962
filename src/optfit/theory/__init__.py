"""Closed-form greedy-optimal linear optimizers (static view of arXiv 2512.06370) and the stationarity test that
schedules ``auto``."""

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
from optfit.theory.stationarity import StationarityTest, fdr_statistic

__all__ = [
    "Optimum",
    "StationarityTest",
    "diagonal",
    "fdr_statistic",
    "frobenius",
    "left_matrix",
    "operator_norm",
    "optimal_step_scale",
    "trace",
    "update_covariance",
    "update_energy",
]
