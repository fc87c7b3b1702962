"""The meta-learned parts of Celo / Celo-Adam: the released weights and the learned LSTM scheduler.

Weights: the flax msgpack ``theta.state`` files of amoudgl/celo @66d9761 (MIT), read by ``flax_state`` and
checked against the parameter tree of the released configuration (LSTM hidden 64; Celo also has the
per-element MLP 30 → 4 → 4 → 3 with one first-layer block per feature group).

Scheduler (both optimizers; Moudgil et al., arXiv 2501.12670), all in float32, for step t (0-based) of N:

    x = [tanh(10(t/N − s)) for s in (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)] ++ loss_features (9)
    x′ = x W₂ + b₂ + relu(x W₁ + b₁)          (the max over tensors of identical rows is the row itself)
    i, g, f, o = [x′, h] W_r + b_r ;  c ← σ(f + 1)c + σ(i)tanh(g) ;  h ← σ(o)tanh(c)
    lr_mult = 0.1 · exp(h w_s + b_s)

Loss buffer: 10 EMAs with decays β_k = exp(−1/h_k), h = logspace(1, log10 N, 10), bias-corrected, clipped at
2·|max corrected mean|, with running minima; features k = 0..8:
clip((c_k − min_k)/max(1e-8, c_{k+1} − min_k) − 1, −1, 1), all 0 while at most 2 losses were seen. The
scheduler input has no per-tensor feature, so every tensor gets the same lr_mult and one LSTM state stands for
the per-tensor copies of the original.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .flax_state import FlaxStateError, check_tree, decode_flax_state

HIDDEN = 64
N_IN = 18
FILE_NAMES = {"celo": "celo_theta.state", "celo-adam": "celo_adam_theta.state"}
ENV_FILE = {"celo": "OPTFIT_CELO_WEIGHTS", "celo-adam": "OPTFIT_CELO_ADAM_WEIGHTS"}
ENV_DIR = "OPTFIT_CELO_DIR"
# feature-group sizes of the per-element MLP's first layer (groups 0..13 ↔ w0__0..w0__13)
GROUP_SIZES = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)

_RNN_SPEC = {
    ("lstm_init_state", "hidden"): (1, HIDDEN), ("lstm_init_state", "cell"): (1, HIDDEN),
    **{("rnn_params", name, "w"): (N_IN, HIDDEN) for name in ("linear", "linear_1", "linear_2")},
    **{("rnn_params", name, "b"): (HIDDEN,) for name in ("linear", "linear_1", "linear_2")},
    ("rnn_params", "rnn/linear", "w"): (2 * HIDDEN, 4 * HIDDEN), ("rnn_params", "rnn/linear", "b"): (4 * HIDDEN,),
    ("rnn_params", "step_size", "w"): (HIDDEN, 1), ("rnn_params", "step_size", "b"): (1,),
}
_MLP_SPEC = {
    **{("ff_mod_stack", "~", f"w0__{i}"): (1, n, 4) for i, n in enumerate(GROUP_SIZES)},
    ("ff_mod_stack", "~", "b0"): (1, 4), ("ff_mod_stack", "~", "w1"): (1, 4, 4), ("ff_mod_stack", "~", "b1"): (1, 4),
    ("ff_mod_stack", "~", "w2"): (1, 4, 3), ("ff_mod_stack", "~", "b2"): (1, 3),
}
SPECS = {
    "celo": {**_RNN_SPEC, ("rnn_params", "rnn_to_controls", "w"): (HIDDEN, 1),
             ("rnn_params", "rnn_to_controls", "b"): (1,), **_MLP_SPEC},
    "celo-adam": dict(_RNN_SPEC),
}


@dataclass(frozen=True)
class CeloWeights:
    """float32 CPU tensors of one released checkpoint (``mlp`` is None for Celo-Adam)."""

    kind: str
    path: str
    sha256: str
    init_h: Tensor
    init_c: Tensor
    w1: Tensor
    b1: Tensor
    w2: Tensor
    b2: Tensor
    w_lstm: Tensor
    b_lstm: Tensor
    w_step: Tensor
    b_step: Tensor
    mlp: tuple[Tensor, ...] | None  # (w0 (30, 4) rows in feature order, b0 (4,), w1 (4, 4), b1, w2 (4, 3), b2 (3,))


def resolve_weights_path(kind: str, weights: str | os.PathLike[str] | None, owner: str) -> Path:
    """``weights`` (a file, or a folder holding the released file name), else ``$OPTFIT_CELO[_ADAM]_WEIGHTS``,
    else ``$OPTFIT_CELO_DIR/<file name>``; a clear error naming all three when none is given or it is missing."""
    name, env_file = FILE_NAMES[kind], ENV_FILE[kind]
    how = (f"pass weights=PATH to {owner} (the released {name} from github.com/amoudgl/celo, MIT), or set "
           f"${env_file} to that file, or ${ENV_DIR} to a folder holding {name}")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a path (str or os.PathLike), got {type(weights).__name__}")
    if weights is not None:
        origin, path = "weights", Path(weights)
    elif os.environ.get(env_file):
        origin, path = f"${env_file}", Path(os.environ[env_file])
    elif os.environ.get(ENV_DIR):
        origin, path = f"${ENV_DIR}", Path(os.environ[ENV_DIR]) / name
    else:
        raise ValueError(f"{owner} needs the meta-learned weights: {how}")
    path = path.expanduser()
    if path.is_dir():
        path = path / name
    if not path.is_file():
        raise FileNotFoundError(f"{owner}: weights file {str(path)!r} (from {origin}) does not exist; {how}")
    return path


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, kind: str, _mtime_ns: int, _size: int) -> CeloWeights:
    data = Path(path).read_bytes()
    tree = decode_flax_state(data, source=path)
    other = "celo-adam" if kind == "celo" else "celo"
    hint = ""
    try:
        check_tree(tree, SPECS[other], source=path)
        hint = f"It is a {other} checkpoint ({FILE_NAMES[other]}): use the registry name {other!r}."
    except FlaxStateError:
        pass
    flat = check_tree(tree, SPECS[kind], source=path, what=f"{kind} weight file ({FILE_NAMES[kind]})", hint=hint)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in flat.items()}
    for k, v in t.items():
        if not bool(torch.isfinite(v).all()):
            raise FlaxStateError(f"{path}: array {' / '.join(k)} holds non-finite values")
    r = lambda *k: t[("rnn_params",) + k]  # noqa: E731
    mlp = None
    if kind == "celo":
        m = lambda k: t[("ff_mod_stack", "~", k)][0]  # noqa: E731  (param_inits = 1: the bank is one MLP)
        w0 = torch.cat([m(f"w0__{i}") for i in range(len(GROUP_SIZES))], 0)  # (30, 4), rows in feature order
        mlp = (w0, m("b0"), m("w1"), m("b1"), m("w2"), m("b2"))
    return CeloWeights(kind=kind, path=path, sha256=hashlib.sha256(data).hexdigest(),
                       init_h=t[("lstm_init_state", "hidden")][0], init_c=t[("lstm_init_state", "cell")][0],
                       w1=r("linear_1", "w"), b1=r("linear_1", "b"), w2=r("linear_2", "w"), b2=r("linear_2", "b"),
                       w_lstm=r("rnn/linear", "w"), b_lstm=r("rnn/linear", "b"),
                       w_step=r("step_size", "w")[:, 0], b_step=r("step_size", "b")[0], mlp=mlp)


def load_weights(kind: str, weights: str | os.PathLike[str] | None = None, owner: str = "Celo") -> CeloWeights:
    """Resolve, read and validate the weights of ``kind`` ("celo" or "celo-adam"); cached per file version."""
    path = resolve_weights_path(kind, weights, owner).resolve()
    st = path.stat()
    return _load_cached(str(path), kind, st.st_mtime_ns, st.st_size)


# ------------------------------------------------------------------------------------------------ scheduler
_TIMESCALES = torch.tensor([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1], dtype=torch.float32)
LOSS_MIN_INIT = 999999999999.0


def loss_decays(total_steps: int) -> Tensor:
    """β_k = exp(−1/h_k), h = logspace(1, log10 N, 10) (computed in float64, rounded once to float32)."""
    half_lives = torch.logspace(1.0, math.log10(total_steps), 10, dtype=torch.float64)
    return torch.exp(-1.0 / half_lives).to(torch.float32)


def init_scheduler_state(w: CeloWeights) -> dict[str, Tensor]:
    return {"lstm_hidden": w.init_h.clone(), "lstm_cell": w.init_c.clone(),
            "loss_means": torch.zeros(10, dtype=torch.float32),
            "loss_running_min": torch.full((10,), LOSS_MIN_INIT, dtype=torch.float32),
            "iteration": torch.zeros((), dtype=torch.int64)}


def add_loss(st: dict[str, Tensor], decays: Tensor, loss: Tensor) -> Tensor:
    """Add ``loss`` (float32 0-d) to the buffer in place; return the 9 loss features."""
    i = int(st["iteration"])
    corr = 1.0 - decays ** float(i + 1)
    cap = loss if i == 0 else torch.max(st["loss_means"] / corr)
    loss = torch.minimum(cap.abs() * 2.0, loss)
    means = st["loss_means"] * decays + loss * (1.0 - decays)
    st["loss_means"] = means
    st["loss_running_min"] = torch.minimum(st["loss_running_min"], means / corr)
    st["iteration"] = st["iteration"] + 1
    c = means / corr  # the features use the count after the update: 1 − β^(i+1)
    low = st["loss_running_min"][:-1]
    feats = ((c[:-1] - low) / torch.clamp(c[1:] - low, min=1e-8) - 1.0).clamp(-1.0, 1.0)
    return feats * 0.0 if i + 1 <= 2 else feats


def scheduler_input(step: int, total_steps: int, loss_features: Tensor) -> Tensor:
    frac = torch.tensor(float(step), dtype=torch.float32) / torch.tensor(float(total_steps), dtype=torch.float32)
    return torch.cat([torch.tanh((frac - _TIMESCALES) * 10.0), loss_features])


def lstm_step(w: CeloWeights, x: Tensor, st: dict[str, Tensor]) -> Tensor:
    """One scheduler step from input ``x`` (18,); updates the LSTM state in ``st``; returns lr_mult (0-d)."""
    mixed = x @ w.w2 + w.b2 + torch.relu(x @ w.w1 + w.b1)
    gates = torch.cat([mixed, st["lstm_hidden"]]) @ w.w_lstm + w.b_lstm
    i, g, f, o = gates.split(HIDDEN)
    cell = torch.sigmoid(f + 1.0) * st["lstm_cell"] + torch.sigmoid(i) * torch.tanh(g)
    hidden = torch.sigmoid(o) * torch.tanh(cell)
    st["lstm_hidden"], st["lstm_cell"] = hidden, cell
    return torch.exp(hidden @ w.w_step + w.b_step) * 0.1


def check_total_steps(total_steps: object) -> int:
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ValueError(f"Invalid total_steps: {total_steps!r} (the planned number of optimizer steps, an int >= 1)")
    return total_steps
