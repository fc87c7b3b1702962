"""Messages for names a user typed that do not exist: the close matches first ("did you mean"), then the
choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def close_matches(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` choices that look like ``name`` (``difflib``; case-insensitive), best first."""
    choices = list(dict.fromkeys(choices))
    lower = {c.lower(): c for c in choices}
    return [lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=n, cutoff=0.6)]


def unknown(what: str, name: str, choices: Iterable[str], *, flag: str = "", limit: int = 40) -> str:
    """``"--flag: unknown what 'x' (did you mean 'y'?); choose from a, b, c"`` (at most ``limit`` choices)."""
    choices = sorted(dict.fromkeys(choices))
    close = close_matches(name, choices)
    hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""
    shown = ", ".join(choices[:limit]) + (f", … ({len(choices)} in all)" if len(choices) > limit else "")
    prefix = f"{flag}: " if flag else ""
    return f"{prefix}unknown {what} {name!r}{hint}; choose from {shown or '(none)'}"
