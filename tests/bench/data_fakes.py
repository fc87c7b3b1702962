"""Tiny stand-ins for the cached datasets, written in the real formats (gzipped pickle, gzipped IDX,
markdown plays, R's CSV, npz) so the loaders and workloads run in unit tests without downloads."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

PLAY_A = """# The Comedy of Tests

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA_

**ALPHA**  
What say you, friend? The morning wears apace,  
And all our tests must pass before the noon.

**BETA**  
\\[Aside] They shall, my lord; I swear it by the light.  
*Exit*
"""

PLAY_B = """# The Tragedy of Bugs

## ACT I

**GAMMA**  
O wretched code, that fails upon the hour!  
What fiend hath set this null within thy heart?

**DELTA**  
Peace, peace; the stack doth trace it to its root.
"""


def _images(rng: np.random.Generator, labels: np.ndarray, side: int = 28) -> np.ndarray:
    """Learnable images: a bright 4-pixel-high band at a label-dependent row, plus noise; values in [0, 1]."""
    x = 0.1 * rng.random((len(labels), side, side))
    for i, y in enumerate(labels):
        x[i, 2 + 2 * int(y):6 + 2 * int(y), :] += 0.8
    return np.clip(x, 0.0, 1.0)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0 0 8 ndim, big-endian int32 dims)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def make_mnist(root: Path, sizes: tuple[int, int, int] = (256, 64, 64), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    parts = []
    for n in sizes:
        y = rng.integers(0, 10, n).astype(np.int64)
        parts.append((_images(rng, y).reshape(n, 784).astype(np.float32), y))
    path = root / "mnist" / "mnist.pkl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        pickle.dump(tuple(parts), fh, protocol=2)
    return path


def make_fashion_mnist(root: Path, sizes: tuple[int, int] = (256, 64), seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "fashion-mnist"
    for prefix, n in zip(("train", "t10k"), sizes):
        y = rng.integers(0, 10, n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", (255 * _images(rng, y)).astype(np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", y.astype(np.uint8))
    return folder


def make_shakespeare(root: Path) -> Path:
    plays = root / "shakespeare" / "plays"
    for rel, text in (("comedies/the-comedy-of-tests.md", PLAY_A * 3), ("tragedies/the-tragedy-of-bugs.md", PLAY_B * 3)):
        (plays / rel).parent.mkdir(parents=True, exist_ok=True)
        (plays / rel).write_text(text, encoding="utf-8")
    return plays


def make_sunspots(root: Path, n: int = 600) -> Path:
    t = 1749 + np.arange(n) / 12
    values = 80 + 60 * np.sin(2 * np.pi * np.arange(n) / 132) + 5 * np.cos(np.arange(n))
    path = root / "sunspots" / "sunspot.month.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f'"{i + 1}",{float(ti)!r},{round(float(v), 1)!r}' for i, (ti, v) in enumerate(zip(t, values))]
    path.write_text('"","time","sunspot.month"\n' + "\n".join(rows) + "\n")
    return path


def make_mnist1d(root: Path, sizes: tuple[int, int] = (256, 64), seed: int = 2) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, n in zip(("", "_test"), sizes):
        y = rng.integers(0, 10, n)
        x = 0.1 * rng.standard_normal((n, 40))
        x[np.arange(n), 3 * y + 5] += 2.0
        arrays["x" + key], arrays["y" + key] = x.astype(np.float32), y.astype(np.int64)
    path = root / "mnist1d" / "mnist1d.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def make_all(root: Path) -> Path:
    for make in (make_mnist, make_fashion_mnist, make_shakespeare, make_sunspots, make_mnist1d):
        make(root)
    return root
