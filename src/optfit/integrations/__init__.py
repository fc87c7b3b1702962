"""Training-loop integrations: what a loop must do differently for some optfit optimizers.

Three things vary between optimizers, and each has a question here that a training loop can ask of any
optimizer (an optfit one, a torch one, or either wrapped by accelerate or Lightning):

* ``needs_closure(opt)``: ``step()`` needs a closure that re-evaluates the loss (SANIA and Celo read its value,
  Grad-Avg calls it a second time at a trial point); every torch optimizer accepts one, so a loop that always
  passes a closure is right for all of them.
* ``backward_kwargs(opt)``: the keyword arguments the coming step needs from ``loss.backward`` —
  ``{"create_graph": True}`` for the Hessian steps of AdaHessian and FOSI, ``{}`` otherwise.
* ``has_eval_mode(opt)``: ``opt.train()`` / ``opt.eval()`` swap training and evaluation weights (Schedule-Free);
  call ``eval()`` before evaluating or saving the model and ``train()`` before the next training step.

``optfit.integrations.transformers.OptfitTrainer`` (needs ``transformers``) does all three inside the Hugging Face
``Trainer``; ``docs/integrations.md`` has the Lightning and accelerate recipes.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import list_optimizers, optimizer_info

__all__ = ["unwrap", "needs_closure", "needs_create_graph", "backward_kwargs", "has_eval_mode", "in_train_mode"]


def unwrap(optimizer: Any) -> Any:
    """The optimizer inside trainer wrappers (accelerate's ``AcceleratedOptimizer.optimizer``, Lightning's
    ``LightningOptimizer._optimizer``); ``optimizer`` itself when it wraps nothing."""
    seen = set()
    while id(optimizer) not in seen:
        seen.add(id(optimizer))
        for attr in ("optimizer", "_optimizer"):
            inner = getattr(optimizer, attr, None)
            if isinstance(inner, torch.optim.Optimizer) or callable(getattr(inner, "step", None)):
                optimizer = inner
                break
        else:
            break
    return optimizer


def _records(cls: type) -> list:
    return [info for info in map(optimizer_info, list_optimizers()) if info.cls is cls]


def needs_closure(optimizer: Any) -> bool:
    """Whether ``step()`` needs a closure returning the loss (the class's ``needs_closure`` flag, or a registry
    record of its class that says so)."""
    opt = unwrap(optimizer)  # the instance, not only its class: Lookahead needs what its base needs
    return bool(getattr(opt, "needs_closure", False)) or any(info.needs_closure for info in _records(type(opt)))


def needs_create_graph(optimizer: Any) -> bool:
    """Whether the gradients of the coming step must carry their autograd graph (``create_graph=True``): the
    class says ``needs_create_graph`` and, where it can tell, ``next_step_needs_graph()`` (AdaHessian with
    ``update_period > 1`` estimates the Hessian on some steps only)."""
    opt = unwrap(optimizer)
    if not getattr(opt, "needs_create_graph", False):
        return False
    due = getattr(opt, "next_step_needs_graph", None)
    return True if due is None else bool(due())


def backward_kwargs(optimizer: Any) -> dict[str, Any]:
    """Keyword arguments for ``loss.backward(**kw)`` / ``accelerator.backward(loss, **kw)`` before the next step."""
    return {"create_graph": True} if needs_create_graph(optimizer) else {}


def has_eval_mode(optimizer: Any) -> bool:
    """Whether the optimizer swaps weights with ``train()`` / ``eval()`` (Schedule-Free)."""
    opt = unwrap(optimizer)
    return callable(getattr(opt, "train", None)) and callable(getattr(opt, "eval", None))


def in_train_mode(optimizer: Any) -> bool:
    """Whether a ``has_eval_mode`` optimizer holds the training weights now (the ``train_mode`` flag of its
    param groups, as optfit and the ``schedulefree`` package keep it; assumed when a group has no flag)."""
    return all(group.get("train_mode", True) for group in unwrap(optimizer).param_groups)
