"""The flax msgpack reader: round trips on hand-built files, clear errors on broken or foreign ones, and the
released Celo / Celo-Adam files (read from ../shared/data/celo, never copied into the project)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

from optfit.learned._celo_net import SPECS
from optfit.learned.flax_state import FlaxStateError, check_tree, decode_flax_state, flatten, read_flax_state

CELO_DIR = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "celo").resolve()
needs_files = pytest.mark.skipif(not CELO_DIR.is_dir(), reason=f"Celo weights folder {CELO_DIR} not found")
SHA256 = {"celo_theta.state": "35683c6123069c101d62ec1f8b2e6d70d50a43e67ebe09953b27620a7dcb836b",
          "celo_adam_theta.state": "99c65fa0218a739c32eac4e8a99523b6fed92e2926d0c5d64e83835637b75d38"}


def _ext(a: np.ndarray) -> msgpack.ExtType:
    data = a.astype(a.dtype.newbyteorder("<")).tobytes()
    return msgpack.ExtType(1, msgpack.packb([list(a.shape), a.dtype.name, data]))


def _pack(tree) -> bytes:
    def enc(node):
        if isinstance(node, dict):
            return {k: enc(v) for k, v in node.items()}
        return _ext(node) if isinstance(node, np.ndarray) else node
    return msgpack.packb(enc(tree))


def test_round_trip_keeps_values_shapes_dtypes_and_slash_keys():
    rng = np.random.default_rng(0)
    tree = {"rnn_params": {"rnn/linear": {"w": rng.standard_normal((3, 5)).astype(np.float32)}},
            "~": {"b": np.arange(4, dtype=np.int64), "s": np.zeros((), np.float64)}, "n": 7}
    out = decode_flax_state(_pack(tree))
    w = out["rnn_params"]["rnn/linear"]["w"]
    assert w.dtype == np.float32 and w.shape == (3, 5) and np.array_equal(w, tree["rnn_params"]["rnn/linear"]["w"])
    assert np.array_equal(out["~"]["b"], np.arange(4)) and out["~"]["s"].shape == () and out["n"] == 7
    assert w.flags.writeable  # a copy, not a view into the file's bytes
    assert set(flatten(out)) == {("rnn_params", "rnn/linear", "w"), ("~", "b"), ("~", "s"), ("n",)}


def test_numpy_scalar_extension_is_read():
    payload = msgpack.packb(["float32", np.float32(2.5).tobytes()])
    out = decode_flax_state(msgpack.packb({"x": msgpack.ExtType(3, payload)}))
    assert out["x"].shape == () and float(out["x"]) == 2.5


@pytest.mark.parametrize("data, match", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a"),
    (b'{"json": true}', "not a"),
    (msgpack.packb([1, 2, 3]), "top level is list"),
    (msgpack.packb({"a": 1}) + b"\x00", "extra bytes"),
])
def test_foreign_or_empty_bytes_are_rejected_clearly(data, match):
    with pytest.raises(FlaxStateError, match=match):
        decode_flax_state(data, source="x.state")


def test_truncated_file_is_reported_as_truncated():
    data = _pack({"a": {"w": np.ones((64, 64), np.float32)}})
    for cut in (len(data) // 2, len(data) - 1):
        with pytest.raises(FlaxStateError, match="truncated"):
            decode_flax_state(data[:cut], source="x.state")


def test_array_with_wrong_byte_count_names_its_key_path():
    bad = msgpack.ExtType(1, msgpack.packb([[2, 3], "float32", b"\x00" * 20]))
    with pytest.raises(FlaxStateError, match=r"a / rnn/linear / w: 20 bytes .*\(expected 24\)"):
        decode_flax_state(msgpack.packb({"a": {"rnn/linear": {"w": bad}}}), source="x.state")


@pytest.mark.parametrize("ext, match", [
    (msgpack.ExtType(9, b""), "unknown msgpack extension type 9"),
    (msgpack.ExtType(2, msgpack.packb([1.0, 2.0])), "complex"),
    (msgpack.ExtType(1, msgpack.packb([[1], "object", b"\x00" * 8])), "unsupported dtype 'object'"),
    (msgpack.ExtType(1, msgpack.packb([[-1], "float32", b""])), "invalid shape"),
    (msgpack.ExtType(1, b"\xc1"), "corrupt array payload"),
])
def test_bad_arrays_are_rejected(ext, match):
    with pytest.raises(FlaxStateError, match=match):
        decode_flax_state(msgpack.packb({"k": ext}), source="x.state")


def test_check_tree_lists_every_problem_at_once():
    tree = {"a": {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float64)}, "extra": np.zeros(1, np.float32)}
    spec = {("a", "w"): (3, 2), ("a", "b"): (3,), ("a", "missing"): (1,)}
    with pytest.raises(FlaxStateError) as err:
        check_tree(tree, spec, source="f.state", what="test file")
    msg = str(err.value)
    assert "f.state is not a valid test file" in msg
    assert "missing 1 array(s): a / missing" in msg and "unexpected 1" in msg and "extra" in msg
    assert "a / w is float32[2, 3], expected float32[3, 2]" in msg and "a / b is float64[3]" in msg


@needs_files
@pytest.mark.parametrize("name, kind, count", [("celo_theta.state", "celo", 33),
                                               ("celo_adam_theta.state", "celo-adam", 12)])
def test_released_files_decode_to_the_documented_tree(name, kind, count):
    path = CELO_DIR / name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[name]
    tree = read_flax_state(path)
    flat = check_tree(tree, SPECS[kind], source=str(path))
    assert len(flat) == count and all(v.dtype == np.float32 for v in flat.values())
    assert list(tree["lstm_init_state"]) == ["hidden", "cell"]  # the file's order


@needs_files
def test_truncated_copy_of_a_released_file_is_rejected(tmp_path):
    bad = tmp_path / "celo_theta.state"
    bad.write_bytes((CELO_DIR / "celo_theta.state").read_bytes()[:100_000])
    with pytest.raises(FlaxStateError, match="truncated"):
        read_flax_state(bad)
