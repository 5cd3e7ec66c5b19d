"""Positional trends of token scores: positions along an axis, fits (`exp`, `poly3`, `nonparametric`), apply.

A trend is fitted to the mean score at each position of an axis over a calibration set (intcomp's
protocol, re-derived: its fitting code is not released). `apply(scores, positions, fit)` divides each
score by the trend at its position and multiplies by the trend at position 0 (intcomp's w(0) = 1), or
subtracts the trend's rise (`mode="subtract"`). Bias strength: lambda = log(trend(N-1)/trend(0))/(N-1)
and the amplification exp(lambda*(N-1)) = trend(N-1)/trend(0); for `exp` lambda is the fitted rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlens.errors import FlowlensError

if TYPE_CHECKING:
    from flowlens.models.layout import TokenLayout

AXES = ("global_index", "frame", "within_frame_index", "row", "col")
FAMILIES = ("exp", "poly3", "nonparametric")
MODES = ("divide", "subtract")
FLOOR = 0.5  # trends are floored at this fraction of the smallest positive mean score (poly3 may dip to 0)


def token_positions(layout: TokenLayout, axis: str) -> np.ndarray:
    """int64[V] position of each video feature token along `axis`; -1 for separator tokens on row/col axes.

    `global_index`: rank among the video feature tokens (intcomp's raster index, over every frame);
    `frame`: frame group; `row`, `col`: cell; `within_frame_index`: rank within its frame group.
    """
    cells = np.asarray(layout.video_cells, dtype=np.int64)
    if axis == "global_index":
        return np.arange(cells.shape[0], dtype=np.int64)
    if axis == "frame":
        return cells[:, 0].copy()
    if axis == "row":
        return cells[:, 1].copy()
    if axis == "col":
        return cells[:, 2].copy()
    if axis == "within_frame_index":
        out = np.zeros(cells.shape[0], dtype=np.int64)
        for frame in np.unique(cells[:, 0]):
            members = np.flatnonzero(cells[:, 0] == frame)
            out[members] = np.arange(members.size)
        return out
    raise FlowlensError(f"unknown debias axis {axis!r}; axes: {', '.join(AXES)}")


def position_means(
    scores: Sequence[np.ndarray], positions: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """(mean score, count) at each position 0..P-1 over the calibration samples (negative positions skipped)."""
    if len(scores) != len(positions) or not scores:
        raise FlowlensError("a trend needs one position vector per score vector, and at least one sample")
    pos = np.concatenate([np.asarray(p, dtype=np.int64) for p in positions])
    val = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    if pos.shape != val.shape:
        raise FlowlensError(f"scores ({val.shape}) and positions ({pos.shape}) differ in length")
    keep = pos >= 0
    pos, val = pos[keep], val[keep]
    if not pos.size:
        raise FlowlensError("no token has a position on this axis")
    n = int(pos.max()) + 1
    counts = np.bincount(pos, minlength=n).astype(np.float64)
    sums = np.bincount(pos, weights=val, minlength=n)
    means = np.divide(sums, counts, out=np.full(n, np.nan), where=counts > 0)
    return means, counts


@dataclass
class TrendFit:
    """A fitted trend over positions 0..n_positions-1 and what it was fitted on (one `debias_fits` row)."""

    axis: str
    family: str
    n_positions: int
    params: list[float]
    floor: float
    lam: float
    amplification: float
    r2: float
    means: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    key: dict[str, Any] = field(default_factory=dict)  # model, scorer, layer, frames, n_samples ...

    def trend(self, positions: np.ndarray) -> np.ndarray:
        """The fitted trend at `positions` (floored, so it is positive)."""
        p = np.asarray(positions, dtype=np.float64)
        if self.family == "exp":
            values = np.exp(self.params[0] + self.params[1] * p)
        elif self.family == "poly3":
            values = np.polyval(self.params, p)
        elif self.family == "nonparametric":
            values = np.interp(p, np.arange(self.n_positions), self.params)
        else:
            raise FlowlensError(f"unknown trend family {self.family!r}; families: {', '.join(FAMILIES)}")
        return np.maximum(values, self.floor)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | dict[str, Any]) -> TrendFit:
        data = json.loads(text) if isinstance(text, str) else dict(text)
        return cls(**data)


def fit_trend(
    means: np.ndarray,
    counts: np.ndarray,
    family: str = "exp",
    axis: str = "global_index",
    bins: int = 16,
    smooth: float = 1.0,
    key: dict[str, Any] | None = None,
) -> TrendFit:
    """Fit `family` to the per-position means (weighted by their counts; empty positions skipped).

    exp: weighted least squares of log(mean) on position (intcomp's w = exp(-lambda*i));
    poly3: weighted cubic least squares (intcomp's FastV weight); nonparametric: means in `bins` equal-width
    bins, smoothed by a Gaussian of `smooth` bins, linearly interpolated between bin centres.
    """
    if family not in FAMILIES:
        raise FlowlensError(f"unknown trend family {family!r}; families: {', '.join(FAMILIES)}")
    means, counts = np.asarray(means, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    n = means.size
    seen = counts > 0
    x, y, w = np.flatnonzero(seen).astype(np.float64), means[seen], counts[seen]
    positive = y[y > 0]
    floor = FLOOR * float(positive.min()) if positive.size else 1e-12
    if family == "exp":
        if x.size < 2:
            params = [math.log(max(y[0], floor)) if y.size else 0.0, 0.0]
        else:
            slope, intercept = np.polyfit(x, np.log(np.maximum(y, floor)), 1, w=np.sqrt(w))
            params = [float(intercept), float(slope)]
    elif family == "poly3":
        degree = min(3, max(0, x.size - 1))
        coeffs = np.polyfit(x, y, degree, w=np.sqrt(w)) if x.size else np.zeros(1)
        params = [0.0] * (3 - degree) + [float(c) for c in coeffs]
    else:
        params = _binned(x, y, w, n, bins, smooth).tolist()
    fit = TrendFit(axis, family, n, params, floor, 0.0, 1.0, float("nan"), key=dict(key or {}))
    fit.means = [float(m) if np.isfinite(m) else float("nan") for m in means]
    fit.counts = counts.tolist()
    ends = fit.trend(np.array([0, n - 1]))
    fit.lam = float(math.log(ends[1] / ends[0]) / (n - 1)) if n > 1 else 0.0
    if family == "exp":
        fit.lam = float(params[1])
    fit.amplification = float(math.exp(fit.lam * (n - 1)))
    if y.size > 1:
        pred = fit.trend(x)
        mean = np.average(y, weights=w)
        total = float(np.sum(w * (y - mean) ** 2))
        fit.r2 = float(1 - np.sum(w * (y - pred) ** 2) / total) if total > 0 else float("nan")
    return fit


def _binned(x: np.ndarray, y: np.ndarray, w: np.ndarray, n: int, bins: int, smooth: float) -> np.ndarray:
    """Trend values at positions 0..n-1: count-weighted bin means, Gaussian-smoothed over bins, interpolated."""
    if bins < 1 or smooth < 0:
        raise FlowlensError(f"nonparametric trend: bins >= 1 and smooth >= 0, got {bins}, {smooth}")
    nb = max(1, min(bins, n))
    edges = np.linspace(0, n, nb + 1)
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, nb - 1)
    wsum = np.bincount(which, weights=w, minlength=nb)
    ysum = np.bincount(which, weights=w * y, minlength=nb)
    filled = wsum > 0
    centres = ((edges[:-1] + edges[1:]) / 2 - 0.5)[filled]
    values, weights = (ysum[filled] / wsum[filled]), wsum[filled]
    if smooth > 0 and values.size > 1:
        idx = np.arange(nb)[filled].astype(np.float64)
        kernel = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / smooth) ** 2) * weights[None, :]
        values = kernel @ values / kernel.sum(1)
    return np.interp(np.arange(n, dtype=np.float64), centres, values)


def apply(scores: np.ndarray, positions: np.ndarray, fit: TrendFit, mode: str = "divide") -> np.ndarray:
    """Debiased scores: score * trend(0) / trend(pos) (`divide`, intcomp) or score - (trend(pos) - trend(0))
    (`subtract`). Tokens with a negative position (separators on row/col axes) are left as they are."""
    if mode not in MODES:
        raise FlowlensError(f"unknown debias mode {mode!r}; modes: {', '.join(MODES)}")
    scores = np.asarray(scores, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.int64)
    if scores.shape != positions.shape:
        raise FlowlensError(f"{scores.size} scores but {positions.size} positions")
    if positions.size and int(positions.max()) >= fit.n_positions:
        raise FlowlensError(
            f"the {fit.axis} trend was fitted on positions 0..{fit.n_positions - 1}, this sample reaches "
            f"{int(positions.max())}: calibrate on samples with the same frames and resolution"
        )
    placed = positions >= 0
    at = fit.trend(np.where(placed, positions, 0))
    base = float(fit.trend(np.array([0]))[0])
    out = scores * base / at if mode == "divide" else scores - (at - base)
    return np.where(placed, out, scores)
