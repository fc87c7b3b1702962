"""Linear models: W1 ill-conditioned L2 logistic regression (float64, full batch) and W2 softmax regression
on MNIST."""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..workload import Workload
from ._common import ClassificationWorkload, default_root, seeded, sklearn_path, sklearn_table, with_target


def _logreg_objective(w: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, np.ndarray, np.ndarray]:
    """f(w, b) = mean softplus(z) - y z + lam/2 |w|^2 with z = x w + b; returns f, gradient, Hessian."""
    z = x @ w[:-1] + w[-1]
    f = float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * lam * w[:-1] @ w[:-1])
    p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid, overflow-free
    xb = np.hstack([x, np.ones((len(x), 1))])
    reg = np.full(len(w), lam)
    reg[-1] = 0.0
    grad = xb.T @ (p - y) / len(x) + reg * w
    hess = (xb * (p * (1 - p))[:, None]).T @ xb / len(x) + np.diag(reg)
    return f, grad, hess


def logreg_optimum(x: np.ndarray, y: np.ndarray, lam: float) -> tuple[float, np.ndarray]:
    """f* and its minimiser: scipy L-BFGS-B to high accuracy, then damped Newton steps (31 unknowns) until the
    gradient norm stops falling."""
    from scipy.optimize import minimize

    w0 = np.zeros(x.shape[1] + 1)
    res = minimize(lambda w: _logreg_objective(w, x, y, lam)[:2], w0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 100_000, "maxcor": 50, "ftol": 1e-16, "gtol": 1e-14})
    w = res.x
    f, g, h = _logreg_objective(w, x, y, lam)
    for _ in range(50):
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-8:
            f_new, g_new, h_new = _logreg_objective(w - t * step, x, y, lam)
            if f_new <= f:
                break
            t *= 0.5
        if f_new > f or np.linalg.norm(g_new) >= np.linalg.norm(g):
            break
        w, f, g, h = w - t * step, f_new, g_new, h_new
    return f, w


class LogisticRegression(Workload):
    """W1: L2-regularised logistic regression on scikit-learn's breast_cancer (569 x 30), features divided
    by their global maximum only, so the Gram matrix has condition number about 2e12; lambda = 1e-4 on the
    weights, full batch, float64. Metric: relative gap (f - f*) / f*, f* from L-BFGS + Newton at prepare()."""

    name = "w1-logreg"
    description = "ill-conditioned L2 logistic regression, breast_cancer, float64, full batch"
    dtype = torch.float64
    lam = 1e-4
    step_hint, max_steps, eval_every = 7150, 9550, 250
    target_is_defined = True  # (f − f*)/f* ≤ 1e-2 (protocol); tuned AdamW's median best is 3.8e-15, float64 noise

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        self.data_root = default_root(data_root)
        self.f_star: float | None = None
        self._xy: tuple[torch.Tensor, torch.Tensor] | None = None

    def check_data(self) -> None:
        sklearn_path("breast_cancer.csv")

    def prepare(self) -> None:
        if self._xy is not None:
            return
        x, y = sklearn_table("breast_cancer.csv")
        x, y = x / x.max(), y.astype(np.float64)
        self.f_star = logreg_optimum(x, y, self.lam)[0]
        self._xy = (torch.from_numpy(x), torch.from_numpy(y))

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Linear(30, 1, dtype=torch.float64)

    def train_batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.prepare()
        while True:
            yield self._xy

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        z = model(x).squeeze(1)
        return F.binary_cross_entropy_with_logits(z, y) + 0.5 * self.lam * model.weight.pow(2).sum()

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.prepare()
        with torch.no_grad():
            f = float(self.loss(model, self._xy))
            acc = float(((model(self._xy[0]).squeeze(1) > 0).double() == self._xy[1]).double().mean())
        return {"relative_gap": (f - self.f_star) / self.f_star, "loss": f, "accuracy": acc}


class LogisticRegressionSmoke(LogisticRegression):
    """W1 with a smoke budget: the same problem in 2,000 steps; its target is tuned AdamW's median best within
    that budget (targets.json), since the budget, not float64 precision, is what limits it."""

    name = "w1-logreg-smoke"
    description = "W1 with a smoke-test budget (2,000 steps)"
    step_hint, max_steps, eval_every = 1500, 2000, 50
    target_is_defined = False


class SoftmaxRegression(ClassificationWorkload):
    """W2: multinomial logistic regression 784 -> 10 on MNIST (50k train, evaluated on the 10k validation split)."""

    name = "w2-softmax"
    datasets = ("mnist",)
    description = "softmax regression 784->10 on MNIST"
    step_hint, max_steps, eval_every = 1500, 2000, 80

    def _load(self):
        mnist = data.load_mnist(self.data_root)
        (x, y), (xv, yv) = mnist["train"], mnist["val"]
        return torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(xv), torch.from_numpy(yv)

    def build_model(self, seed: int) -> nn.Module:
        with seeded(seed):
            return nn.Linear(784, 10)


for _cls in (LogisticRegression, LogisticRegressionSmoke, SoftmaxRegression):
    with_target(_cls)
