"""Diagnostics of token scores without re-running the model: top-k sets, positional histograms of kept
tokens, rank agreement between scorers (Spearman, top-k Jaccard), share of flagged tokens among kept.

Top-k follows `flowlens.pruning.policies` (`topk_ratio`): k = floor(r*V + 1/2), ties broken by position
(the earlier token first).
"""

from __future__ import annotations

import math

import numpy as np

from flowlens.errors import FlowlensError


def keep_count(ratio: float, n: int) -> int:
    """Tokens a fraction keeps out of n: floor(ratio*n + 1/2), at most n."""
    if not 0 <= ratio <= 1:
        raise FlowlensError(f"a budget is the fraction of tokens kept, 0..1, got {ratio}")
    return min(n, int(math.floor(ratio * n + 0.5)))


def topk_mask(scores: np.ndarray, ratio: float) -> np.ndarray:
    """bool[V]: the keep_count(ratio, V) highest scores (ties: earlier token first)."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise FlowlensError("scores contain NaN")
    order = np.argsort(-scores, kind="stable")
    keep = np.zeros(scores.size, dtype=bool)
    keep[order[: keep_count(ratio, scores.size)]] = True
    return keep


def position_histogram(keeps: list[np.ndarray], positions: list[np.ndarray], n_positions: int) -> np.ndarray:
    """float[n_positions]: share of all kept tokens (over the samples) at each position (negatives skipped)."""
    counts = np.zeros(n_positions)
    for keep, pos in zip(keeps, positions, strict=True):
        pos = np.asarray(pos)[np.asarray(keep, dtype=bool)]
        pos = pos[pos >= 0]
        counts += np.bincount(pos, minlength=n_positions)[:n_positions]
    total = counts.sum()
    return counts / total if total > 0 else counts


def ranks(values: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; ties share the mean of their ranks)."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    out = np.empty(values.size)
    start = 0
    while start < values.size:
        stop = start + 1
        while stop < values.size and sorted_values[stop] == sorted_values[start]:
            stop += 1
        out[order[start:stop]] = (start + stop + 1) / 2
        start = stop
    return out


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (Pearson correlation of average ranks); NaN when either is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denominator = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb / denominator) if denominator > 0 else float("nan")


def topk_jaccard(a: np.ndarray, b: np.ndarray, ratio: float) -> float:
    """|top-k(a) & top-k(b)| / |top-k(a) | top-k(b)| at the budget `ratio` (1 when both keep nothing)."""
    ka, kb = topk_mask(a, ratio), topk_mask(b, ratio)
    union = int((ka | kb).sum())
    return float((ka & kb).sum() / union) if union else 1.0


def kept_share(keep: np.ndarray, flagged: np.ndarray) -> float:
    """Share of the kept tokens that are flagged (sinks, padding); NaN when nothing is kept."""
    keep = np.asarray(keep, dtype=bool)
    n = int(keep.sum())
    return float(np.asarray(flagged, dtype=bool)[keep].sum() / n) if n else float("nan")
