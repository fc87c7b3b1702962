"""The shared matrix-optimizer machinery (optfit.optim._matrix): stacking, chunking, custom state shapes."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from optfit.optim import AdaMuon, Muon, ROOT, _matrix, muon
from optfit.optim._matrix import MatrixOptimizer


class GramSum(MatrixOptimizer):
    """A toy subclass with a state that is not of the parameter's shape: L ← L + GGᵀ, D = L G."""

    matrix_state = ("gram",)

    def __init__(self, params: Any, lr: float = 0.1, weight_decay: float = 0.0, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay), adamw_lr=None, adamw_betas=(0.9, 0.99),
                         adamw_eps=1e-8, adamw_weight_decay=None, **options)

    @classmethod
    def _validate(cls, group):
        pass

    def _init_matrix_state(self, group, p, state):
        rows = p.shape[0]
        state["gram"] = torch.zeros(rows, rows, dtype=p.dtype)

    @staticmethod
    def _kernel(G, S, group):
        S["gram"].add_(G @ G.mT)
        return S["gram"] @ G


def test_states_of_other_shapes_stack_and_match_the_loop():
    shapes = [(4, 3)] * 3 + [(4, 3, 1)] + [(2, 5)]
    out = {}
    for impl in ("reference", "foreach"):
        params = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        opt = GramSum(params, impl=impl)
        gen = torch.Generator().manual_seed(0)
        grads = []
        for _ in range(3):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            grads.append([p.grad.clone() for p in params])
            opt.step()
        out[impl] = (params, opt, grads)
    (ref, oref, grads), (fast, ofast, _) = out["reference"], out["foreach"]
    for k, (a, b) in enumerate(zip(ref, fast)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        gs = [step[k].reshape(a.shape[0], -1) for step in grads]
        assert oref.state[a]["gram"].shape == (a.shape[0], a.shape[0])
        torch.testing.assert_close(oref.state[a]["gram"], sum(g @ g.T for g in gs), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ofast.state[b]["gram"], oref.state[a]["gram"], rtol=1e-12, atol=1e-12)


def test_stacks_are_chunked_to_bound_memory(monkeypatch):
    monkeypatch.setattr(_matrix, "MAX_STACK_NUMEL", 2 * 8 * 6)
    calls = []
    real = muon.orthogonalize
    monkeypatch.setattr(muon, "orthogonalize", lambda U, *a: calls.append(U.shape[0]) or real(U, *a))
    params = [torch.zeros(8, 6, requires_grad=True) for _ in range(5)]
    for p in params:
        p.grad = torch.ones(8, 6)
    Muon(params, impl="foreach").step()
    assert calls == [2, 2, 1]


@pytest.mark.parametrize("cls", [Muon, AdaMuon, ROOT])
@pytest.mark.parametrize("impl", ["reference", "foreach"])
def test_empty_matrices_are_left_alone(cls, impl):
    params = [torch.zeros(0, 5, requires_grad=True), torch.zeros(3, 0, 2, requires_grad=True),
              torch.ones(2, 2, requires_grad=True)]
    for p in params:
        p.grad = torch.ones_like(p)
    cls(params, impl=impl, weight_decay=0.0).step()
    assert params[0].shape == (0, 5) and not torch.equal(params[2], torch.ones(2, 2))


def test_auto_loops_on_one_cpu_thread_and_stacks_otherwise(monkeypatch):
    calls = []
    real = muon.orthogonalize
    monkeypatch.setattr(muon, "orthogonalize", lambda U, *a: calls.append(U.shape[0]) or real(U, *a))
    params = [torch.zeros(4, 4, requires_grad=True) for _ in range(3)]
    opt = Muon(params)
    threads = torch.get_num_threads()
    try:
        for n, expected in ((1, [1, 1, 1]), (2, [3])):
            torch.set_num_threads(n)
            calls.clear()
            for p in params:
                p.grad = torch.ones(4, 4)
            opt.step()
            assert calls == expected
    finally:
        torch.set_num_threads(threads)
