"""The choice rule shared by every gap optimizer: running score, arg-max, hysteresis, bookkeeping.

One *selector* decides for one unit (a parameter tensor in ``mode="per_param"``, the whole model in
``mode="global"``). Each step it receives the K candidates' scores J_j and:

1. smooths them: J̄ ← a·J̄ + (1−a)·J when ``score_ema = a > 0``, else J̄ = J;
2. takes the leader j* = arg max J̄ (the current candidate wins ties, so equal scores never switch);
3. debounces: the current candidate is replaced only after the *same* challenger has led for
   ``hysteresis`` consecutive steps (0 and 1 both mean "switch at once"); a step where the current
   candidate leads, or another challenger does, restarts the count;
4. counts which candidate was used, for ``gap_stats()``.

Scores are kept in float64. The state is a dict of tensors so that it lives in ``optimizer.state`` and
round-trips through ``state_dict`` like any other optimizer state.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def new_state(num_candidates: int, initial: int) -> dict[str, Tensor]:
    return {
        "gap_index": torch.tensor(initial, dtype=torch.int64),
        "gap_score": torch.zeros(num_candidates, dtype=torch.float64),
        "gap_streak": torch.tensor(0, dtype=torch.int64),
        "gap_challenger": torch.tensor(-1, dtype=torch.int64),
        "gap_counts": torch.zeros(num_candidates, dtype=torch.int64),
    }


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
    values = avg.tolist()
    current = int(state["gap_index"])
    leader = max(range(len(values)), key=lambda j: (values[j], j == current))
    if leader == current:
        state["gap_streak"].fill_(0)
        state["gap_challenger"].fill_(-1)
    else:
        if int(state["gap_challenger"]) == leader:
            state["gap_streak"].add_(1)
        else:
            state["gap_challenger"].fill_(leader)
            state["gap_streak"].fill_(1)
        if int(state["gap_streak"]) >= max(hysteresis, 1):
            state["gap_index"].fill_(leader)
            state["gap_streak"].fill_(0)
            state["gap_challenger"].fill_(-1)
            current = leader
    state["gap_counts"][current] += 1
    return current
