"""Learning rate as a function of batch size: lr(B) = lr₀ · (B / B₀) ("linear") or lr₀ · √(B / B₀) ("sqrt").

Granziol, Zohren, Roberts, "Learning Rates as a Function of Batch Size: A Random Matrix Theory Approach to
Neural Network Training" (arXiv 2006.09092): the extremal eigenvalues of the mini-batch Hessian grow with the
batch noise, so the largest stable lr grows linearly with B for SGD and as √B for adaptive optimizers such as
Adam. Both rules are for B below the scale where the batch noise stops dominating those eigenvalues; far
above it the best lr stops growing, and this function does not cap anything.

The rule for an optimizer (``batch_scaling_rule``):
- "linear" for SGD-like updates: registry family "first-order" (sgd, grad-avg, gravity) or a class whose name
  says SGD (momentum SGD: optfit's and torch's SGD, gap-sgd, schedule-free SGD);
- "sqrt" for every other optimizer (Adam family, Adafactor, RMSprop, matrix and curvature methods), and for
  the sign-based family (Lion): Li et al., "Surge Phenomenon in Optimal Learning Rate and Batch Size Scaling"
  (arXiv 2405.14578), treat sign updates and find the best lr rises like √B for B well below the gradient
  noise scale, then falls past it — the same √B rule as Adam in the regime where scaling helps at all;
- an error for the "learning-rate-free" family (DoG, D-Adaptation, Prodigy): they estimate the step size
  themselves, their lr is a unitless multiplier that batch-size rules do not describe. The schedule-free
  optimizers registered in that family have a real lr and follow their base (SGD linear, AdamW/RAdam sqrt).
"""

from __future__ import annotations

import math
import numbers

import torch

RULES = ("linear", "sqrt")


def _registry_record(optimizer):
    from optfit.registry import list_optimizers, optimizer_info
    if isinstance(optimizer, str):
        try:
            return optimizer_info(optimizer)
        except (KeyError, ValueError) as err:
            raise ValueError(f"rule: {optimizer!r} is neither 'linear', 'sqrt' nor a registry name ({err})") from None
    cls = type(optimizer) if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise ValueError(f"rule must be 'linear', 'sqrt', a registry name or an optimizer, got {optimizer!r}")
    for name in list_optimizers():
        info = optimizer_info(name)
        if info.cls is cls:
            return info
    return cls


def batch_scaling_rule(optimizer) -> str:
    """"linear" or "sqrt" for a registry name, an optimizer instance or class (module docstring)."""
    found = _registry_record(optimizer)
    if isinstance(found, type):
        if "SGD" in found.__name__:
            return "linear"
        if found.__module__.startswith("torch.optim"):
            return "sqrt"
        raise ValueError(f"rule: {found.__name__} is not in optfit's registry, so its batch-size rule is "
                         "unknown; pass rule='linear' (SGD-like) or rule='sqrt' (adaptive)")
    if found.family == "learning-rate-free" and "ScheduleFree" not in found.cls.__name__:
        raise ValueError(f"rule: {found.name} is learning-rate-free (it estimates its own step size); batch-size "
                         "rules do not apply to its lr multiplier — pass rule='linear' or 'sqrt' to force one")
    if found.family == "first-order" or "SGD" in found.cls.__name__:
        return "linear"
    return "sqrt"


def scale_lr(lr: float, batch_size: int, base_batch_size: int, rule) -> float:
    """The lr for ``batch_size`` given ``lr`` tuned at ``base_batch_size``.

    ``rule``: "linear", "sqrt", or an optimizer (registry name, instance or class) whose rule is looked up
    by ``batch_scaling_rule``.
    """
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
    for name, value in (("batch_size", batch_size), ("base_batch_size", base_batch_size)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if rule not in RULES:
        rule = batch_scaling_rule(rule)
    ratio = batch_size / base_batch_size
    return float(lr) * (ratio if rule == "linear" else math.sqrt(ratio))
