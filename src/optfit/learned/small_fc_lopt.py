"""small_fc_lopt: the Adafactor-MLP learned optimizer (Metz et al., arXiv 2203.11860; the μLO architecture,
Thérien et al., arXiv 2406.00153), with parameters meta-trained by optfit itself (``optfit learned meta-train``).

Per parameter tensor (``g`` its gradient, ``t`` the number of steps taken before this one), with EMAs
``ema_β(x) ← β·ema + (1 − β)·x`` (no bias correction) and ``ε = 1e-12``:

    m_i = ema_{βm_i}(g)  (i = 1..3),   r = ema_{βr}(g²)
    ≥2-D (factored over the last two dims, n×k): R_j = ema_{βf_j}(mean_k g²), C_j = ema_{βf_j}(mean_n g²),
        v̂_j^{−½} = rsqrt(R_j / mean_n(R_j) + ε) ⊗ rsqrt(C_j + ε)
    0/1-D: R_j = C_j = V_j = ema_{βf_j}(g²),  v̂_j^{−½} = rsqrt(V_j + ε)

28 features, in this order: g, θ, m(3), r, m·rsqrt(r + ε)(3), rsqrt(r + ε), g·v̂^{−½}(3), R(3), C(3) (broadcast to
the tensor's shape), rsqrt(R + ε)(3), rsqrt(C + ε)(3), m·v̂^{−½}(3); each channel divided by
√(mean over the tensor of x² + 1e-5); then 11 time features tanh(t/τ − 1), τ ∈ {1, 3, 10, …, 1e5}.
A per-element MLP 39 → H → H → 2 (ReLU) gives (d, a), and

    s = lr · step_mult · d · exp(exp_mult · a)   (step_mult 0.01, exp_mult 0.001),   θ ← θ·decay − s

with ``decay`` from ``decay_mode`` (default decoupled: 1 − lr·λ, applied before the step as in torch).
The tensors of a step are grouped into MLP evaluations of ≤ 8192 elements (``impl="foreach"``; larger tensors in
row blocks, so temporaries stay in cache); the
per-tensor loop (``impl="reference"``) is the ground truth; ``impl="compiled"`` runs the vectorised path under
``torch.compile``.

Weights file (safetensors, float32): ``mlp.{i}.weight`` (out, in) and ``mlp.{i}.bias`` for i = 0 … L−1 (first
input 39, last output 2 or 3), ``decay.momentum`` (3), ``decay.rms`` (1), ``decay.adafactor`` (3); metadata
``format = "optfit-small-fc-lopt"``, ``version = "1"``, ``exp_mult``, ``step_mult`` (plus free-form provenance:
command, CPU-hours, config). The packaged file is the result of optfit's own meta-training (see
``weights/README.md``).
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..optim import _features as F
from ..optim import _validation as V
from ..optim._base import ElementwiseOptimizer, _compiled, _scalar_tensors
from ..registry import OptimizerInfo, register

__all__ = ["SmallFCLOpt", "LoptWeights", "load_weights", "save_weights", "default_weights_path",
           "N_FEATURES", "TIME_SCALES"]

FORMAT = "optfit-small-fc-lopt"
FORMAT_VERSION = "1"
TIME_SCALES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1e3, 3e3, 1e4, 3e4, 1e5)
N_GRAD_FEATURES = 28
N_FEATURES = N_GRAD_FEATURES + len(TIME_SCALES)  # 39
EPS = 1e-12
NORM_EPS = 1e-5
CHUNK_ELEMENTS = 1 << 13  # elements per MLP evaluation (small blocks stay in cache; see lopt_steps)
_LOW = (torch.bfloat16, torch.float16)


def default_weights_path() -> Path:
    """The packaged, meta-trained parameters."""
    return Path(__file__).resolve().parent / "weights" / "small_fc_lopt.safetensors"


# ------------------------------------------------------------------------------------------- weight file
@dataclass(frozen=True)
class LoptWeights:
    """The learned optimizer's parameters: ``layers`` = ((W, b), …) with ``W`` of shape (out, in),
    decays of the momenta (3), of r (1) and of the factored accumulators (3), the output constants."""

    layers: tuple[tuple[Tensor, Tensor], ...]
    mom_decays: Tensor
    rms_decay: Tensor
    fac_decays: Tensor
    exp_mult: float = 0.001
    step_mult: float = 0.01
    metadata: dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    @property
    def hidden(self) -> int:
        return int(self.layers[0][0].shape[0])

    def flat(self) -> Tensor:
        """The MLP parameters as one float32 vector (W₀, b₀, W₁, b₁, …) — what meta-training perturbs."""
        return torch.cat([t.reshape(-1).float() for wb in self.layers for t in wb])

    def shapes(self) -> list[tuple[int, ...]]:
        return [tuple(t.shape) for wb in self.layers for t in wb]

    def with_flat(self, flat: Tensor) -> "LoptWeights":
        """A copy whose MLP parameters are taken from ``flat`` (the layout of ``flat()``)."""
        return LoptWeights(tuple(zip(*[iter(unflatten(flat, self.shapes()))] * 2)), self.mom_decays,
                           self.rms_decay, self.fac_decays, self.exp_mult, self.step_mult, dict(self.metadata))


def unflatten(flat: Tensor, shapes: list[tuple[int, ...]]) -> list[Tensor]:
    """Views of ``flat`` (…, D) as tensors of ``shapes`` (leading dims kept: batched particles)."""
    out, i = [], 0
    for s in shapes:
        n = math.prod(s)
        out.append(flat[..., i:i + n].reshape(*flat.shape[:-1], *s))
        i += n
    if i != flat.shape[-1]:
        raise ValueError(f"flat parameter vector has {flat.shape[-1]} entries, the MLP needs {i}")
    return out


def _tensor_names(n_layers: int) -> list[str]:
    return [f"mlp.{i}.{k}" for i in range(n_layers) for k in ("weight", "bias")] + \
        ["decay.momentum", "decay.rms", "decay.adafactor"]


def save_weights(path: str | os.PathLike, w: LoptWeights, metadata: dict[str, str] | None = None) -> None:
    """Write ``w`` as safetensors (atomically: a temporary file renamed into place)."""
    from safetensors.torch import save_file

    tensors = {f"mlp.{i}.{k}": t.detach().float().contiguous().cpu()
               for i, wb in enumerate(w.layers) for k, t in zip(("weight", "bias"), wb)}
    tensors.update({"decay.momentum": w.mom_decays.float().reshape(3), "decay.rms": w.rms_decay.float().reshape(1),
                    "decay.adafactor": w.fac_decays.float().reshape(3)})
    meta = {**w.metadata, **(metadata or {}), "format": FORMAT, "version": FORMAT_VERSION,
            "exp_mult": repr(float(w.exp_mult)), "step_mult": repr(float(w.step_mult))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
    os.chmod(tmp, 0o644)  # a package data file: readable by everyone
    os.replace(tmp, path)


def load_weights(path: str | os.PathLike | None = None) -> LoptWeights:
    """Read and validate a small_fc_lopt safetensors file (``None`` = the packaged file).

    Raises ``FileNotFoundError`` when the file is absent and ``ValueError`` naming the problem when it is not a
    safetensors file, is not a small_fc_lopt file, or has a missing, extra, mis-shaped or non-finite tensor.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(default_weights_path() if path is None else path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"small_fc_lopt weights file not found: {path} (pass weights=PATH, or produce one "
                                "with `optfit learned meta-train --out DIR`)")
    raw = path.read_bytes()
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a small_fc_lopt weights file (metadata format={meta.get('format')!r}, "
                         f"expected {FORMAT!r})")
    if meta.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported small_fc_lopt format version {meta.get('version')!r}")
    n_layers = sum(1 for k in tensors if k.startswith("mlp.") and k.endswith(".weight"))
    expected = _tensor_names(n_layers)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if n_layers < 1 or missing or extra:
        raise ValueError(f"{path}: wrong tensor set (missing {missing or 'none'}, unexpected {extra or 'none'})")
    layers, fan_in = [], N_FEATURES
    for i in range(n_layers):
        w, b = tensors[f"mlp.{i}.weight"], tensors[f"mlp.{i}.bias"]
        if w.ndim != 2 or w.shape[1] != fan_in or b.shape != (w.shape[0],):
            raise ValueError(f"{path}: mlp.{i}.weight has shape {tuple(w.shape)} and bias {tuple(b.shape)}; "
                             f"expected (out, {fan_in}) and (out,)")
        layers.append((w.float(), b.float()))
        fan_in = w.shape[0]
    if fan_in not in (2, 3):
        raise ValueError(f"{path}: the last layer has {fan_in} outputs; expected 2 (direction, magnitude) or 3")
    for name, n in (("decay.momentum", 3), ("decay.rms", 1), ("decay.adafactor", 3)):
        t = tensors[name]
        if t.shape != (n,) or not bool(((t > 0) & (t < 1)).all()):
            raise ValueError(f"{path}: {name} must hold {n} decays in (0, 1), got {t.tolist()}")
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{path}: tensor {name} has non-finite values")
    try:
        exp_mult, step_mult = float(meta["exp_mult"]), float(meta["step_mult"])
    except (KeyError, ValueError):
        raise ValueError(f"{path}: metadata exp_mult / step_mult missing or not numbers") from None
    return LoptWeights(tuple(layers), tensors["decay.momentum"].float(), tensors["decay.rms"].float(),
                       tensors["decay.adafactor"].float(), exp_mult, step_mult, meta,
                       hashlib.sha256(raw).hexdigest())


# ----------------------------------------------------------------------------- functional core (batched)
# Every tensor carries a leading particle dimension N (N = 1 inside the optimizer class).
def init_state(p: Tensor) -> dict[str, Tensor]:
    """Zero accumulators for ``p`` of shape (N, *s)."""
    n, s = p.shape[0], p.shape[1:]
    st = {"mom": p.new_zeros((n, 3, *s)), "rms": torch.zeros_like(p)}
    if len(s) >= 2:
        st["fac_row"], st["fac_col"] = p.new_zeros((n, 3, *s[:-1])), p.new_zeros((n, 3, *s[:-2], s[-1]))
    else:
        st["fac_v"] = p.new_zeros((n, 3, *s))
    return st


def _bshape(v: Tensor, ndim: int) -> Tensor:
    """Decays (3,) as (1, 3, 1, …) for state of ``ndim`` dims."""
    return v.reshape(1, -1, *([1] * (ndim - 2)))


def accumulate(g: Tensor, st: dict[str, Tensor], mom_decays: Tensor, rms_decay: Tensor, fac_decays: Tensor) -> None:
    """Update the EMAs in ``st`` in place from the gradient ``g`` (N, *s)."""
    dt = st["mom"].dtype
    g = g.to(dt)
    g2 = g * g
    st["mom"].lerp_(g.unsqueeze(1), _bshape(1 - mom_decays.to(dt), st["mom"].ndim))
    st["rms"].lerp_(g2, (1 - rms_decay.to(dt)).reshape(()))
    w = 1 - fac_decays.to(dt)
    if "fac_row" in st:
        st["fac_row"].lerp_(g2.mean(-1).unsqueeze(1), _bshape(w, st["fac_row"].ndim))
        st["fac_col"].lerp_(g2.mean(-2).unsqueeze(1), _bshape(w, st["fac_col"].ndim))
    else:
        st["fac_v"].lerp_(g2.unsqueeze(1), _bshape(w, st["fac_v"].ndim))


def _normalise(x: Tensor) -> Tensor:
    """x (N, C, E) / √(mean_E x² + 1e-5), per particle and channel."""
    return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + NORM_EPS)


def _rows(s: tuple[int, ...]) -> tuple[int, int]:
    """A tensor of shape ``s`` seen as L rows of k elements (factored: the last dim; 0/1-D: k = 1)."""
    return (math.prod(s[:-1]), s[-1]) if len(s) >= 2 else (math.prod(s), 1)


def raw_features(p: Tensor, g: Tensor, st: dict[str, Tensor], dtype: torch.dtype, r0: int = 0,
                 r1: int | None = None) -> Tensor:
    """The 28 un-normalised features of rows [r0, r1) of ``p`` (N, *s) as (N, 28, (r1 − r0)·k)."""
    n, s = p.shape[0], p.shape[1:]
    L, k = _rows(s)
    r1 = L if r1 is None else r1
    sl = slice(r0, r1)
    g, p = g.reshape(n, 1, L, k)[:, :, sl].to(dtype), p.reshape(n, 1, L, k)[:, :, sl].to(dtype)
    m = st["mom"].reshape(n, 3, L, k)[:, :, sl].to(dtype)
    r = st["rms"].reshape(n, 1, L, k)[:, :, sl].to(dtype)
    rs = torch.rsqrt(r + EPS)
    if "fac_row" in st:
        row, col = st["fac_row"].to(dtype), st["fac_col"].to(dtype)  # (N,3,*s[:-1]), (N,3,*s[:-2],k)
        row_norm = (row / row.mean(-1, keepdim=True).clamp_min(1e-30)).reshape(n, 3, L)[:, :, sl]
        row = row.reshape(n, 3, L)[:, :, sl]
        col = col.reshape(n, 3, -1, k)  # one column factor per leading index b = row // s[-2]
        col = col if col.shape[2] == 1 else col[:, :, torch.arange(r0, r1, device=col.device) // s[-2]]
        vhat = torch.rsqrt(row_norm + EPS).unsqueeze(-1) * torch.rsqrt(col + EPS)
        row_f, col_f = row.unsqueeze(-1).expand(n, 3, r1 - r0, k), col.expand(n, 3, r1 - r0, k)
    else:
        v = st["fac_v"].reshape(n, 3, L, k)[:, :, sl].to(dtype)
        vhat, row_f, col_f = torch.rsqrt(v + EPS), v, v
    x = torch.cat([g, p, m, r, m * rs, rs, g * vhat, row_f, col_f, torch.rsqrt(row_f + EPS),
                   torch.rsqrt(col_f + EPS), m * vhat], dim=1)
    return x.reshape(n, N_GRAD_FEATURES, (r1 - r0) * k)


def features(p: Tensor, g: Tensor, st: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
    """The 28 normalised features of ``p`` (N, *s) as (N, 28, E) (channels first), computed in ``dtype``."""
    return _normalise(raw_features(p, g, st, dtype))


def _large_tensor_step(p: Tensor, g: Tensor, st: dict[str, Tensor], w: Any, tf: Tensor, dtype: torch.dtype,
                       chunk: int) -> Tensor:
    """The step of one large tensor in two passes over row blocks of ≈ ``chunk`` elements (the normalisers
    first, then features → MLP), so no temporary is larger than a block: big temporaries cost page faults."""
    n, s = p.shape[0], p.shape[1:]
    L, k = _rows(s)
    block = max(1, chunk // k)
    sumsq = torch.zeros(n, N_GRAD_FEATURES, 1, dtype=dtype, device=p.device)
    for r0 in range(0, L, block):
        sumsq += raw_features(p, g, st, dtype, r0, min(r0 + block, L)).square().sum(-1, keepdim=True)
    scale = torch.rsqrt(sumsq / (L * k) + NORM_EPS)
    out = torch.empty(n, L, k, dtype=dtype, device=p.device)
    for r0 in range(0, L, block):
        r1 = min(r0 + block, L)
        x = raw_features(p, g, st, dtype, r0, r1) * scale
        out[:, r0:r1] = head(mlp(x, w.layers, tf), w.exp_mult, w.step_mult).reshape(n, r1 - r0, k)
    return out.reshape(p.shape)


def time_features(t: Any, dtype: torch.dtype, device: torch.device) -> Tensor:
    """tanh(t/τ − 1) for the 11 time scales τ (``t`` = steps already taken)."""
    tau = torch.tensor(TIME_SCALES, dtype=dtype, device=device)
    return torch.tanh(torch.as_tensor(t, dtype=dtype, device=device) / tau - 1)


def mlp(x: Tensor, layers: Any, tf: Tensor | None = None) -> Tensor:
    """Per-element MLP in channels-first layout: ``x`` (N, C, E) → (N, out, E); weights (out, in) shared by all
    particles or (N, out, in) per particle. With ``tf`` (the time features, the same for every element) the
    first layer's input is [x; tf] and ``tf``'s contribution is folded into its bias."""
    n = x.shape[0]
    for i, (w, b) in enumerate(layers):
        w, b = w.to(x.dtype), b.to(x.dtype)
        if i == 0 and tf is not None:
            c = x.shape[1]
            b = b + (w[..., c:] @ tf.to(x.dtype))
            w = w[..., :c]
        if w.ndim == 2:
            w, b = w.expand(n, *w.shape), b.expand(n, -1)
        x = torch.baddbmm(b.unsqueeze(-1), w, x)
        if i < len(layers) - 1:
            x = x.relu_()
    return x


def head(out: Tensor, exp_mult: float, step_mult: float) -> Tensor:
    """Step (without lr) from the MLP output (N, ≥2, E): d·exp(exp_mult·a)·step_mult, shape (N, E)."""
    return out[:, 0] * torch.exp(out[:, 1] * exp_mult) * step_mult


def compute_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.float32 if dt in _LOW else dt


def lopt_steps(ps: list[Tensor], gs: list[Tensor], sts: list[dict[str, Tensor]], w: Any, t: Any,
               chunk: int = CHUNK_ELEMENTS) -> list[Tensor]:
    """Update the accumulators of every tensor and return their steps ``s`` (without lr; Δθ = −lr·s) for tensors
    (N, *s_i). Tensors of ≤ ``chunk`` elements are grouped (≤ ``chunk`` elements per group) and each group goes
    through one MLP evaluation; a larger tensor is processed in row blocks (``_large_tensor_step``). ``w`` is a
    ``LoptWeights`` or any object with its attributes (layers may be batched per particle)."""
    for g, st in zip(gs, sts):
        accumulate(g, st, w.mom_decays, w.rms_decay, w.fac_decays)
    out: list[Tensor | None] = [None] * len(ps)
    small = [i for i, p in enumerate(ps) if p[0].numel() <= chunk]
    for i in (i for i in range(len(ps)) if ps[i][0].numel() > chunk):
        dtype = compute_dtype(ps[i].dtype)
        tf = time_features(t, dtype, ps[i].device)
        out[i] = _large_tensor_step(ps[i], gs[i], sts[i], w, tf, dtype, chunk).to(ps[i].dtype)
    start = 0
    while start < len(small):
        stop, total = start, 0
        while stop < len(small) and total + ps[small[stop]][0].numel() <= chunk:
            total += ps[small[stop]][0].numel()
            stop += 1
        group = small[start:stop]
        dtype = compute_dtype(ps[group[0]].dtype)
        feats = [features(ps[i], gs[i], sts[i], dtype) for i in group]
        x = torch.cat(feats, dim=2) if len(feats) > 1 else feats[0]
        step = head(mlp(x, w.layers, time_features(t, dtype, x.device)), w.exp_mult, w.step_mult)
        for i, s in zip(group, step.split([ps[i][0].numel() for i in group], dim=1)):
            out[i] = s.reshape(ps[i].shape).to(ps[i].dtype)
        start = stop
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ the optimizer
def _vectorised(ps, gs, sts, w, t, lr, decay, cautious, chunk=CHUNK_ELEMENTS) -> None:
    """One step for a bucket of tensors (the body of ``impl="foreach"`` and ``impl="compiled"``)."""
    bp, bg = [p.unsqueeze(0) for p in ps], [g.unsqueeze(0) for g in gs]
    bst = [{k: v.unsqueeze(0) for k, v in st.items() if k != "step"} for st in sts]
    steps = lopt_steps(bp, bg, bst, w, t, chunk)
    for p, g, s in zip(ps, gs, steps):
        s = s[0] * lr
        if cautious:
            s = F.cautious(s, g)
        p.mul_(decay)
        p.sub_(s)


class SmallFCLOpt(ElementwiseOptimizer):
    """small_fc_lopt (Adafactor-MLP learned optimizer) on safetensors parameters (see the module docstring).

    ``lr`` multiplies the learned step (1.0 = as meta-trained); ``weights`` is a path to a safetensors file made by
    ``save_weights`` / ``optfit learned meta-train`` (``None`` = the packaged, meta-trained file), per param group
    if wanted. ``weight_decay`` follows ``decay_mode`` (default decoupled). The optimizer needs no loss and no
    training horizon. Complex parameters are rejected. State per parameter: 3 momenta + r (4×P) and the factored
    accumulators (3·(n + k) per matrix; 3×P for vectors).
    """

    default_decay_mode = "decoupled"
    supports_complex = False
    IMPLS: ClassVar[tuple[str, ...]] = ("auto", "reference", "foreach", "compiled")

    def __init__(self, params: Any, lr: float = 1.0, weight_decay: float = 0.0, weights: str | os.PathLike | None = None,
                 **options: Any) -> None:
        self._weights_cache: dict[str | None, LoptWeights] = {}
        if isinstance(weights, os.PathLike):
            weights = os.fspath(weights)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, weights=weights), **options)
        for group in self.param_groups:
            self._weights_for(group)

    @classmethod
    def _validate(cls, group: dict[str, Any]) -> None:
        V.nonneg("lr", group["lr"])
        V.nonneg("weight_decay", group["weight_decay"])
        if group["weights"] is not None and not isinstance(group["weights"], (str, os.PathLike)):
            raise ValueError(f"Invalid weights: {group['weights']!r} (a path to a safetensors file, or None for the "
                             "packaged weights)")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if isinstance(param_group.get("weights"), os.PathLike):
            param_group = {**param_group, "weights": os.fspath(param_group["weights"])}
        super().add_param_group(param_group)
        if hasattr(self, "_weights_cache"):
            self._weights_for(self.param_groups[-1])

    def _weights_for(self, group: dict[str, Any]) -> LoptWeights:
        key = group["weights"]
        if key not in self._weights_cache:
            self._weights_cache[key] = load_weights(key)
        return self._weights_cache[key]

    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        for k, v in init_state(p.unsqueeze(0)).items():
            state[k] = v[0]

    def _coefficients(self, group: dict[str, Any], step: int) -> dict[str, float]:
        return {"lr": group["lr"], "t": float(step - 1)}

    @classmethod
    def _offered_impls(cls) -> tuple[str, ...]:
        return cls.IMPLS  # "foreach" is _run_kernel's batched path, not an _update_foreach

    def _impl(self, group: dict[str, Any], ps: list[Tensor]) -> str:
        return "foreach" if group["impl"] == "auto" else group["impl"]

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        w, impl = self._weights_for(group), self._impl(group, ps)
        if impl == "reference":
            for p, g, st in zip(ps, gs, sts):
                _vectorised([p], [g], [st], w, c["t"], c["lr"], c["decay"], group["cautious"])
        elif impl == "foreach":
            _vectorised(ps, gs, sts, w, c["t"], c["lr"], c["decay"], group["cautious"])
        else:
            fn = _compiled(type(self), _vectorised)
            sc = _scalar_tensors({"t": c["t"], "lr": c["lr"], "decay": c["decay"]})
            fn(ps, gs, sts, w, sc["t"], sc["lr"], sc["decay"], group["cautious"], 1 << 62)  # inductor fuses

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["optfit"]["lopt_weights_sha256"] = {str(k): w.sha256 for k, w in self._weights_cache.items()}
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("optfit", {}).get("lopt_weights_sha256", {}) if isinstance(state_dict, dict) else {}
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            w = self._weights_for(group)
            old = saved.get(str(group["weights"]))
            if old is not None and old != w.sha256:
                warnings.warn(f"small_fc_lopt: the state_dict was made with weights sha256 {old[:12]}…, this "
                              f"optimizer uses {w.sha256[:12]}… ({group['weights'] or 'packaged file'}); the run will "
                              "not continue bit-exactly", stacklevel=2)

    def __getstate__(self) -> dict[str, Any]:
        """As the base, less the weights: a copy reloads them from their files (the same bits, and the same
        memory alignment, so a copy steps exactly as the original; copied tensors may be aligned otherwise)."""
        state = super().__getstate__()
        state.pop("_weights_cache", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_weights_cache", {})
        for group in self.param_groups:
            self._weights_for(group)


register(OptimizerInfo(
    name="small-fc-lopt", cls=SmallFCLOpt, family="learned", paper="arXiv:2203.11860", state_tensors=4,
    aliases=("small_fc_lopt",), supports_complex=False,
    description="Adafactor-MLP learned optimizer (39→32→32→2 per element), meta-trained by optfit on CPU; "
                "factored state 3(m+n) per matrix.",
    test_hparams={"lr": 1.0}))
