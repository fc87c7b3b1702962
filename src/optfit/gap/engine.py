"""What every gap optimizer shares: K candidate filters, scores, the choice, introspection.

A gap optimizer keeps one buffer per candidate (stacked as ``state["exp_avgs"]`` / ``"momentum_buffers"``,
shape (K, *param.shape)), updates all of them every step, scores each candidate by its alignment with the
gradient per unit norm of the filter it applies (``filters.py``), chooses with ``selector.decide`` and
steps with the chosen candidate's buffer. Two passes: the first updates buffers and returns per-tensor
scores; once every group has been seen, the second decides (per tensor, or globally from the summed
scores) and moves the parameters.

Settled choices (each is tested in ``tests/gap``):

- **First steps.** Scores use the exact norm of the *truncated* filter (t taps after t steps), so they
  are comparable from step 1, where every candidate's filter is the identity and all scores tie; ties
  keep the current candidate, which starts as ``initial`` (default: the candidate nearest 0.9).
- **Switching** never resets a buffer: all K buffers are updated every step, so the new candidate is
  warm. ``hysteresis`` is a consecutive-step debounce (``selector.py``).
- **Weight decay** does not enter the score when decoupled (gap-adamw); with coupled L2 (gap-sgd,
  gap-adam) the buffers filter g + λθ, so the score does too: it scores the filter the optimizer runs.
- **score="current"** (the published rule) scores ⟨g_t, u_{j,t}⟩ with u_{j,t} already holding g_t;
  **score="next"** scores the previous step's direction against the fresh gradient, ⟨g_t, u_{j,t−1}⟩, an
  independent sample that does not reward fitting the current batch's noise (pitfall 5 of the method note).
- **Global mode** sums the per-tensor scores over every global-mode group (one reduction point,
  ``_global_scores``, where sharded parameters would all-reduce); those groups must share one candidate list,
  and the first global group's ``score_ema``/``hysteresis`` drive the one global choice.

``impl``: "reference" runs the subclass's per-tensor ``_first_pass``/``_apply``; a subclass that names a
``flat_kind`` (gap-adam(w), gap-sgd) also offers "flat" (``flat.py``: the same maths on flat buffers, a few
ops per step whatever the tensor count), which "auto" uses wherever it applies. A further subclass that
overrides the maths (``FLAT_MATHS``) falls back to "reference". Flat buckets of different param groups that
share every number of the first pass (``flat.Request.merge_key``: e.g. a no-decay group beside a decay group)
run as one batch on one layout. In global mode the flat path writes each tensor's copy of the global choice
(``state[p]["gap_index"/"gap_score"/"gap_counts"]``) lazily: ``state_dict``, ``selection``, ``gap_stats`` and
pickling bring it up to date, a direct read of ``optimizer.state`` between steps may be behind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..optim import _features as F
from ..optim import _validation as V
from ..optim._base import ElementwiseOptimizer
from . import flat, selector

MODES = ("global", "per_param")
SCORES = ("current", "next")
FLAT_MATHS = ("_first_pass", "_direction", "_apply", "_init_state", "_coefficients", "_state_keys", "_scores",
              "_denominator")
_FLAT_KINDS: dict[type, str | None] = {}


class GapOptimizer(ElementwiseOptimizer):
    """Base of ``GapSGD`` and ``GapAdam``/``GapAdamW``; subclasses define the buffer maths in
    ``_first_pass`` (update buffers, return K raw scores) and ``_direction`` (the step of candidate j)."""

    two_pass = True
    IMPLS: ClassVar[tuple[str, ...]] = ("auto", "reference")
    flat_kind: ClassVar[str | None] = None  # "adam" | "sgd": the class offers impl="flat" (flat.py)
    candidates_key: ClassVar[str] = "candidates"
    buffer_key: ClassVar[str] = "buffers"

    def __init__(self, params: Any, defaults: dict[str, Any], **options: Any) -> None:
        self._global: selector.Selector | None = None
        self._flat_layouts: dict[tuple, flat.Layout] = {}
        self._prefetched: dict[int, list[Tensor]] = {}  # id(layout) → the gradients copied into it this step
        super().__init__(params, defaults, **options)

    # ------------------------------------------------------------------------------------ validation
    @classmethod
    def _offered_impls(cls) -> tuple[str, ...]:
        return tuple(i for i in cls.IMPLS if i != "flat" or cls._flat_kind() is not None)

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        key = self.candidates_key
        group[key] = self._check_candidates(key, group[key])
        V.choice("mode", group["mode"], MODES)
        V.choice("score", group["score"], SCORES)
        V.in_range("score_ema", group["score_ema"], 0.0, 1.0)
        V.integer("hysteresis", group["hysteresis"], 0)
        if group["initial"] is not None and group["initial"] not in group[key]:
            raise ValueError(f"Invalid initial: {group['initial']!r}; it must be one of {key}={group[key]}")

    @staticmethod
    def _check_candidates(key: str, cands: Any) -> tuple:
        """Momentum-like candidates: distinct numbers in [0, 1)."""
        if isinstance(cands, (int, float, str)) or not isinstance(cands, Sequence) or len(cands) == 0:
            raise ValueError(f"Invalid {key}: {cands!r}; give a non-empty sequence of values in [0, 1)")
        for b in cands:
            if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
                raise ValueError(f"Invalid {key}: {cands!r}; every value must be a number in [0, 1)")
        if len(set(cands)) != len(cands):
            raise ValueError(f"Invalid {key}: {cands!r}; values must be distinct")
        return tuple(float(b) for b in cands)

    def _initial_index(self, group: dict[str, Any]) -> int:
        cands = group[self.candidates_key]
        target = 0.9 if group["initial"] is None else group["initial"]
        return min(range(len(cands)), key=lambda j: abs(cands[j] - target))

    # ------------------------------------------------------------------------------- subclass API
    def _init_state(self, group: dict[str, Any], p: Tensor, state: dict[str, Any]) -> None:
        super()._init_state(group, p, state)
        k = len(group[self.candidates_key])
        if self.buffer_key:
            state[self.buffer_key] = p.new_zeros((k, *p.shape))
        state.update(selector.new_state(k, self._initial_index(group)))

    def _first_pass(self, p: Tensor, g: Tensor, st: dict[str, Any], c: dict[str, Any], group: dict[str, Any],
                    scratch: dict[str, Tensor]) -> list[float]:
        """Update the candidates' buffers; return their K scores. ``scratch`` carries temporaries (e.g. Adam's
        denominator) to the second pass of the same step."""
        raise NotImplementedError

    def _direction(self, p: Tensor, g: Tensor, st: dict[str, Any], c: dict[str, Any], j: int,
                   group: dict[str, Any], scratch: dict[str, Tensor]) -> Tensor:
        """The step s of candidate j (θ ← θ − s)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------- two passes
    @classmethod
    def _flat_kind(cls) -> str | None:
        """``flat_kind`` if this class's maths are those of the class that declared it, else ``None``."""
        if cls not in _FLAT_KINDS:
            owner = next((k for k in cls.__mro__ if "flat_kind" in k.__dict__), None)
            same = owner is not None and all(getattr(cls, name, None) is getattr(owner, name, None)
                                             for name in FLAT_MATHS)
            _FLAT_KINDS[cls] = cls.flat_kind if same else None
        return _FLAT_KINDS[cls]

    def _finite_or_policy(self, work: list) -> bool:
        """The base class's check, but gradients of a cached flat layout are checked on its flat buffer: they are
        copied there now (``first_pass`` then skips its copy) and one sum per layout tells all finite (a NaN or
        ±inf makes it non-finite; so may an overflow). Other gradients, or a non-finite sum, go to the base
        class's per-tensor check, which names the parameter; only flat gradient buffers have been written."""
        self._prefetched = {}
        starts = {layout.key[0]: layout for layout in self._flat_layouts.values()}
        candidates, rest = [], []
        for group, items in work:
            if not items or group["nonfinite"] == "ignore":
                continue
            if starts and group["impl"] in ("auto", "flat") and self._flat_kind() is not None:
                candidates += items
            else:
                rest += items
        sums, i, state = [], 0, self.state
        while i < len(candidates):
            layout = starts.get(id(state.get(candidates[i][1])))
            chunk = candidates[i:i + layout.t] if layout is not None else ()
            sts = [state.get(p) for _, p, _ in chunk]
            if layout is None or tuple(map(id, sts)) != layout.key or not layout.valid_for([p for _, p, _ in chunk],
                                                                                          sts):
                rest.append(candidates[i])
                i += 1
                continue
            gs = [g for *_, g in chunk]
            torch._foreach_copy_(layout.g_views, gs)
            self._prefetched[id(layout)] = gs
            sums.append(layout.g.sum())
            i += layout.t
        if not sums:
            return super()._finite_or_policy(work)
        totals = [sums[0].item()] if len(sums) == 1 else torch.stack(sums).tolist()
        if all(map(math.isfinite, totals)) and F.first_nonfinite(self._real_grads(rest)) is None:
            return True
        return super()._finite_or_policy(work)

    def _run_kernel(self, group, ps, gs, sts, keys, c) -> None:
        kind = self._flat_kind() if group["impl"] in ("auto", "flat") else None
        if kind:  # its first pass waits for the second pass, to run with the compatible buckets of other groups
            request = flat.Request(kind, group, ps, gs, sts, c, group[self.candidates_key])
            self._pending.append((group, ps, gs, sts, c, request, None))
            return
        self._pending.append(self._reference_first_pass(group, ps, gs, sts, c))

    def _reference_first_pass(self, group, ps, gs, sts, c) -> tuple:
        self._sync_flat()  # these states may be a flat layout's views (the impl changed, or the bucket)
        scratches = [{} for _ in ps]
        scores = [self._first_pass(p, g, st, c, group, x) for p, g, st, x in zip(ps, gs, sts, scratches)]
        return group, ps, gs, sts, c, scores, scratches

    def _flat_first_passes(self, pending: list) -> list:
        """Run the flat requests, merged across param groups where ``Request.merge_key`` allows; each keeps its
        place in ``pending`` (as a ``flat.Part``), so the global sum runs in parameter order."""
        batches: dict[tuple, list[int]] = {}
        for i, entry in enumerate(pending):
            if isinstance(entry[5], flat.Request):
                batches.setdefault(entry[5].merge_key(), []).append(i)
        if not batches:
            return pending
        out = list(pending)
        for idx in batches.values():
            parts = flat.run_batch(self._flat_layouts, [pending[i][5] for i in idx], self._prefetched)
            for n, i in enumerate(idx):
                group, ps, gs, sts, c = pending[i][:5]
                out[i] = (group, ps, gs, sts, c, parts[n], None) if parts else \
                    self._reference_first_pass(group, ps, gs, sts, c)
        return out

    def _sync_flat(self) -> None:
        """Bring every flat layout's lazily written per-tensor state up to date (``flat.record_global``)."""
        for layout in self._flat_layouts.values():
            layout.flush()

    def _global_scores(self, pending: list) -> tuple[list[float], dict[str, Any]] | None:
        """Σ over every tensor of the global-mode groups, in parameter order (the one reduction of the global
        rule: where sharded parameters would all-reduce), and the first global group."""
        rows, lists, first = [], set(), None
        for group, *_, scores, _ in pending:
            if group["mode"] == "global":
                rows += scores.rows if isinstance(scores, flat.Part) else scores
                lists.add(group[self.candidates_key])
                first = first or group
        if first is None:
            return None
        if len(lists) > 1:
            raise ValueError(f"mode='global' needs one {self.candidates_key} list shared by every global param "
                             f"group; got {sorted(lists)} (use mode='per_param' for different lists)")
        return [sum(column) for column in zip(*rows)], first

    def _second_pass(self, pending: list, loss: Any) -> None:
        pending = self._flat_first_passes(pending)
        chosen_global = global_tensor = None
        found = self._global_scores(pending)
        if found is not None:
            totals, first = found
            if self._global is None:
                self._global = selector.Selector(len(totals), self._initial_index(first))
            chosen_global = self._global.update(totals, first["score_ema"], first["hysteresis"])
        for group, ps, gs, sts, c, scores, scratches in pending:
            if isinstance(scores, flat.Part):
                scores.finish(self, chosen_global, self._global and self._global.score)
                continue
            for p, g, st, sc, x in zip(ps, gs, sts, scores, scratches):
                if group["mode"] == "global":
                    j = chosen_global
                    if global_tensor is None:
                        global_tensor = torch.tensor(self._global.score, dtype=torch.float64)
                    st["gap_index"].fill_(j)
                    st["gap_score"].copy_(global_tensor)
                    st["gap_counts"][j] += 1
                else:
                    j = selector.decide(st, sc, group["score_ema"], group["hysteresis"])
                if c["decay"] != 1.0:
                    p.mul_(c["decay"])
                if group["cautious"]:
                    p.sub_(F.cautious(self._direction(p, g, st, c, j, group, x), g))
                else:
                    self._apply(p, g, st, c, j, group, x)

    def _apply(self, p: Tensor, g: Tensor, st: dict[str, Any], c: dict[str, Any], j: int,
               group: dict[str, Any], scratch: dict[str, Tensor]) -> None:
        """θ ← θ − s_j (after decay); subclasses may fuse it (e.g. one addcdiv)."""
        p.sub_(self._direction(p, g, st, c, j, group, scratch))

    # ------------------------------------------------------------------------------- introspection
    def selection(self) -> list[list[float]]:
        """Per param group, the candidate value each parameter uses now (the initial one before its first step)."""
        self._sync_flat()
        out = []
        for group in self.param_groups:
            cands = group[self.candidates_key]
            row = []
            for p in group["params"]:
                st = self.state.get(p, {})
                j = int(st["gap_index"]) if "gap_index" in st else self._initial_index(group)
                row.append(cands[j])
            out.append(row)
        return out

    def gap_stats(self) -> list[dict[str, Any]]:
        """Per param group: ``candidates``, the running ``scores`` (the global ones in global mode, else the mean
        over the group's parameters) and the ``fraction`` of parameter-steps that used each candidate."""
        out = []
        selections = self.selection()
        for group, selected in zip(self.param_groups, selections):
            cands = group[self.candidates_key]
            k = len(cands)
            states = [self.state[p] for p in group["params"] if "gap_counts" in self.state.get(p, {})]
            counts = torch.zeros(k, dtype=torch.float64)
            scores = torch.zeros(k, dtype=torch.float64)
            for st in states:
                counts += st["gap_counts"].double()
                scores += st["gap_score"]
            total = float(counts.sum())
            if group["mode"] == "global" and self._global is not None:
                scores = torch.tensor(self._global.score, dtype=torch.float64)
            elif states:
                scores /= len(states)
            out.append({"candidates": list(cands), "mode": group["mode"], "scores": scores.tolist(),
                        "fraction": (counts / total).tolist() if total else [0.0] * k,
                        "selection": selected})
        return out

    # ---------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        self._sync_flat()
        sd = super().state_dict()
        if self._global is not None:
            sd["optfit"]["gap_global"] = self._global.to_state()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Like every optfit optimizer; the selector's float64 scores and integer counters keep their dtype."""
        originals = {k: dict(v) for k, v in state_dict.get("state", {}).items()} if isinstance(state_dict, dict) else {}
        super().load_state_dict(state_dict)
        self._flat_layouts.clear()  # the loaded tensors replace the flat buffers' views; rebuilt at the next step
        params = [p for group in self.param_groups for p in group["params"]]
        for index, saved in originals.items():
            for key, v in saved.items():
                if key.startswith("gap_") and isinstance(v, Tensor):
                    self.state[params[index]][key] = v.clone().to(device=params[index].device)
        saved_global = state_dict.get("optfit", {}).get("gap_global")
        self._global = selector.Selector.from_state(saved_global) if saved_global else None

    def __getstate__(self) -> dict[str, Any]:
        """Every attribute, as the base pickles (and ``copy.deepcopy`` copies) them, the global selector included,
        less the flat layouts: the per-tensor state is brought up to date first, and a copy builds its own layouts
        (keyed by the identity of state dicts, which a copy does not keep) at its next step."""
        self._sync_flat()
        state = super().__getstate__()
        state.pop("_flat_layouts", None)
        state.pop("_prefetched", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_global", None)
        self.__dict__.setdefault("_flat_layouts", {})
        self.__dict__.setdefault("_prefetched", {})

