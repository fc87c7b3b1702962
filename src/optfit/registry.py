"""One frozen metadata record per optimizer: it feeds the factory, the README table and the test suite."""

from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

_REGISTRY: dict[str, "OptimizerInfo"] = {}
_ALIASES: dict[str, str] = {}


@dataclass(frozen=True)
class OptimizerInfo:
    """What optfit knows about one registry name.

    ``preset`` fixes hyperparameters of ``cls`` (``cadamw`` = ``AdamW`` with ``cautious=True``).
    ``state_tensors`` counts the extra tensors of parameter size kept per parameter at the defaults
    (factored states count 0; their O(m+n) size is noted in ``description``).
    ``torch_equivalent`` = (torch.optim class name, extra torch kwargs) for the float64 parity test.
    ``test_hparams`` are settings under which the optimizer converges on the conformance quadratic.
    ``needs_batch``: the step needs the batch itself (``set_batch(x, y)``) and a model it can trace (Universal MM):
    the registry-wide contract tests and trainers cannot drive it (its own tests cover the contract); the showdown's
    runner gives it the batch on workloads that state their loss (``Workload.loss_inputs``).
    ``has_betas`` / ``has_momentum``: the param groups have a ``betas`` / ``momentum`` key that an LR scheduler
    with ``cycle_momentum=True`` (OneCycleLR, CyclicLR) can cycle, with the meaning torch gives it.
    """

    name: str
    cls: type
    family: str
    paper: str
    description: str
    state_tensors: float
    preset: Mapping[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    needs_closure: bool = False
    needs_batch: bool = False
    has_betas: bool = False
    has_momentum: bool = False
    supports_cautious: bool = True
    supports_complex: bool = True
    supports_foreach: bool = True
    deterministic: bool = True
    torch_equivalent: tuple[str, Mapping[str, Any]] | None = None
    test_hparams: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("preset", "test_hparams"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        if self.torch_equivalent is not None:
            cls_name, kwargs = self.torch_equivalent
            object.__setattr__(self, "torch_equivalent", (cls_name, MappingProxyType(dict(kwargs))))

    @property
    def takes_total_steps(self) -> bool:
        """The optimizer plans over the run's length (auto's schedule, Celo's t/N) and a caller may pass it:
        ``total_steps`` is accepted and not fixed by the preset (``auto-anytime`` fixes it to None)."""
        return "total_steps" in self.defaults and "total_steps" not in self.preset

    @property
    def defaults(self) -> dict[str, Any]:
        """Every accepted hyperparameter with its default (the preset applied)."""
        out = {k: p.default for k, p in inspect.signature(self.cls.__init__).parameters.items()
               if k not in ("self", "params") and p.kind is not inspect.Parameter.VAR_KEYWORD}
        options = getattr(self.cls, "OPTIONS", ())
        option_defaults = {"cautious": False, "nonfinite": "raise", "impl": "auto", "state_dtype": None, "maximize": False,
                           "grad_filter": None, "decay_mode": getattr(self.cls, "default_decay_mode", None)}
        out.update({k: option_defaults.get(k) for k in options})
        out.update(self.preset)
        return out

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        return tuple(self.defaults)


def register(info: OptimizerInfo) -> OptimizerInfo:
    key = info.name.lower()
    if key in _REGISTRY or key in _ALIASES:
        raise ValueError(f"optimizer name {info.name!r} is already registered")
    _REGISTRY[key] = info
    for alias in info.aliases:
        _ALIASES[alias.lower()] = key
    return info


def _load() -> None:
    import optfit.optim  # noqa: F401  (modules register their records on import)


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def optimizer_info(name: str) -> OptimizerInfo:
    """The record for ``name`` (registry name or alias, case-insensitive, ``_`` and ``-`` alike)."""
    _load()
    if not isinstance(name, str):
        raise TypeError(f"optimizer name must be a string, got {type(name).__name__}")
    key = _normalise(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        close = fnmatch.filter(_REGISTRY, f"*{key[:3]}*")
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint} (optfit.list_optimizers() lists all "
                         f"{len(_REGISTRY)})")
    return _REGISTRY[key]


def list_optimizers(pattern: str = "*") -> list[str]:
    """Registry names matching the fnmatch ``pattern``, sorted."""
    _load()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern.lower()))


def markdown_table() -> str:
    """The optimizer table of the README and the docs, generated from the records."""
    rows = ["| name | class | family | extra state (×P) | fast paths | closure | paper | what it is |",
            "|---|---|---|---|---|---|---|---|"]
    for name in list_optimizers():
        i = optimizer_info(name)
        preset = ", ".join(f"{k}={v!r}" for k, v in i.preset.items())
        cls = f"`{i.cls.__name__}`" + (f" ({preset})" if preset else "")
        impls = i.cls._offered_impls() if hasattr(i.cls, "IMPLS") else None
        fast = (", ".join(x for x in impls if x not in ("auto", "reference")) or "—") if impls is not None \
            else ("foreach, compiled" if i.supports_foreach else "compiled")
        rows.append(f"| `{name}` | {cls} | {i.family} | {i.state_tensors:g} | {fast} | "
                    f"{'yes' if i.needs_closure else ''} | {i.paper} | {i.description} |")
    return "\n".join(rows)


README_START, README_END = "<!-- optimizer-table:start -->", "<!-- optimizer-table:end -->"


def splice_readme(text: str) -> str:
    """``text`` with the block between the README markers replaced by the current ``markdown_table()``."""
    head, sep, rest = text.partition(README_START)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise ValueError(f"README markers {README_START} / {README_END} not found")
    return f"{head}{README_START}\n{markdown_table()}\n{README_END}{tail}"
