"""The choice rule shared by every gap optimizer: running score, arg-max, hysteresis, bookkeeping.

One *selector* decides for one unit (a parameter tensor in ``mode="per_param"``, the whole model in
``mode="global"``). Each step it receives the K candidates' scores J_j and:

1. smooths them: J̄ ← a·J̄ + (1−a)·J when ``score_ema = a > 0``, else J̄ = J;
2. takes the leader j* = arg max J̄ (the current candidate wins ties, so equal scores never switch);
3. debounces: the current candidate is replaced only after the *same* challenger has led for
   ``hysteresis`` consecutive steps (0 and 1 both mean "switch at once"); a step where the current
   candidate leads, or another challenger does, restarts the count;
4. counts which candidate was used, for ``gap_stats()``.

Scores are kept in float64. A per-tensor selector's state is a dict of tensors (``new_state``/``decide``), so
that it lives in ``optimizer.state`` and round-trips through ``state_dict``; the one global selector is a
``Selector`` of Python numbers (no tensor op per step), converted to the same dict at ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

KEYS = ("gap_index", "gap_score", "gap_streak", "gap_challenger", "gap_counts")


def new_state(num_candidates: int, initial: int) -> dict[str, Tensor]:
    return {
        "gap_index": torch.tensor(initial, dtype=torch.int64),
        "gap_score": torch.zeros(num_candidates, dtype=torch.float64),
        "gap_streak": torch.tensor(0, dtype=torch.int64),
        "gap_challenger": torch.tensor(-1, dtype=torch.int64),
        "gap_counts": torch.zeros(num_candidates, dtype=torch.int64),
    }


def choose(values: Sequence[float], current: int, streak: int, challenger: int,
           hysteresis: int) -> tuple[int, int, int]:
    """Steps 2–3 on smoothed scores: the new (index, streak, challenger)."""
    best = max(values)
    if best == best:  # no NaN leads: the current choice if it ties for the maximum, else the first maximum
        leader = current if values[current] == best else values.index(best)
    else:
        leader = max(range(len(values)), key=lambda j: (values[j], j == current))
    if leader == current:
        return current, 0, -1
    streak = streak + 1 if challenger == leader else 1
    if streak >= max(hysteresis, 1):
        return leader, 0, -1
    return current, streak, leader


def decide(state: dict[str, Tensor], scores: Sequence[float], score_ema: float, hysteresis: int) -> int:
    """Update ``state`` with this step's ``scores``; return the index of the candidate to use now."""
    avg = state["gap_score"]
    new = torch.as_tensor(scores, dtype=torch.float64)
    if new.shape != avg.shape:
        raise ValueError(f"scores: expected {avg.numel()} values (one per candidate), got {new.numel()}")
    if score_ema > 0:
        avg.mul_(score_ema).add_(new, alpha=1.0 - score_ema)
    else:
        avg.copy_(new)
    index, streak, challenger = choose(avg.tolist(), int(state["gap_index"]), int(state["gap_streak"]),
                                       int(state["gap_challenger"]), hysteresis)
    state["gap_index"].fill_(index)
    state["gap_streak"].fill_(streak)
    state["gap_challenger"].fill_(challenger)
    state["gap_counts"][index] += 1
    return index


class Selector:
    """One selector in Python numbers (the global choice): the rule of ``decide`` without tensor ops. The score
    EMA is a·J̄ + (1−a)·J in float64, rounded per operation."""

    __slots__ = ("index", "streak", "challenger", "score", "counts")

    def __init__(self, num_candidates: int, initial: int) -> None:
        self.index, self.streak, self.challenger = initial, 0, -1
        self.score = [0.0] * num_candidates
        self.counts = [0] * num_candidates

    def update(self, scores: Sequence[float], score_ema: float, hysteresis: int) -> int:
        if len(scores) != len(self.score):
            raise ValueError(f"scores: expected {len(self.score)} values (one per candidate), got {len(scores)}")
        if score_ema > 0:
            self.score = [a * score_ema + (1.0 - score_ema) * s for a, s in zip(self.score, scores)]
        else:
            self.score = [float(s) for s in scores]
        self.index, self.streak, self.challenger = choose(self.score, self.index, self.streak, self.challenger,
                                                          hysteresis)
        self.counts[self.index] += 1
        return self.index

    def to_state(self) -> dict[str, Tensor]:
        """The ``new_state`` dict of tensors (the checkpoint format)."""
        return {"gap_index": torch.tensor(self.index, dtype=torch.int64),
                "gap_score": torch.tensor(self.score, dtype=torch.float64),
                "gap_streak": torch.tensor(self.streak, dtype=torch.int64),
                "gap_challenger": torch.tensor(self.challenger, dtype=torch.int64),
                "gap_counts": torch.tensor(self.counts, dtype=torch.int64)}

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> Selector:
        missing = [k for k in KEYS if k not in state]
        if missing:
            raise ValueError(f"state_dict: the global selector's state lacks {missing}")
        out = cls(int(state["gap_score"].numel()), int(state["gap_index"]))
        out.streak, out.challenger = int(state["gap_streak"]), int(state["gap_challenger"])
        out.score = [float(x) for x in state["gap_score"].double().tolist()]
        out.counts = [int(x) for x in state["gap_counts"].tolist()]
        return out
