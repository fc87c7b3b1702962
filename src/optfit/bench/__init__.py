"""Workloads and runners for comparing optimizers (the showdown builds on this package)."""
