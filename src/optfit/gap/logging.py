"""Send a gap optimizer's (or auto's) choices to TensorBoard (or anything with ``add_scalar(tag, value, step)``)."""

from __future__ import annotations

from typing import Any


def attach_summary_writer(optimizer: Any, writer: Any, every: int = 1, prefix: str = "gap"):
    """Log after every ``every``-th step, per param group g and candidate value b:
    ``{prefix}/group{g}/selected_mean`` (mean selected value over the group's parameters),
    ``{prefix}/group{g}/score/{b}`` (running score) and ``{prefix}/group{g}/fraction/{b}`` (share of
    parameter-steps so far); for ``auto`` (no candidates) every number of its ``gap_stats()`` as
    ``{prefix}/group{g}/{key}`` (step_size, d, schedule, decays, ...). Returns the hook handle (``.remove()`` stops logging)."""
    if not hasattr(optimizer, "gap_stats"):
        raise TypeError(f"attach_summary_writer: {type(optimizer).__name__} is not a gap optimizer (no gap_stats())")
    if not hasattr(writer, "add_scalar"):
        raise TypeError("attach_summary_writer: writer needs an add_scalar(tag, value, step) method "
                        "(e.g. torch.utils.tensorboard.SummaryWriter)")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"Invalid every: {every!r} (must be an integer >= 1)")
    counter = {"step": 0}

    def hook(opt: Any, args: Any, kwargs: Any) -> None:
        counter["step"] += 1
        step = counter["step"]
        if step % every:
            return
        for g, stats in enumerate(opt.gap_stats()):
            if "candidates" not in stats:  # a continuous choice (auto): every number it reports
                for key, value in stats.items():
                    if _is_number(value):
                        writer.add_scalar(f"{prefix}/group{g}/{key}", value, step)
                continue
            sel = stats["selection"]
            if sel and all(_is_number(x) for x in sel):  # gap-mix selects rule names, gap-grokfast (α, λ) pairs
                writer.add_scalar(f"{prefix}/group{g}/selected_mean", sum(sel) / len(sel), step)
            for b, score, frac in zip(stats["candidates"], stats["scores"], stats["fraction"]):
                writer.add_scalar(f"{prefix}/group{g}/score/{_tag(b)}", score, step)
                writer.add_scalar(f"{prefix}/group{g}/fraction/{_tag(b)}", frac, step)

    return optimizer.register_step_post_hook(hook)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _tag(candidate: Any) -> str:
    """A candidate as a TensorBoard tag: 0.9 → "0.9", (0.98, 2.0) → "0.98-2", "orthogonal" as it is."""
    if _is_number(candidate):
        return f"{candidate:g}"
    if isinstance(candidate, (tuple, list)):
        return "-".join(_tag(x) for x in candidate)
    return str(candidate)
