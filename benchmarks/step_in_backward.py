"""Peak memory of one training step with and without ``step_in_backward`` (``optfit.optim.in_backward``).

The model is the 8.2 M-parameter transformer stack of ``benchmarks/gap_step.py`` (a pre-LN stack, d = 256,
10 blocks, vocab 1024: 121 tensors, 8 159 744 parameters), made a real ``nn.Module`` here (there it is only
a list of tensors with random gradients): token embedding, per block LN → causal self-attention (4 heads,
``scaled_dot_product_attention``) → LN → 4d GELU MLP, and an output head tied to the embedding. One training step
is forward, ``loss.backward()`` and (normal mode) ``opt.step(); opt.zero_grad()``.

Each (optimizer, batch, mode) runs in a fresh subprocess that takes ``--steps`` steps; reported:

* on CUDA (when available): ``torch.cuda.max_memory_allocated``;
* on CPU: the process's peak resident set size (``VmHWM``, reset through ``/proc/self/clear_refs`` after the
  first step) minus the RSS before the model was built, with ``MALLOC_MMAP_THRESHOLD_=131072`` so glibc maps
  large tensors individually and returns them on free (RSS then follows live tensor memory rather than the
  allocator's high-water mark). It includes the model, the optimizer state, the activations, the gradients
  (normal mode) and the optimizer's temporaries. Indicative: page-level rounding and small heap blocks move it by
  a MiB or two.

for the first step (where the optimizer state is created: in backward, while activations are alive) and for the
later steps. What step_in_backward saves is the gradients (and the optimizer's temporaries) that coexist at the
peak: with small activations the peak is the step after backward (parameters + gradients + state + temporaries),
and it saves ~ one gradient set; with activations much larger than the parameters the peak is the end of the
forward pass, where no gradient exists yet, and it saves nothing.

``impl="auto"`` runs torch's fused AdamW kernel on CPU (no temporaries); ``impl="foreach"`` shows what the
multi-tensor path's temporaries (a few parameter-sized lists at once) cost without step_in_backward, where
they are one tensor's worth.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/step_in_backward.py [--steps 3] [--batches 1x32,4x64,16x128]
        [--impls auto,foreach]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
from torch import nn
from torch.nn import functional as F

D, BLOCKS, VOCAB, HEADS = 256, 10, 1024, 4


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(a)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Stack(nn.Module):
    """The 8.2 M transformer stack: 121 tensors, the same shapes as ``gap_step.stack_params``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList(Block(D) for _ in range(BLOCKS))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.emb(tokens)
        for block in self.blocks:
            x = block(x)
        return x @ self.emb.weight.T


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise KeyError(field)


def peak_rss_mb() -> float:
    """VmHWM (resettable), else ru_maxrss (the whole process's)."""
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(mode: str, impl: str, batch: int, seq: int, steps: int) -> dict:
    import optfit
    from optfit.optim.in_backward import step_in_backward

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    data = [torch.randint(0, VOCAB, (batch, seq + 1), generator=gen).to(device) for _ in range(steps)]
    torch.manual_seed(0)
    base = _status_mb("VmRSS")
    model = Stack().to(device)
    n_params = sum(p.numel() for p in model.parameters())
    opt = optfit.create_optimizer(model, "adamw", lr=1e-3, weight_decay=0.01, impl=impl)
    handle = step_in_backward(model, opt) if mode == "in_backward" else None
    first_peak = steady_peak = None
    for i, tokens in enumerate(data):
        if i == 1:  # the optimizer state exists from here on
            first_peak = peak_rss_mb() - base
            if device == "cuda":
                first_peak = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            elif not reset_peak_rss():
                first_peak = None
        logits = model(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
        del logits
        loss.backward()
        if handle is None:
            opt.step()
            opt.zero_grad()
        assert all(p.grad is None for p in model.parameters())
    steady_peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mb() - base
    state = sum(t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
                if isinstance(t, torch.Tensor))
    return {"device": device, "params": n_params, "tensors": len(list(model.parameters())),
            "first_step_mb": first_peak, "later_steps_mb": steady_peak,
            "param_mb": n_params * 4 / 2**20, "state_mb": state / 2**20}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batches", default="1x32,4x64,16x128", help="batch x sequence length, comma-separated")
    ap.add_argument("--impls", default="auto,foreach")
    ap.add_argument("--child", nargs=5, metavar=("MODE", "IMPL", "BATCH", "SEQ", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        mode, impl, batch, seq, steps = args.child
        print(json.dumps(child(mode, impl, int(batch), int(seq), int(steps))))
        return
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "MALLOC_MMAP_THRESHOLD_": "131072"}
    rows = []
    for impl in args.impls.split(","):
        for spec in args.batches.split(","):
            batch, seq = (int(x) for x in spec.split("x"))
            out = {}
            for mode in ("normal", "in_backward"):
                cmd = [sys.executable, __file__, "--child", mode, impl, str(batch), str(seq), str(args.steps)]
                res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
            rows.append((impl, batch, seq, out))
    first = rows[0][3]["normal"]
    what = "CUDA max_memory_allocated" if first["device"] == "cuda" else "peak RSS above the RSS before the model"
    print(f"AdamW on the transformer stack: {first['params']:,} parameters in {first['tensors']} tensors "
          f"({first['param_mb']:.1f} MiB; its gradients as much), AdamW state {first['state_mb']:.1f} MiB; "
          f"{first['device']}; {args.steps} steps per run; {what}, MiB, for the first step (the state is created) "
          f"and for the later steps\n")
    print("| impl | batch × seq | step | normal | step_in_backward | saved | saved / gradient size |")
    print("|---|---|---|---|---|---|---|")
    for impl, batch, seq, out in rows:
        for label, key in (("first", "first_step_mb"), ("later", "later_steps_mb")):
            a, b = out["normal"][key], out["in_backward"][key]
            if a is None or b is None:
                continue
            print(f"| {impl} | {batch} × {seq} | {label} | {a:.1f} | {b:.1f} | {a - b:.1f} ({(a - b) / a:.0%}) | "
                  f"{(a - b) / first['param_mb']:.2f} |")


if __name__ == "__main__":
    main()
