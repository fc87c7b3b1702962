"""``create_optimizer``: registry name + model (or params) → a ready ``torch.optim.Optimizer``."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from .params import split_params
from .registry import optimizer_info

_NORM_TYPES = tuple(t for t in (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None),
    nn.modules.batchnorm._NormBase,
) if t is not None)
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters that get no weight decay by default: biases and other ≤1-D tensors, the
    parameters of normalisation layers, and embeddings."""
    names = set()
    for mod_name, module in model.named_modules():
        skip_all = isinstance(module, _NORM_TYPES + _EMBEDDING_TYPES)
        for p_name, p in module.named_parameters(recurse=False):
            if skip_all or p.ndim <= 1:
                names.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return names


def _exempt_names(model: nn.Module, named: list, no_decay: Any, has_decay: bool) -> set[str]:
    if not has_decay or no_decay is None:
        return set()
    if no_decay == "auto":
        return no_decay_names(model)
    patterns = [no_decay] if isinstance(no_decay, str) else list(no_decay)
    return {n for n, _ in named if any(fnmatch.fnmatch(n, pat) for pat in patterns)}


def _module_groups(model: nn.Module, no_decay: Any, has_decay: bool) -> tuple[list, dict]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    exempt = _exempt_names(model, named, no_decay, has_decay)
    decay = [p for n, p in named if n not in exempt]
    rest = [p for n, p in named if n in exempt]
    groups = []
    if decay:
        groups.append({"params": decay})
    if rest:
        groups.append({"params": rest, "weight_decay": 0.0})
    return groups, {p: n for n, p in named}


def _routed_groups(model: nn.Module, no_decay: Any, matrix_patterns: Any, exclude_patterns: Any) -> tuple[list, dict]:
    """Matrix optimizers: ``split_params`` decides the ``kind`` of each group; ``no_decay`` applies within each."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names = {p: n for n, p in named}
    exempt = _exempt_names(model, named, no_decay, True)
    groups = []
    for kind, params in zip(("matrix", "adamw"), split_params(model, matrix_patterns, exclude_patterns)):
        decay = [p for p in params if names[p] not in exempt]
        rest = [p for p in params if names[p] in exempt]
        if decay:
            groups.append({"params": decay, "kind": kind})
        if rest:
            groups.append({"params": rest, "kind": kind, "weight_decay": 0.0})
    return groups, names


def create_optimizer(model_or_params: nn.Module | Iterable[Any], name: str, *, no_decay: Any = "auto",
                     matrix_patterns: Any = None, exclude_patterns: Any = None,
                     **hyperparameters: Any) -> torch.optim.Optimizer:
    """Build the registered optimizer ``name``.

    ``model_or_params`` is an ``nn.Module`` (then biases, norm gains and embeddings go to a group with
    ``weight_decay=0``; ``no_decay=None`` decays everything, or give fnmatch patterns of parameter names) or
    an iterable of tensors / param-group dicts, passed through as is. Unknown hyperparameters raise
    ``TypeError`` listing the accepted ones; every hyperparameter has a default.

    Matrix optimizers (``muon``, ``adamuon``, ``root``: classes with ``routes_params``) given a module split it
    with ``optfit.params.split_params(model, matrix_patterns, exclude_patterns)``: hidden ≥2-D weights form
    ``kind="matrix"`` groups (``lr``, ``weight_decay``, ...), the rest ``kind="adamw"`` groups (``adamw_lr``,
    ``adamw_betas``, ``adamw_eps``, ``adamw_weight_decay``); ``no_decay`` applies within each part.
    """
    info = optimizer_info(name)
    accepted = set(info.defaults)
    # wrappers (SAM, Lookahead) also take their base's hyperparameters; None: the base checks its own keywords
    widen = getattr(info.cls, "accepted_hyperparameters", None)
    extra = widen(hyperparameters) if widen is not None else set()
    accepted = set(hyperparameters) | accepted if extra is None else accepted | extra
    unknown = sorted(set(hyperparameters) - accepted)
    if unknown:
        raise TypeError(f"{info.name} does not accept {', '.join(map(repr, unknown))}; accepted "
                        f"hyperparameters: {', '.join(sorted(accepted))}")
    clash = sorted(set(hyperparameters) & set(info.preset))
    if clash:
        raise TypeError(f"{info.name} fixes {', '.join(clash)} (it is {info.cls.__name__} with "
                        f"{dict(info.preset)}); use {info.cls.__name__}'s own registry name to change it")
    kwargs = {**info.preset, **hyperparameters}
    names: dict[Any, str] = {}
    routes = getattr(info.cls, "routes_params", False)
    if (matrix_patterns is not None or exclude_patterns is not None) and not (
            routes and isinstance(model_or_params, nn.Module)):
        raise TypeError(f"matrix_patterns / exclude_patterns route the parameters of an nn.Module for a matrix "
                        f"optimizer; {info.name} with {type(model_or_params).__name__} takes neither")
    if isinstance(model_or_params, nn.Module):
        if routes:
            params, names = _routed_groups(model_or_params, no_decay, matrix_patterns, exclude_patterns)
        else:
            params, names = _module_groups(model_or_params, no_decay, "weight_decay" in accepted)
        if not params:
            raise ValueError(f"the model {type(model_or_params).__name__} has no trainable parameters")
        if getattr(info.cls, "needs_model", False):  # e.g. AdaFisher hooks the model's layers
            kwargs.setdefault("model", model_or_params)
    else:
        params = list(model_or_params)
    optimizer = info.cls(params, **kwargs)
    if names and hasattr(optimizer, "set_param_names"):
        optimizer.set_param_names(names)
    return optimizer
