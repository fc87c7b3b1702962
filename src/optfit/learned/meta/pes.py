"""Persistent evolution strategies (Vicol, Metz & Sohl-Dickstein, ICML 2021, arXiv 2112.13835).

An unrolled system with state s and meta-parameters θ is run in truncations of K steps; truncation τ has loss
L_τ(θ). Each of N = 2P particles j keeps its own state s_j. At every truncation fresh antithetic perturbations
ε_j ~ N(0, σ²I) (ε_{j+P} = −ε_j) are drawn, particle j runs the truncation with θ + ε_j from s_j, and
accumulates ξ_j ← ξ_j + ε_j (ξ = 0 at the start of an episode). The estimate

    ĝ_τ = 1/(N σ²) · Σ_j ξ_j · L_τ,j

is unbiased for ∇_θ of the Gaussian-smoothed loss of truncation τ as a function of θ applied at *every* step of
the episode so far (truncated ES, ξ_j = ε_j, misses the dependence on earlier truncations and is biased).
Summed over the truncations of an episode it estimates the gradient of the whole episode's loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["antithetic_noise", "pes_estimate", "PESState", "pes_truncation"]


def antithetic_noise(n_pairs: int, dim: int, sigma: float, gen: torch.Generator) -> Tensor:
    """(2P, D): P Gaussian draws of std σ followed by their negatives."""
    if n_pairs < 1:
        raise ValueError(f"Invalid n_pairs: {n_pairs} (must be >= 1)")
    if not sigma > 0:
        raise ValueError(f"Invalid sigma: {sigma} (must be > 0)")
    eps = torch.randn(n_pairs, dim, generator=gen) * sigma
    return torch.cat([eps, -eps])


def pes_estimate(xi: Tensor, losses: Tensor, sigma: float) -> Tensor:
    """ĝ = Σ_j ξ_j L_j / (N σ²) for ξ (N, D) and losses (N,)."""
    if xi.shape[0] != losses.shape[0]:
        raise ValueError(f"xi has {xi.shape[0]} particles, losses {losses.shape[0]}")
    return (losses.to(xi.dtype) @ xi) / (xi.shape[0] * sigma ** 2)


@dataclass
class PESState:
    """The accumulated perturbations ξ (N, D) of one group of particles."""

    xi: Tensor

    @classmethod
    def zeros(cls, n_pairs: int, dim: int) -> "PESState":
        return cls(torch.zeros(2 * n_pairs, dim))

    def reset(self) -> None:
        self.xi.zero_()


def pes_truncation(theta: Tensor, state: PESState, sigma: float, gen: torch.Generator,
                   unroll: Callable[[Tensor], Tensor], persistent: bool = True) -> tuple[Tensor, Tensor]:
    """One truncation: perturb θ antithetically, ``unroll(θ + ε)`` (N, D) → losses (N,) (the callable advances its
    own per-particle state), accumulate ξ, and return (ĝ, losses). ``persistent=False`` gives truncated ES."""
    n_pairs = state.xi.shape[0] // 2
    eps = antithetic_noise(n_pairs, theta.numel(), sigma, gen).to(theta.dtype)
    losses = unroll(theta.unsqueeze(0) + eps)
    if persistent:
        state.xi += eps
    else:
        state.xi.copy_(eps)
    return pes_estimate(state.xi, losses, sigma), losses
