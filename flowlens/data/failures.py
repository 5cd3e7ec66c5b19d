"""Failure reasons grouped into kinds ("video not found", "cannot decode", ...) for the end-of-run summary.

A kind is read from the reason text, so it works on reasons stored in any run file. The phrases
below are the ones the loaders, `read_frames` and `Sample.validate` put in their messages.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

OTHER = "other"

# (kind, phrases): the first kind with a phrase in the reason (case-insensitive) wins.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("video not found", ("video not found", "no such file")),
    ("empty video", ("empty video",)),
    ("too few frames", ("too few frames", "fewer than the")),
    ("bad segment", ("bad segment",)),
    ("cannot decode", ("cannot decode", "invalid data found", "moov atom")),
    (
        "malformed annotation",
        (
            "invalid json",
            "malformed",
            "missing field",
            "must be",
            "duplicate id",
            "not one of the options",
            "no options",
            "empty question",
            "an option is empty",
            "expected a json object",
        ),
    ),
    ("input too long", ("too long", "model's context")),
)


def failure_kind(reason: str) -> str:
    """The kind of a failure reason, or `other`."""
    text = str(reason).lower()
    for kind, phrases in KINDS:
        if any(phrase in text for phrase in phrases):
            return kind
    return OTHER


def count_kinds(reasons: Iterable[str]) -> list[tuple[str, int]]:
    """(kind, count) for every kind present, most frequent first (ties in `KINDS` order)."""
    counts = Counter(failure_kind(r) for r in reasons)
    order = [kind for kind, _ in KINDS] + [OTHER]
    return sorted(counts.items(), key=lambda item: (-item[1], order.index(item[0])))


def summary_line(reasons: Iterable[str]) -> str:
    """One line such as `failures by kind: cannot decode 2, video not found 1` (empty when none failed)."""
    counts = count_kinds(reasons)
    if not counts:
        return ""
    return "failures by kind: " + ", ".join(f"{kind} {n}" for kind, n in counts)
