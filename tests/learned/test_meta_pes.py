"""PES: the estimator is unbiased on a toy unrolled quadratic whose episode gradient is known in closed form."""

from __future__ import annotations

import pytest
import torch

from optfit.learned.meta.pes import PESState, antithetic_noise, pes_estimate, pes_truncation

A, K, TRUNCATIONS = 0.8, 2, 3  # s_{t+1} = A·s_t + θ, episodes of K·TRUNCATIONS steps
Y = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
THETA = torch.tensor([0.3, 0.1, -0.4], dtype=torch.float64)


def _analytic_episode_gradient(theta: torch.Tensor) -> torch.Tensor:
    """J(θ) = Σ_τ (1/K) Σ_{t∈τ} ½‖s_t − y‖², s_t = θ·c_t with c_t = (1 − Aᵗ)/(1 − A) ⇒ ∇J = (1/K) Σ_t c_t(θc_t − y)."""
    grad = torch.zeros_like(theta)
    for t in range(1, K * TRUNCATIONS + 1):
        c = (1 - A ** t) / (1 - A)
        grad += c * (theta * c - Y) / K
    return grad


def _episode_estimate(n_pairs: int, sigma: float, seed: int, persistent: bool) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    state = PESState(torch.zeros(2 * n_pairs, 3, dtype=torch.float64))
    s = torch.zeros(2 * n_pairs, 3, dtype=torch.float64)

    def unroll(thetas):
        nonlocal s
        total = torch.zeros(thetas.shape[0], dtype=torch.float64)
        for _ in range(K):
            s = A * s + thetas
            total += 0.5 * ((s - Y) ** 2).sum(1)
        return total / K

    grad = torch.zeros(3, dtype=torch.float64)
    for _ in range(TRUNCATIONS):
        g, _ = pes_truncation(THETA, state, sigma, gen, unroll, persistent=persistent)
        grad += g
    return grad


def test_pes_is_unbiased_on_a_quadratic_unroll():
    exact = _analytic_episode_gradient(THETA)
    estimates = torch.stack([_episode_estimate(20000, 0.1, seed, True) for seed in range(5)])
    mean, sem = estimates.mean(0), estimates.std(0) / 5 ** 0.5
    assert bool(((mean - exact).abs() < 4 * sem + 1e-3).all()), (mean, exact, sem)
    assert float((mean - exact).norm()) < 0.03 * float(exact.norm()), (mean, exact)


def test_truncated_es_is_biased_where_pes_is_not():
    """The same test on truncated ES (ξ reset every truncation) must fail: it ignores how θ shaped the state."""
    exact = _analytic_episode_gradient(THETA)
    tes = torch.stack([_episode_estimate(20000, 0.1, seed, False) for seed in range(5)]).mean(0)
    assert float((tes - exact).norm()) > 0.3 * float(exact.norm())


def test_estimate_formula_and_antithetic_noise():
    gen = torch.Generator().manual_seed(0)
    eps = antithetic_noise(3, 4, 0.5, gen)
    assert eps.shape == (6, 4) and torch.equal(eps[3:], -eps[:3])
    xi = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -2.0]])
    losses = torch.tensor([3.0, 1.0, 2.0, 5.0])
    # Σ ξ_j L_j / (N σ²) = ([3 − 2], [2 − 10]) / (4 · 0.25)
    torch.testing.assert_close(pes_estimate(xi, losses, 0.5), torch.tensor([1.0, -8.0]))


def test_bad_arguments_are_value_errors():
    gen = torch.Generator()
    with pytest.raises(ValueError, match="n_pairs"):
        antithetic_noise(0, 3, 0.1, gen)
    with pytest.raises(ValueError, match="sigma"):
        antithetic_noise(2, 3, 0.0, gen)
    with pytest.raises(ValueError, match="particles"):
        pes_estimate(torch.zeros(4, 2), torch.zeros(3), 0.1)
