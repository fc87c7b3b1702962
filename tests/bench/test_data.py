from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import subprocess
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from optfit.bench import data
from optfit.bench.workload import DataMissing

from .data_fakes import PLAY_A, make_fashion_mnist, make_mnist, make_mnist1d, make_sunspots, write_idx


# ------------------------------------------------------------------------------------------ cache folder
def test_data_dir_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTFIT_DATA", str(tmp_path / "d"))
    assert data.data_dir() == tmp_path / "d"
    monkeypatch.delenv("OPTFIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert data.data_dir() == tmp_path / "c" / "optfit" / "data"


# ------------------------------------------------------------------------------------------ loaders
def test_idx_roundtrip_and_bad_magic(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    out = data.read_idx(tmp_path / "a.gz")
    assert out.shape == (2, 3, 4) and np.array_equal(out, arr) and out.flags.writeable
    (tmp_path / "b").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01x")  # float IDX: not supported
    with pytest.raises(ValueError, match="unsigned-byte IDX"):
        data.read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))  # says 5 bytes, holds 2
    with pytest.raises(ValueError, match="holds 2"):
        data.read_idx(tmp_path / "c")


def test_load_mnist_reads_the_pickle(tmp_path):
    make_mnist(tmp_path, sizes=(20, 10, 5))
    m = data.load_mnist(tmp_path)
    assert [m[k][0].shape for k in ("train", "val", "test")] == [(20, 784), (10, 784), (5, 784)]
    assert m["train"][0].dtype == np.float32 and m["train"][1].dtype == np.int64


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_mnist_unpickler_refuses_code(tmp_path):
    path = tmp_path / "mnist" / "mnist.pkl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wb") as fh:
        pickle.dump(((np.zeros((1, 784), np.float32), _Evil()),) * 3, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        data.load_mnist(tmp_path)


def test_load_fashion_sunspots_mnist1d(tmp_path):
    make_fashion_mnist(tmp_path, sizes=(12, 6))
    fm = data.load_fashion_mnist(tmp_path)
    assert fm["train"][0].shape == (12, 28, 28) and fm["test"][1].shape == (6,)
    make_sunspots(tmp_path, n=30)
    s = data.load_sunspots(tmp_path)
    assert s.shape == (30,) and s.dtype == np.float64 and s[0] == pytest.approx(85.0)  # 80 + 0 + 5 cos 0
    make_mnist1d(tmp_path, sizes=(8, 4))
    d = data.load_mnist1d(tmp_path)
    assert d["x"].shape == (8, 40) and d["y_test"].shape == (4,)


def test_markdown_to_text():
    text = data.markdown_to_text(PLAY_A)
    assert text.startswith("The Comedy of Tests\n\nACT I\n\nSCENE I. A room.\n\nEnter ALPHA and BETA\n\nALPHA:\n")
    assert "[Aside] They shall" in text and "\nExit\n" in text
    assert not set("*_#\\") & set(text) and "  \n" not in text


def test_missing_data_names_the_command(tmp_path):
    with pytest.raises(DataMissing, match=r"optfit data prepare --only sunspots"):
        data.load_sunspots(tmp_path)
    with pytest.raises(DataMissing, match="fashion-mnist"):
        data.load_fashion_mnist(tmp_path)


# ------------------------------------------------------------------------------------------ extractors
def _ar(members: dict[str, bytes]) -> bytes:
    out = b"!<arch>\n"
    for name, payload in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(payload):<10}`\n".encode()
        out += header + payload + (b"\n" if len(payload) % 2 else b"")
    return out


def _tar(files: dict[str, bytes], mode: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def test_extract_deb_members(tmp_path):
    payload = _tar({"./usr/share/datasets/x/a.gz": b"AAA", "./usr/share/doc/readme": b"doc"}, "w:xz")
    deb = tmp_path / "x.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": _tar({}, "w:xz"), "data.tar.xz": payload}))
    out = tmp_path / "out"
    data.extract_deb_members({"usr/share/datasets/x/a.gz": "a.gz"})(deb, out)
    assert [p.name for p in out.iterdir()] == ["a.gz"] and (out / "a.gz").read_bytes() == b"AAA"
    (tmp_path / "bad.deb").write_bytes(b"not an ar archive")
    with pytest.raises(ValueError, match="ar archive"):
        data.extract_deb_members({})(tmp_path / "bad.deb", out)


def test_extract_nested_tar_and_zip_prefix(tmp_path):
    inner = _tar({"resources/rdata/csv/datasets/s.csv": b"1,2\n", "resources/other": b"x"}, "w:gz")
    sdist = tmp_path / "p-0.1.tar.gz"
    sdist.write_bytes(_tar({"p-0.1/p/resources.tar.gz": inner, "p-0.1/setup.py": b""}, "w:gz"))
    data.extract_nested_tar("p/resources.tar.gz", {"resources/rdata/csv/datasets/s.csv": "s.csv"})(sdist, tmp_path / "o")
    assert (tmp_path / "o" / "s.csv").read_bytes() == b"1,2\n"
    whl = tmp_path / "w.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/plays/a/x.md", "X")
        zf.writestr("pkg/plays/y.md", "Y")
        zf.writestr("pkg/plays/__init__.py", "")
    data.extract_zip_prefix("pkg/plays/", ".md", "plays")(whl, tmp_path / "z")
    assert sorted(p.relative_to(tmp_path / "z").as_posix() for p in (tmp_path / "z").rglob("*.md")) == \
        ["plays/a/x.md", "plays/y.md"]


def test_unsafe_member_names_rejected():
    for bad in ("/etc/passwd", "../x", "a/../../b"):
        with pytest.raises(ValueError, match="unsafe"):
            data._safe_rel(bad)


# ------------------------------------------------------------------------------------------ prepare
def _fake_wheel(tmp_path: Path, content: bytes = b"payload") -> Path:
    whl = tmp_path / "src" / "fake-1.0-py3-none-any.whl"
    whl.parent.mkdir(exist_ok=True)
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("fake/data/blob.bin", content)
        zf.writestr("fake/__init__.py", "")
    return whl


def _artefact(sha: str, payload: str | None = None) -> data.Artefact:
    return data.Artefact("fake", "a fake dataset", "pip", "fake==1.0", sha,
                         data.extract_zip_members({"fake/data/blob.bin": "blob.bin"}), ("blob.bin",), payload)


@pytest.fixture
def fetcher(monkeypatch, tmp_path):
    """Replace the package client: copy a prepared archive into the download folder and count calls."""
    state = {"calls": 0, "archive": _fake_wheel(tmp_path)}

    def fake_download(art, dest):
        state["calls"] += 1
        target = dest / state["archive"].name
        target.write_bytes(state["archive"].read_bytes())
        return target

    monkeypatch.setattr(data, "_download", fake_download)
    return state


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_prepare_extracts_writes_marker_and_is_idempotent(fetcher, tmp_path):
    root = tmp_path / "cache"
    art = _artefact(data.sha256_file(fetcher["archive"]))
    lines = []
    (out,) = data.prepare(["fake"], root=root, manifest={"fake": art}, log=lines.append)
    assert out.status == "ok" and (root / "fake" / "blob.bin").read_bytes() == b"payload"
    marker = json.loads((root / "fake" / data.MARKER).read_text())
    assert marker["sha256"] == art.sha256 and marker["payload_sha256"] == data.payload_digest(root / "fake")
    assert _leftovers(root) == ["fake"] and any("fake" in line and "ok" in line for line in lines)
    (again,) = data.prepare(root=root, manifest={"fake": art}, log=None)
    assert again.status == "present" and fetcher["calls"] == 1
    fetcher["archive"] = _fake_wheel(tmp_path, b"new")
    art2 = _artefact(data.sha256_file(fetcher["archive"]))
    (forced,) = data.prepare(root=root, manifest={"fake": art2}, force=True, log=None)
    assert forced.status == "ok" and fetcher["calls"] == 2
    assert (root / "fake" / "blob.bin").read_bytes() == b"new" and _leftovers(root) == ["fake"]


def test_sha256_mismatch_fails_and_leaves_nothing(fetcher, tmp_path):
    root = tmp_path / "cache"
    art = _artefact("0" * 64)
    lines = []
    (out,) = data.prepare(root=root, manifest={"fake": art}, log=lines.append)
    assert out.status == "failed" and "sha256" in out.detail and "0" * 64 in out.detail
    assert "nothing was added to the cache" in out.detail and "could not prepare: fake" in lines[-1]
    assert _leftovers(root) == []
    with pytest.raises(data.ChecksumError):
        data.prepare_one(art, root)
    assert _leftovers(root) == []


def test_mismatch_keeps_existing_cache_untouched(fetcher, tmp_path):
    root = tmp_path / "cache"
    good = _artefact(data.sha256_file(fetcher["archive"]))
    data.prepare(root=root, manifest={"fake": good}, log=None)
    before = (root / "fake" / data.MARKER).read_text()
    (out,) = data.prepare(root=root, manifest={"fake": replace(good, sha256="1" * 64)}, force=True, log=None)
    assert out.status == "failed" and (root / "fake" / data.MARKER).read_text() == before
    assert _leftovers(root) == ["fake"]


def test_foreign_archive_accepted_when_files_match(fetcher, tmp_path):
    ref = tmp_path / "ref"
    data.extract_zip_members({"fake/data/blob.bin": "blob.bin"})(fetcher["archive"], ref)
    art = _artefact("2" * 64, payload=data.payload_digest(ref))
    (out,) = data.prepare(root=tmp_path / "cache", manifest={"fake": art}, log=None)
    assert out.status == "ok" and "files match" in out.detail
    bad = _artefact("2" * 64, payload="3" * 64)
    (out,) = data.prepare(root=tmp_path / "cache2", manifest={"fake": bad}, log=None)
    assert out.status == "failed" and _leftovers(tmp_path / "cache2") == []


def test_missing_apt_get_is_reported(monkeypatch, tmp_path):
    monkeypatch.setattr(data.shutil, "which", lambda name: None)
    art = replace(data.MANIFEST["fashion-mnist"])
    (out,) = data.prepare(["fashion-mnist"], root=tmp_path, manifest={"fashion-mnist": art}, log=None)
    assert out.status == "failed" and "apt-get not found" in out.detail and "dataset-fashion-mnist" in out.detail
    assert str(tmp_path / "fashion-mnist") in out.detail
    assert _leftovers(tmp_path) == []


def test_failing_pip_is_reported(monkeypatch, tmp_path):
    def broken(cmd, **kwargs):
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for fake==1.0\n")

    monkeypatch.setattr(data.subprocess, "run", broken)
    (out,) = data.prepare(root=tmp_path, manifest={"fake": _artefact("0" * 64)}, log=None)
    assert out.status == "failed" and "No matching distribution" in out.detail

    def absent(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(data.subprocess, "run", absent)
    (out,) = data.prepare(root=tmp_path, manifest={"fake": _artefact("0" * 64)}, log=None)
    assert out.status == "failed" and "ToolMissing" in out.detail


def test_missing_generator_package_is_reported(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "mnist1d.data", None)
    (out,) = data.prepare(["mnist1d"], root=tmp_path, log=None)
    assert out.status == "failed" and "pip install mnist1d" in out.detail


def test_unknown_name_lists_choices(tmp_path):
    with pytest.raises(ValueError, match=r"--only: unknown dataset 'bogus'; choose from mnist, fashion-mnist"):
        data.prepare(["mnist", "bogus"], root=tmp_path)


def test_manifest_matches_protocol_checksums():
    doc = Path(__file__).resolve().parents[3] / "shared" / "docs" / "benchmark-protocol.md"  # outside the repo
    shas = {a.sha256 for a in data.MANIFEST.values() if a.sha256}
    assert len(shas) == 4 and all(len(s) == 64 for s in shas)
    if doc.exists():
        text = doc.read_text()
        assert all(s in text for s in shas)


def test_cli_entry_points(tmp_path, capsys):
    assert data.prepare_main(["data", "prepare", "--only", "bogus", "--dir", str(tmp_path)]) == 2
    assert "bogus" in capsys.readouterr().err
    assert data.prepare_main(["data", "status", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "missing" in out and str(tmp_path) in out


def test_sha256_file(tmp_path):
    (tmp_path / "f").write_bytes(b"abc")
    assert data.sha256_file(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()
