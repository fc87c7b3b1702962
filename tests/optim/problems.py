"""Small deterministic problems shared by the optimizer tests."""

from __future__ import annotations

import warnings

import torch
from torch import nn

import optfit


class Quadratic(nn.Module):
    """f = ½Σ a(x − x*)² + ½Σ B∘(W − W*)²: a vector and a matrix parameter, known optimum (x*, W*)."""

    def __init__(self, dtype=torch.float32, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.x = nn.Parameter(torch.zeros(10, dtype=dtype))
        self.W = nn.Parameter(torch.zeros(4, 5, dtype=dtype))
        self.register_buffer("x_star", torch.randn(10, generator=gen, dtype=dtype))
        self.register_buffer("W_star", torch.randn(4, 5, generator=gen, dtype=dtype))
        self.register_buffer("a", torch.linspace(1.0, 10.0, 10, dtype=dtype))
        self.register_buffer("b", torch.linspace(1.0, 4.0, 20, dtype=dtype).reshape(4, 5))

    def forward(self) -> torch.Tensor:
        return 0.5 * (self.a * (self.x - self.x_star) ** 2).sum() + 0.5 * (self.b * (self.W - self.W_star) ** 2).sum()

    @torch.no_grad()
    def distance(self) -> float:
        return float(torch.sqrt(((self.x - self.x_star) ** 2).sum() + ((self.W - self.W_star) ** 2).sum()))


class TinyNet(nn.Module):
    def __init__(self, dtype=torch.float32, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.LayerNorm(8), nn.Linear(8, 3)).to(dtype)
        gen = torch.Generator().manual_seed(seed + 1)
        self.register_buffer("X", torch.randn(32, 6, generator=gen).to(dtype))
        self.register_buffer("Y", torch.randn(32, 3, generator=gen).to(dtype))

    def forward(self) -> torch.Tensor:
        return ((self.net(self.X) - self.Y) ** 2).mean()


def backward(loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    """``loss.backward()``, with ``create_graph=True`` for optimizers that need Hessian-vector products."""
    if not getattr(opt, "needs_create_graph", False):
        loss.backward()
        return
    with warnings.catch_warnings():  # the param <-> grad cycle it warns about is broken by the optimizer
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        loss.backward(create_graph=True)


def closure_for(model: nn.Module, opt: torch.optim.Optimizer):
    def closure():
        opt.zero_grad()
        loss = model()
        backward(loss, opt)
        return loss

    return closure


def build(name: str, model: nn.Module, **overrides):
    info = optfit.optimizer_info(name)
    kwargs = {**info.test_hparams, **overrides}
    return optfit.create_optimizer(model, name, **kwargs)


def run(model: nn.Module, opt: torch.optim.Optimizer, steps: int) -> list[float]:
    closure = closure_for(model, opt)
    return [float(opt.step(closure).detach()) for _ in range(steps)]


def step_updates(opt: torch.optim.Optimizer, p: torch.Tensor, grads) -> list[torch.Tensor]:
    """Feed the gradients one step at a time; return each step's Δθ."""
    out = []
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        out.append(p.detach() - before)
    return out


def updates_under_constant_gradient(opt: torch.optim.Optimizer, p: torch.Tensor, grad: torch.Tensor,
                                    steps: int) -> list[torch.Tensor]:
    """Feed ``grad`` for ``steps`` steps; return each step's Δθ."""
    return step_updates(opt, p, [grad] * steps)


def run_impls(make_opt, shapes, seed: int, steps: int = 5, impls=("reference", "foreach"), **tensor_kw):
    """For each impl: fresh zero parameters of ``shapes``, ``make_opt(params, impl)``, ``steps`` steps on one seeded
    random gradient stream; returns {impl: (params, opt)} so paths can be compared on identical inputs."""
    out = {}
    for impl in impls:
        params = [torch.zeros(s, requires_grad=True, **tensor_kw) for s in shapes]
        opt = make_opt(params, impl)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        out[impl] = (params, opt)
    return out


def record_shapes(monkeypatch, module, name: str) -> list[tuple[int, ...]]:
    """Replace ``module.name`` by a pass-through that appends its first argument's shape to the returned list."""
    calls: list[tuple[int, ...]] = []
    real = getattr(module, name)

    def spy(x, *args, **kwargs):
        calls.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(module, name, spy)
    return calls


SMOOTH_SHAPES = [(4, 3), (3,), (2, 2, 2)]


class Smooth(nn.Module):
    """Σ log cosh(Aθ − b) + ¼Σθ⁴ over several float64 tensors (``SMOOTH_SHAPES``): dense, curved, not quadratic."""

    def __init__(self, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.ps = nn.ParameterList([nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64))
                                    for s in SMOOTH_SHAPES])
        n = sum(torch.Size(s).numel() for s in SMOOTH_SHAPES)
        self.register_buffer("A", torch.randn(n + 2, n, generator=gen, dtype=torch.float64) / n**0.5)
        self.register_buffer("b", torch.randn(n + 2, generator=gen, dtype=torch.float64))

    def forward(self) -> torch.Tensor:
        theta = torch.cat([p.reshape(-1) for p in self.ps])
        return torch.log(torch.cosh(self.A @ theta - self.b)).sum() + 0.25 * (theta**4).sum()
