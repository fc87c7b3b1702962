"""W6: a character-level pre-LN GPT (Radford et al. 2019 layout) on 38 Shakespeare plays."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .. import data
from ..workload import Workload
from ._common import default_root, mix, seeded, with_target


class _Block(nn.Module):
    """x + Attn(LN(x)), then x + MLP(LN(x)); causal multi-head attention, GELU MLP of width 4d."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    """Token + learned position embeddings, ``layers`` pre-LN blocks, final LayerNorm, untied linear head.
    Weights N(0, 0.02), residual output projections N(0, 0.02 / sqrt(2 layers)), biases 0."""

    def __init__(self, vocab: int, ctx: int = 64, d: int = 64, heads: int = 4, layers: int = 2) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(_Block(d, heads) for _ in range(layers))
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() == 2:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "mlp.2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


class ShakespeareCharLM(Workload):
    """Next-character prediction, context 64, on the plays converted to plain text (vocabulary ~80, built
    from all plays). Plays 10, 20 and 30 in sorted order (every tenth; the last one if fewer than ten) are
    held out; the metric is the mean cross-entropy in nats/char over a fixed set of ``eval_windows``
    evenly spaced held-out windows."""

    name = "w6-charlm"
    datasets = ("shakespeare",)
    description = "char-level pre-LN GPT (2 layers, d 64, ctx 64) on Shakespeare"
    step_hint, max_steps, eval_every = 1000, 1350, 50
    ctx, batch_size, eval_windows = 64, 32, 256

    def __init__(self, data_root: str | os.PathLike | None = None) -> None:
        self.data_root = default_root(data_root)
        self.vocab: list[str] = []
        self._streams: tuple[torch.Tensor, torch.Tensor] | None = None

    def prepare(self) -> None:
        if self._streams is not None:
            return
        plays = data.load_shakespeare(self.data_root)
        held = {i for i in range(len(plays)) if i % 10 == 9} or {len(plays) - 1}
        if len(held) == len(plays):
            raise ValueError(f"{self.name}: need at least two plays, found {len(plays)}")
        self.vocab = sorted(set("".join(text for _, text in plays)))
        lookup = {c: i for i, c in enumerate(self.vocab)}

        def encode(texts: list[str]) -> torch.Tensor:
            return torch.tensor([lookup[c] for c in "\n".join(texts)], dtype=torch.long)

        train = encode([t for i, (_, t) in enumerate(plays) if i not in held])
        val = encode([t for i, (_, t) in enumerate(plays) if i in held])
        if min(len(train), len(val)) <= self.ctx + 1:
            raise ValueError(f"{self.name}: plays too short for context {self.ctx}")
        n_win = min(self.eval_windows, len(val) // (self.ctx + 1))
        starts = torch.linspace(0, len(val) - self.ctx - 1, n_win).long()
        self._streams = (train, torch.stack([val[s:s + self.ctx + 1] for s in starts]))

    def build_model(self, seed: int) -> nn.Module:
        self.prepare()
        with seeded(seed):
            return CharGPT(len(self.vocab), ctx=self.ctx)

    def train_batches(self, seed: int) -> Iterator[torch.Tensor]:
        """Random windows of ctx + 1 characters from the training stream (inputs = [:-1], targets = [1:])."""
        self.prepare()
        train = self._streams[0]
        gen = torch.Generator().manual_seed(mix(seed, 2))
        offsets = torch.arange(self.ctx + 1)
        while True:
            starts = torch.randint(len(train) - self.ctx, (self.batch_size,), generator=gen)
            yield train[starts[:, None] + offsets]

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        self.prepare()
        windows = self._streams[1]
        with torch.no_grad():
            total = sum(float(self.loss(model, windows[i:i + 64])) * len(windows[i:i + 64])
                        for i in range(0, len(windows), 64))
        return {"ce": total / len(windows)}


with_target(ShakespeareCharLM)
