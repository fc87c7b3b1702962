"""``AdaptiveBatchSampler``: a DataLoader ``batch_sampler`` whose batches follow a controller's ``batch_size``."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any, Protocol

import torch
from torch.utils.data import Sampler

__all__ = ["AdaptiveBatchSampler"]


class _HasBatchSize(Protocol):
    @property
    def batch_size(self) -> int: ...


class AdaptiveBatchSampler(Sampler[list[int]]):
    """Index lists for ``DataLoader(dataset, batch_sampler=...)``: each epoch is one permutation of
    range(N) (``torch.randperm`` seeded by ``seed + epoch``, or the identity when ``shuffle=False``) cut into
    consecutive batches of ``size_source.batch_size`` read at the moment each batch is drawn, so every index
    appears exactly once per epoch (the last batch is shorter, or dropped with ``drop_last``).

    ``size_source`` is an ``AdaptiveBatchSize`` (or anything with an int ``batch_size``). Resumable:
    ``state_dict()`` holds the epoch and the number of indices handed out in it; a sampler loaded from it
    continues the same permutation where it stopped. Iterating again after a full epoch starts the next one;
    iterating again mid-epoch continues it. With ``num_workers > 0`` the DataLoader draws ``prefetch_factor ×
    num_workers`` batches ahead: a new size reaches the batches drawn after those, and the saved position
    counts the prefetched ones too (save at ``num_workers=0``, or resume accepting that skip).
    """

    def __init__(self, data_source: Sized | int, size_source: _HasBatchSize, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False) -> None:
        n = data_source if isinstance(data_source, int) and not isinstance(data_source, bool) else len(data_source)
        if n < 1:
            raise ValueError(f"Invalid data_source: {n} samples (must be >= 1)")
        if not hasattr(size_source, "batch_size"):
            raise TypeError("size_source needs a batch_size attribute (e.g. an AdaptiveBatchSize)")
        self.num_samples = int(n)
        self.size_source = size_source
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self.position = 0
        self._perm: tuple[int, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------ iteration
    def _batch_size(self) -> int:
        b = int(self.size_source.batch_size)
        if b < 1:
            raise ValueError(f"batch_size must be >= 1, got {b}")
        return b

    def _permutation(self) -> torch.Tensor:
        if self._perm is None or self._perm[0] != self.epoch:
            if self.shuffle:
                gen = torch.Generator().manual_seed(self.seed + self.epoch)
                perm = torch.randperm(self.num_samples, generator=gen)
            else:
                perm = torch.arange(self.num_samples)
            self._perm = (self.epoch, perm)
        return self._perm[1]

    def _epoch_done(self) -> bool:
        left = self.num_samples - self.position
        return left <= 0 or (self.drop_last and left < self._batch_size())

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its beginning."""
        self.epoch, self.position = int(epoch), 0

    def __iter__(self) -> Iterator[list[int]]:
        if self._epoch_done():  # the previous epoch ended (its last batch was taken): begin the next
            self.set_epoch(self.epoch + 1)
        perm = self._permutation()
        while not self._epoch_done():
            start = self.position
            stop = min(self.num_samples, start + self._batch_size())
            self.position = stop
            yield perm[start:stop].tolist()
        self.set_epoch(self.epoch + 1)

    def __len__(self) -> int:
        """Batches left in the current epoch at the current batch size (an upper bound: the size only grows)."""
        left = self.num_samples - self.position if not self._epoch_done() else self.num_samples
        b = self._batch_size()
        return left // b if self.drop_last else -(-left // b)

    # ---------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "shuffle": self.shuffle,
                "num_samples": self.num_samples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["num_samples"]) != self.num_samples:
            raise ValueError(f"state is for {state['num_samples']} samples, this sampler has {self.num_samples}")
        self.seed, self.shuffle = int(state["seed"]), bool(state["shuffle"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = None
