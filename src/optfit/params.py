"""Which tensors a matrix optimizer (Muon, AdaMuon, ROOT) owns and which go to its auxiliary AdamW.

Matrix part: the trainable ≥2-D *hidden* weights — linear layers' weights and conv kernels (treated as
(out, in·kh·kw)), and any other ≥2-D parameter. Auxiliary part: every ≤1-D tensor (biases, norm gains,
scalars), the parameters of embedding and normalisation layers, and the output head. The head is every
module whose dotted name has a component in ``HEAD_NAMES`` (``lm_head``, ``head.fc``, ``classifier``, ...);
when no module is named so, the last ``nn.Linear`` in registration order. A weight shared by an embedding and
a head (tied weights) is auxiliary. Name patterns (``fnmatch`` on ``model.named_parameters()`` names)
override the rules: ``matrix_patterns`` force the ≥2-D tensors they match into the matrix part (≤1-D
matches stay auxiliary), ``exclude_patterns`` force tensors into the auxiliary part (exclusion wins when both
match).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

from torch import Tensor, nn

__all__ = ["split_params", "HEAD_NAMES"]

HEAD_NAMES = ("lm_head", "head", "fc_out", "classifier", "output")
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_NORMS = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, getattr(nn, "RMSNorm", None),
                           nn.modules.batchnorm._NormBase) if t is not None)


def _patterns(name: str, value: str | Iterable[str] | None) -> list[str]:
    if value is None:
        return []
    pats = [value] if isinstance(value, str) else list(value)
    if not all(isinstance(p, str) for p in pats):
        raise TypeError(f"{name} must be a string or an iterable of strings, got {value!r}")
    return pats


def _head_modules(model: nn.Module) -> set[str]:
    owners = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    named = {n for n, _ in owners if any(part in HEAD_NAMES for part in n.split("."))}
    if named:
        return named
    linears = [n for n, m in owners if isinstance(m, nn.Linear)]
    return {linears[-1]} if linears else set()


def split_params(model: nn.Module, matrix_patterns: str | Iterable[str] | None = None,
                 exclude_patterns: str | Iterable[str] | None = None) -> tuple[list[Tensor], list[Tensor]]:
    """``(matrix_params, other_params)``: the trainable parameters of ``model`` in ``named_parameters()``
    order, split as described in the module docstring. A pattern that matches nothing it could move (for
    ``matrix_patterns``: no ≥2-D parameter) raises ``ValueError`` naming the argument: likely a typo."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    force = _patterns("matrix_patterns", matrix_patterns)
    exclude = _patterns("exclude_patterns", exclude_patterns)
    heads = _head_modules(model)
    aux_ids: set[int] = set()
    for mod_name, module in model.named_modules(remove_duplicate=False):
        aux_module = isinstance(module, _EMBEDDINGS + _NORMS) or mod_name in heads
        for p in module.parameters(recurse=False):
            if aux_module or p.ndim < 2:
                aux_ids.add(id(p))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for arg, pats, eligible in (("matrix_patterns", force, 2), ("exclude_patterns", exclude, 0)):
        for pat in pats:
            if not any(fnmatch.fnmatchcase(n, pat) and p.ndim >= eligible for n, p in named):
                what = "trainable parameter with >= 2 dimensions" if eligible else "trainable parameter"
                raise ValueError(f"Invalid {arg}: {pat!r} matches no {what} of {type(model).__name__}")
    matrix, other = [], []
    for name, p in named:
        is_matrix = id(p) not in aux_ids
        if p.ndim >= 2 and any(fnmatch.fnmatchcase(name, pat) for pat in force):
            is_matrix = True
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            is_matrix = False
        (matrix if is_matrix else other).append(p)
    return matrix, other
