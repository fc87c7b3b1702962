"""AdaGrad sanity checks from the catalogue (A7): η/√t for a constant gradient, lr_decay, the accumulator."""

from __future__ import annotations

import pytest
import torch

from optfit.optim import Adagrad

from .problems import updates_under_constant_gradient

G = torch.tensor([2.0, -0.3, 7.0, -1e-2], dtype=torch.float64)
IMPLS = pytest.mark.parametrize("impl", ["reference", "foreach"])


def _updates(opt, p, steps):
    return updates_under_constant_gradient(opt, p, G, steps)


@IMPLS
@pytest.mark.parametrize("lr_decay", [0.0, 0.25])
def test_constant_gradient_steps_shrink_like_one_over_sqrt_t(lr_decay, impl):
    lr = 0.1
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    for t, d in enumerate(_updates(Adagrad([p], lr=lr, lr_decay=lr_decay, impl=impl), p, 20), start=1):
        clr = lr / (1 + (t - 1) * lr_decay)
        torch.testing.assert_close(d, -clr / t**0.5 * torch.sign(G), rtol=1e-7, atol=0)  # ε = 1e-10


@IMPLS
def test_initial_accumulator_value_and_eps(impl):
    lr, a, eps = 0.5, 0.7, 1e-3
    p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    d1, d2 = _updates(Adagrad([p], lr=lr, initial_accumulator_value=a, eps=eps, impl=impl), p, 2)
    torch.testing.assert_close(d1, -lr * G / ((a + G * G).sqrt() + eps), rtol=1e-14, atol=0)
    torch.testing.assert_close(d2, -lr * G / ((a + 2 * G * G).sqrt() + eps), rtol=1e-14, atol=0)


@IMPLS
def test_complex_accumulator_starts_at_the_value_in_both_parts(impl):
    # a complex parameter moves exactly like its real view (torch would seed only the real part)
    z = torch.tensor([1 + 2j, -0.5 + 0.1j], dtype=torch.complex128, requires_grad=True)
    r = torch.view_as_real(z.detach()).clone().requires_grad_()
    oz, orr = (Adagrad([x], lr=0.1, initial_accumulator_value=0.5, impl=impl) for x in (z, r))
    gz = torch.tensor([0.3 - 1j, 2 + 0.5j], dtype=torch.complex128)
    for _ in range(3):
        z.grad, r.grad = gz.clone(), torch.view_as_real(gz).clone()
        oz.step(), orr.step()
    torch.testing.assert_close(torch.view_as_real(z.detach()), r.detach(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("key", ["lr_decay", "initial_accumulator_value"])
def test_invalid_values_raise(key):
    with pytest.raises(ValueError, match=key):
        Adagrad([torch.zeros(2, requires_grad=True)], **{key: -1.0})
