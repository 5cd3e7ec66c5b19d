"""Pruning policies: which video tokens to keep, given one score per token and a budget.

`select(scores, policy, budget, frames)` -> bool keep mask over the video feature tokens (the rows of
`layout.video_cells`). Higher score = more important. Ties are broken by position: among equal scores
the earlier token is kept first, so a selection is a pure function of the scores (and the same on every
machine). A NaN score is refused.

| policy | budget | keeps |
|---|---|---|
| `topk_ratio` | fraction r of the video tokens | the k = floor(r*V + 1/2) best tokens overall |
| `topk_count` | a number of tokens k | the min(k, V) best tokens overall |
| `topk_per_frame` | fraction r of each frame group's tokens | in frame group f, the floor(r*V_f + 1/2) best |
| `threshold` | a score threshold t | every token whose score is >= t (as many as pass) |
"""

from __future__ import annotations

import math

import numpy as np

from flowlens.errors import FlowlensError

POLICIES = {
    "topk_ratio": "keep the best fraction of the video tokens (budget: fraction kept, 0..1)",
    "topk_count": "keep the best k video tokens (budget: number of tokens kept)",
    "topk_per_frame": "keep the best fraction of each frame group's tokens (budget: fraction kept, 0..1)",
    "threshold": "keep every video token whose score reaches the budget (budget: score threshold)",
}
DEFAULT_BUDGETS = (0.5, 0.25, 0.15, 0.10)


def check_budget(policy: str, budget: float) -> float:
    """A budget valid for `policy` (a FlowlensError otherwise), as float."""
    if policy not in POLICIES:
        raise FlowlensError(f"unknown pruning policy {policy!r}; policies: {', '.join(POLICIES)}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not math.isfinite(budget):
        raise FlowlensError(f"policy {policy}: a budget is a finite number, got {budget!r}")
    if policy in ("topk_ratio", "topk_per_frame") and not 0 <= budget <= 1:
        raise FlowlensError(f"policy {policy}: the budget is the fraction of tokens kept, 0..1, got {budget}")
    if policy == "topk_count" and (budget < 0 or budget != int(budget)):
        raise FlowlensError(f"policy topk_count: the budget is a whole number of tokens >= 0, got {budget}")
    return float(budget)


def ratio_count(ratio: float, n: int) -> int:
    """Tokens a fraction keeps out of n: floor(ratio*n + 1/2) (DivPrune's round(ratio*N), halves rounded up)."""
    return min(n, int(math.floor(ratio * n + 0.5)))


def ranking(scores: np.ndarray) -> np.ndarray:
    """Token indices from most to least important: by score descending, then by position ascending."""
    scores = np.asarray(scores, dtype=np.float64)
    if np.isnan(scores).any():
        raise FlowlensError(f"{int(np.isnan(scores).sum())} scores are NaN: a scorer must score every token")
    return np.lexsort((np.arange(scores.size), -scores))


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Keep mask of the k best tokens (ties: earlier position first)."""
    keep = np.zeros(np.asarray(scores).size, dtype=bool)
    keep[ranking(scores)[: max(0, int(k))]] = True
    return keep


def select(scores: np.ndarray, policy: str, budget: float, frames: np.ndarray | None = None) -> np.ndarray:
    """Bool keep mask (V,) of `policy` at `budget`; `frames` (V,) is each token's frame group (per-frame policy)."""
    budget = check_budget(policy, budget)
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    if policy == "topk_ratio":
        return top(scores, ratio_count(budget, n))
    if policy == "topk_count":
        return top(scores, int(budget))
    if policy == "threshold":
        ranking(scores)  # refuses NaN
        return scores >= budget
    if frames is None or np.asarray(frames).shape != (n,):
        raise FlowlensError("policy topk_per_frame needs each token's frame group")
    frames = np.asarray(frames)
    keep = np.zeros(n, dtype=bool)
    for frame in np.unique(frames):
        members = np.flatnonzero(frames == frame)
        keep[members[top(scores[members], ratio_count(budget, members.size))]] = True
    return keep
