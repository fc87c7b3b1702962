"""Tiny models and data for the trainer tests: a forward that returns {"loss": ...} like Hugging Face models."""

from __future__ import annotations

import torch
from torch import nn


class Regressor(nn.Module):
    """4 → 8 → 1 tanh network (LayerNorm and Linear layers: AdaFisher hooks them), mean squared error."""

    def __init__(self, dropout: float = 0.0, seed: int = 0, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 1))
        self.to(dtype)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.net(x).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


class Pairs(torch.utils.data.Dataset):
    """``n`` fixed examples {"x": (4,), "labels": ()} of a smooth target."""

    def __init__(self, n: int = 16, dtype: torch.dtype = torch.float32) -> None:
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(n, 4, generator=gen, dtype=torch.float64)
        self.y = self.x.sum(1).sin()
        self.x, self.y = self.x.to(dtype), self.y.to(dtype)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "labels": self.y[i]}


def loader(n: int = 16, batch_size: int = 4) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(Pairs(n), batch_size=batch_size, shuffle=False)


def parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]
