"""Debias steps for pruning specs and the run-level pieces they need (calibration, sinks, padding).

Registered with `flowlens.pruning.spec.register_debias` (when that module exists) as
`function(scores, context, **params) -> scores`:

- `positional_trend(axis, family, mode, fit, scorer, calibration, majority, bins, smooth, pad_threshold,
  sinks)`: divide by (or subtract) a positional trend. The trend comes from `fit` (a `debias.h5` or its
  folder, written by `flowlens debias`, or the fit's data itself: a `TrendFit` as a dict); else
  `calibration="run"` fits every traced sample of the context's run file with `scorer` (or the scorer the
  pruning engine put in `context.cache["scorer"]`); `"sample"` fits the sample's own low-score majority
  (`sample_trend`); `"auto"` (default) is `run` where the context has a run file and a scorer, else
  `sample` (what `flowlens prune`, one in-memory trace at a time, gets).
- `pad_mask(threshold, padding)`: tokens whose pad fraction exceeds `threshold` ranked last.
- `sink_mask(source, ratio, share, norm_ratio)`: sink tokens ranked last.

Plain functions (no registry): `trend.apply(scores, positions, fit, mode)`, `calibrate(run, ...)`,
`calibrate_contexts(contexts, ...)`, `context_sinks(context, ...)`, `context_padding(context, ...)`,
`load_fit(path, ...)`, `sample_sinks(run, sample, ...)`, `sample_padding(run, sample, ...)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flowlens.errors import FlowlensError
from flowlens.pruning import sinks as sk
from flowlens.pruning.trend import TrendFit, apply, fit_trend, position_means, token_positions

if TYPE_CHECKING:
    from flowlens.pruning.scorers import ScoreContext
    from flowlens.store.run import Run

FITS_TABLE = "debias_fits"
SINK_SOURCES = ("auto", "received", "last")
_CALIBRATIONS: dict[tuple, TrendFit] = {}  # run-level calibrations already fitted in this process


# ------------------------------------------------------------------ scorers
def scorer_of(value: Any) -> tuple[str, dict[str, Any]]:
    """(name, params) of a scorer given as a name, {name: ..., <param>: ...} or a ScorerSpec-like object."""
    if isinstance(value, str) and value:
        return value, {}
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"], {k: v for k, v in value.items() if k != "name"}
    if hasattr(value, "name") and hasattr(value, "params"):
        return str(value.name), dict(value.params)
    raise FlowlensError(f"a scorer is a name or {{name: ..., <parameter>: ...}}, got {value!r}")


def scorer_label(name: str, params: dict[str, Any]) -> str:
    inner = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items()))
    return f"{name}({inner})" if inner else name


def sample_scores(run: Run, sample: str, name: str, params: dict[str, Any]) -> np.ndarray:
    """One traced sample's scores from a registered scorer (no forward)."""
    from flowlens.pruning.scorers import ScoreContext, score

    return score(name, ScoreContext(run, sample), **params)


# ------------------------------------------------------------------ calibration
def calibrate(
    run: Run,
    name: str,
    params: dict[str, Any],
    axis: str = "global_index",
    family: str = "exp",
    samples: list[str] | None = None,
    bins: int = 16,
    smooth: float = 1.0,
) -> TrendFit:
    """The positional trend of a scorer over a run's traced samples (all of them unless `samples`)."""
    ids = list(run.traced if samples is None else samples)
    if not ids:
        raise FlowlensError(f"{run.path} holds no traced sample to calibrate a trend on")
    scores = [sample_scores(run, s, name, params) for s in ids]
    positions = [token_positions(run.layout(s), axis) for s in ids]
    means, counts = position_means(scores, positions)
    key = fit_key(run, name, params, ids)
    return fit_trend(means, counts, family, axis, bins, smooth, key)


def calibrate_contexts(
    contexts: list[ScoreContext],
    name: str,
    params: dict[str, Any],
    axis: str = "global_index",
    family: str = "exp",
    bins: int = 16,
    smooth: float = 1.0,
    key: dict[str, Any] | None = None,
) -> TrendFit:
    """The positional trend of a scorer over calibration samples given as `ScoreContext`s (any source: a
    run file or in-memory traces); `key` is stored with the fit."""
    from flowlens.pruning.scorers import score

    if not contexts:
        raise FlowlensError("a trend needs at least one calibration sample")
    scores = [score(name, c, **params) for c in contexts]
    positions = [token_positions(c.layout, axis) for c in contexts]
    means, counts = position_means(scores, positions)
    base = {"scorer": name, "scorer_params": params, "scorer_label": scorer_label(name, params)}
    return fit_trend(
        means, counts, family, axis, bins, smooth, {**base, "n_samples": len(contexts), **(key or {})}
    )


def fit_key(run: Run, name: str, params: dict[str, Any], samples: list[str]) -> dict[str, Any]:
    """What a fit is stored per: model, scorer (label and parameters), layer, frames, calibration samples."""
    settings = run.config.get("settings", {})
    return {
        "model": run.config.get("model"),
        "scorer": name,
        "scorer_params": params,
        "scorer_label": scorer_label(name, params),
        "layer": params.get("layer", -1),
        "frames": settings.get("frames", -1),
        "n_samples": len(samples),
    }


def load_fit(
    path: str | Path, axis: str, family: str, scorer: str | None = None, layer: int | None = None
) -> TrendFit:
    """The stored calibration fit (stage `raw`) for (axis, family[, scorer label or name][, layer]) in a
    debias run (file or folder)."""
    from flowlens.store.run import open_run

    path = Path(path)
    if path.is_dir():
        path = path / "debias.h5"
    if not path.is_file():
        raise FlowlensError(f"no debias run at {path} (write one with `flowlens debias`)")
    with open_run(path) as run:
        if FITS_TABLE not in run.run_tables:
            raise FlowlensError(f"{path} holds no `{FITS_TABLE}` table")
        table = run.table(FITS_TABLE)
    rows = table[(table["axis"] == axis) & (table["family"] == family) & (table["stage"] == "raw")]
    if scorer is not None:
        rows = rows[(rows["scorer_label"] == scorer) | (rows["scorer"] == scorer)]
    if layer is not None:
        rows = rows[rows["layer"] == layer]
    if len(rows) != 1:
        found = sorted(set(table["scorer_label"]))
        raise FlowlensError(
            f"{path}: {len(rows)} fits match axis={axis} family={family} scorer={scorer} layer={layer}; "
            f"name the scorer and layer (stored scorers: {', '.join(found)})"
        )
    return TrendFit.from_json(rows.iloc[0]["fit"])


# ------------------------------------------------------------------ sinks and padding of one sample
def sample_sinks(
    run: Run,
    sample: str,
    source: str = "auto",
    ratio: float = 10.0,
    share: float = 0.5,
    norm_ratio: float = 5.0,
) -> tuple[np.ndarray, str]:
    """(bool[V] sink flags, the source used). Received attention: all-query sums where the trace stored
    them (`--received-attention`), else the `last` row every trace has; plus massive residual norms at every
    layer where the trace stored video residuals (`--video-layers`)."""
    if source not in SINK_SOURCES:
        raise FlowlensError(f"unknown sink source {source!r}; sources: {', '.join(SINK_SOURCES)}")
    has_received = "received_attention" in run.arrays(sample)
    if source == "auto":
        source = "received" if has_received else "last"
    if source == "received":
        if not has_received:
            raise FlowlensError(
                f"{run.path} sample {sample!r} has no received_attention: trace with --received-attention"
            )
        received = run.array(sample, "received_attention")[:, :, 0]  # (L, H, V), query set `all`
    else:
        received = run.array(sample, "last_to_video")  # (L, H, V)
    flags = sk.received_sinks(received, ratio, share)
    layers = run.resid_video_layers(sample)
    if layers:
        norms = np.stack(
            [
                np.linalg.norm(run.array(sample, f"resid_video/{k}").astype(np.float64), axis=-1)
                for k in layers
            ]
        )
        flags = flags | sk.norm_sinks(norms, norm_ratio)
        source += "+norms"
    return flags, source


def context_sinks(
    context: ScoreContext,
    source: str = "auto",
    ratio: float = 10.0,
    share: float = 0.5,
    norm_ratio: float = 5.0,
) -> tuple[np.ndarray, str]:
    """`sample_sinks` for a `ScoreContext` (a run file or an in-memory trace)."""
    run = getattr(context, "run", None)
    if run is not None and getattr(context, "trace", None) is None and not getattr(context, "arrays", None):
        return sample_sinks(run, context.sample, source, ratio, share, norm_ratio)
    if source not in SINK_SOURCES:
        raise FlowlensError(f"unknown sink source {source!r}; sources: {', '.join(SINK_SOURCES)}")
    try:
        received = context.array("received_attention")[:, :, 0] if source != "last" else None
    except FlowlensError:
        if source == "received":
            raise
        received = None
    used = "received" if received is not None else "last"
    flags = sk.received_sinks(
        received if received is not None else context.array("last_to_video"), ratio, share
    )
    resid = getattr(getattr(context, "trace", None), "resid_video", None) or {}
    if resid:
        norms = np.stack(
            [np.linalg.norm(np.asarray(v, dtype=np.float64), axis=-1) for _, v in sorted(resid.items())]
        )
        flags, used = flags | sk.norm_sinks(norms, norm_ratio), used + "+norms"
    return flags, used


def context_padding(context: ScoreContext, padding: str = "auto") -> np.ndarray:
    """`sample_padding` for a `ScoreContext` (a run file or an in-memory trace)."""
    trace = getattr(context, "trace", None)
    if trace is not None:
        return _padding(context.layout, dict(getattr(trace, "metadata", {}) or {}), padding)
    return sample_padding(context.run, context.sample, padding)


def sample_padding(run: Run, sample: str, padding: str = "auto") -> np.ndarray:
    """float[V] pad fraction of each video token from the preprocessing geometry (`sinks.pad_fractions`)."""
    return _padding(run.layout(sample), run.metadata(sample), padding)


def _padding(layout: Any, meta: dict[str, Any], padding: str) -> np.ndarray:
    size = None
    if "frame_height" in meta and "frame_width" in meta:
        size = (int(meta["frame_height"]), int(meta["frame_width"]))
    return sk.pad_fractions(layout.video_cells, layout.family, padding, size)


# ------------------------------------------------------------------ registered debias steps
def positional_trend(
    scores: np.ndarray,
    context: ScoreContext,
    axis: str = "global_index",
    family: str = "exp",
    mode: str = "divide",
    fit: str | dict[str, Any] | TrendFit | None = None,
    scorer: Any = None,
    calibration: str = "auto",
    majority: float = 0.8,
    bins: int = 16,
    smooth: float = 1.0,
    pad_threshold: float | None = None,
    sinks: bool = False,
) -> np.ndarray:
    """Scores divided by (or minus) the positional trend; padding/sinks optionally ranked last first."""
    scores = np.asarray(scores, dtype=np.float64)
    if pad_threshold is not None:
        scores = pad_mask(scores, context, pad_threshold)
    if sinks:
        scores = sink_mask(scores, context)
    positions = token_positions(context.layout, axis)
    if isinstance(fit, TrendFit):
        trend = fit
    elif isinstance(fit, dict):  # a fit embedded in the spec (`TrendFit` data, e.g. from `debias_fits`)
        trend = TrendFit.from_json(fit)
    elif fit is not None:
        name = None if scorer is None else scorer_label(*scorer_of(scorer))
        trend = load_fit(fit, axis, family, name)
    elif calibration == "sample" or (calibration == "auto" and not _has_run_and_scorer(context, scorer)):
        # the sample's own low-score majority (auto: no run file to calibrate over, e.g. `flowlens prune`)
        trend = sample_trend(scores, positions, family, axis, majority, bins, smooth)
    elif calibration in ("run", "auto"):
        given = scorer if scorer is not None else context.cache.get("scorer")
        if given is None or getattr(context, "run", None) is None:
            raise FlowlensError(
                "positional_trend calibrates over the samples of a run file and needs the scorer: give "
                "`scorer: {name: ..., ...}` on a run, a stored `fit: DEBIAS_DIR` (or the fit itself), or "
                "`calibration: sample`"
            )
        name, params = scorer_of(given)
        key = (str(context.run.path), scorer_label(name, params), axis, family, bins, smooth)
        if key not in _CALIBRATIONS:
            _CALIBRATIONS[key] = calibrate(context.run, name, params, axis, family, None, bins, smooth)
        trend = _CALIBRATIONS[key]
    else:
        raise FlowlensError(f"positional_trend calibration is auto, run or sample, got {calibration!r}")
    return apply(scores, positions, trend, mode)


def _has_run_and_scorer(context: ScoreContext, scorer: Any) -> bool:
    has_scorer = scorer is not None or context.cache.get("scorer") is not None
    return getattr(context, "run", None) is not None and has_scorer


def sample_trend(
    scores: np.ndarray,
    positions: np.ndarray,
    family: str = "exp",
    axis: str = "global_index",
    majority: float = 0.8,
    bins: int = 16,
    smooth: float = 1.0,
) -> TrendFit:
    """One sample's own trend, fitted to its low-score majority: fit every token, drop the tokens whose
    score / trend ratio is above the `majority` quantile (the salient few), refit on the rest."""
    if not 0 < majority <= 1:
        raise FlowlensError(f"positional_trend: 0 < majority <= 1, got {majority}")
    scores, positions = np.asarray(scores, dtype=np.float64), np.asarray(positions, dtype=np.int64)
    first = fit_trend(*position_means([scores], [positions]), family, axis, bins, smooth)
    placed = positions >= 0
    ratio = np.where(placed, scores / first.trend(np.where(placed, positions, 0)), np.inf)
    low = placed & (ratio <= np.quantile(ratio[placed], majority))
    means, counts = position_means([scores[low]], [positions[low]])
    n = int(positions.max()) + 1
    means = np.concatenate([means, np.full(n - means.size, np.nan)])
    counts = np.concatenate([counts, np.zeros(n - counts.size)])
    return fit_trend(
        means, counts, family, axis, bins, smooth, {"calibration": "sample", "majority": majority}
    )


def pad_mask(
    scores: np.ndarray, context: ScoreContext, threshold: float = 0.5, padding: str = "auto"
) -> np.ndarray:
    """Tokens whose pad fraction exceeds `threshold` ranked below every other (intcomp 0.5, PDrop 0.01)."""
    pad = context_padding(context, padding)
    return sk.mask_scores(scores, pad > threshold)


def sink_mask(
    scores: np.ndarray,
    context: ScoreContext,
    source: str = "auto",
    ratio: float = 10.0,
    share: float = 0.5,
    norm_ratio: float = 5.0,
) -> np.ndarray:
    """Sink tokens (`sample_sinks`) ranked below every other token."""
    flags, _ = context_sinks(context, source, ratio, share, norm_ratio)
    return sk.mask_scores(scores, flags)


def _register() -> None:
    try:
        from flowlens.pruning.spec import register_debias
    except ImportError:  # no pruning specs in this flowlens: the functions stay plain
        return
    register_debias("positional_trend")(positional_trend)
    register_debias("pad_mask")(pad_mask)
    register_debias("sink_mask")(sink_mask)


_register()
