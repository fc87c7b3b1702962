"""Read ``flax.serialization`` msgpack files (``.state`` / ``.msgpack``) with msgpack and numpy only.

Format (what ``flax.serialization.to_bytes`` writes): one msgpack map; nested pytrees are nested maps with
string keys; every array is msgpack **extension type 1** whose payload is itself msgpack
``[shape, dtype_name, data]`` (``data``: the raw values, C order, little-endian). NumPy scalars are extension
type 3 with payload ``[dtype_name, data]``. Nothing is unpickled and no code runs: a file can only yield
dicts, lists, numbers, strings and arrays, and every array is checked against its declared shape.

``read_flax_state(path)`` returns the nested dict; ``flatten(tree)`` maps key paths (tuples) to arrays;
``check_tree(tree, spec, source=...)`` raises ``FlaxStateError`` listing every missing, unexpected or
mis-shaped array.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import msgpack
import numpy as np

__all__ = ["FlaxStateError", "read_flax_state", "decode_flax_state", "flatten", "check_tree", "format_path"]

_EXT_NDARRAY, _EXT_COMPLEX, _EXT_NPSCALAR = 1, 2, 3
_DTYPES = frozenset({"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                     "uint32", "uint64", "bool"})


class FlaxStateError(ValueError):
    """The bytes are not a (valid) flax msgpack state, or the tree is not the one expected."""


class _Raw:
    """An extension value as found in the file; decoded once its key path is known (for the messages)."""

    __slots__ = ("code", "payload")

    def __init__(self, code: int, payload: bytes):
        self.code, self.payload = code, payload


def format_path(path: tuple[str, ...]) -> str:
    return " / ".join(path) if path else "<root>"


def _decode_array(raw: _Raw, path: tuple[str, ...], source: str) -> np.ndarray:
    where = f"{source}: array {format_path(path)}"
    if raw.code == _EXT_COMPLEX:
        raise FlaxStateError(f"{where}: complex scalars (msgpack extension 2) are not supported")
    if raw.code not in (_EXT_NDARRAY, _EXT_NPSCALAR):
        raise FlaxStateError(f"{where}: unknown msgpack extension type {raw.code} (flax writes 1 for arrays)")
    try:
        fields = msgpack.unpackb(raw.payload, raw=False)
    except Exception as exc:  # msgpack raises ValueError / ExtraData / FormatError on bad payloads
        raise FlaxStateError(f"{where}: corrupt array payload ({exc})") from None
    if raw.code == _EXT_NPSCALAR:
        fields = [[], *fields] if isinstance(fields, list) and len(fields) == 2 else None
    if not (isinstance(fields, list) and len(fields) == 3):
        raise FlaxStateError(f"{where}: array payload is not [shape, dtype, data]")
    shape, dtype, data = fields
    if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                            for d in shape)):
        raise FlaxStateError(f"{where}: invalid shape {shape!r}")
    if dtype not in _DTYPES:
        raise FlaxStateError(f"{where}: unsupported dtype {dtype!r} (supported: {', '.join(sorted(_DTYPES))})")
    if not isinstance(data, bytes):
        raise FlaxStateError(f"{where}: data is {type(data).__name__}, expected bytes")
    dt = np.dtype(dtype).newbyteorder("<")
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(data) != expected:
        raise FlaxStateError(f"{where}: {len(data)} bytes of data for shape {tuple(shape)} {dtype} "
                             f"(expected {expected}); the file is truncated or corrupt")
    return np.frombuffer(data, dtype=dt).astype(np.dtype(dtype), copy=True).reshape(shape)


def _convert(node: Any, path: tuple[str, ...], source: str) -> Any:
    if isinstance(node, _Raw):
        return _decode_array(node, path, source)
    if isinstance(node, dict):
        return {k: _convert(v, path + (k,), source) for k, v in node.items()}
    if isinstance(node, list):
        return [_convert(v, path + (str(i),), source) for i, v in enumerate(node)]
    return node


def decode_flax_state(data: bytes, *, source: str = "<bytes>") -> dict[str, Any]:
    """Decode the bytes of a flax msgpack state into nested dicts of numpy arrays."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise FlaxStateError(f"{source}: the file is empty")
    try:
        tree = msgpack.unpackb(bytes(data), ext_hook=_Raw, raw=False, strict_map_key=True)
    except msgpack.ExtraData:
        raise FlaxStateError(f"{source}: not a flax msgpack state (extra bytes after the first object)") from None
    except Exception as exc:  # ValueError("incomplete input"), FormatError, StackError, UnicodeDecodeError, ...
        reason = "truncated file" if "incomplete" in str(exc) else str(exc)
        raise FlaxStateError(f"{source}: not a readable flax msgpack state ({reason})") from None
    if not isinstance(tree, dict):
        raise FlaxStateError(f"{source}: not a flax msgpack state (top level is {type(tree).__name__}, "
                             "expected a map)")
    return _convert(tree, (), source)


def read_flax_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a flax msgpack ``.state`` file into nested dicts of numpy arrays (no pickle, no JAX)."""
    with open(path, "rb") as f:
        data = f.read()
    return decode_flax_state(data, source=os.fspath(path))


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """``{key path: leaf}`` of a nested mapping (key paths are tuples: a key may itself contain ``/``)."""
    out: dict[tuple[str, ...], Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def check_tree(tree: Mapping[str, Any], spec: Mapping[tuple[str, ...], tuple[int, ...]], *, source: str,
               what: str = "tree", dtype: str = "float32", hint: str = "") -> dict[tuple[str, ...], np.ndarray]:
    """Check that ``tree`` holds exactly the arrays of ``spec`` (key path → shape) in ``dtype``; return the
    flattened arrays. The error lists every problem at once."""
    flat = flatten(tree)
    problems = []
    missing = [p for p in spec if p not in flat]
    extra = [p for p in flat if p not in spec]
    if missing:
        problems.append(f"missing {len(missing)} array(s): " + ", ".join(map(format_path, missing[:8]))
                        + (" ..." if len(missing) > 8 else ""))
    if extra:
        problems.append(f"unexpected {len(extra)} entr(y/ies): " + ", ".join(map(format_path, extra[:8]))
                        + (" ..." if len(extra) > 8 else ""))
    for p, shape in spec.items():
        v = flat.get(p)
        if v is None:
            continue
        if not isinstance(v, np.ndarray):
            problems.append(f"{format_path(p)} is a {type(v).__name__}, expected an array")
        elif v.shape != tuple(shape) or v.dtype != np.dtype(dtype):
            problems.append(f"{format_path(p)} is {v.dtype}{list(v.shape)}, expected {dtype}{list(shape)}")
    if problems:
        raise FlaxStateError(f"{source} is not a valid {what}: " + "; ".join(problems) + (f". {hint}" if hint else ""))
    return {p: flat[p] for p in spec}
