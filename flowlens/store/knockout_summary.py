"""`summarize_knockout`: Map the Flow's knockout curves from a `knockout` table, with bootstrap CIs over samples.

Per (curve, centre layer): the mean % change in the probability of the clean prediction (`rel_pred`)
over the samples whose clean prediction was correct (`base_correct`), a percentile bootstrap CI of that
mean, and the knockout accuracy as the paper computes it: baseline-wrong samples are skipped, so they
count as wrong -- #{base_correct and new_correct} / #labelled samples. `knockout_accuracy_any` counts a
baseline-wrong sample that the knockout flips to correct as correct (flowlens' earlier definition).
Samples without a ground truth are left out of both accuracies; `n_unlabelled` says how many.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flowlens.errors import FlowlensError

REQUIRED = ("sample", "curve", "layer", "rel_pred", "base_correct", "new_correct")
COLUMNS = [
    "curve",
    "layer",
    "n",
    "n_labelled",
    "n_unlabelled",
    "n_correct",
    "mean_rel_pred",
    "ci_low",
    "ci_high",
    "knockout_accuracy",
    "knockout_accuracy_any",
]


def summarize_knockout(
    df: pd.DataFrame, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> pd.DataFrame:
    """One row per (curve, layer): n, n_labelled, n_unlabelled, n_correct, mean_rel_pred, ci_low, ci_high,
    knockout_accuracy (the paper's), knockout_accuracy_any (flips of baseline-wrong samples counted).

    `n` counts the samples with that row, `n_labelled` those with a ground truth (a `labelled` column, or a
    known `p_base_gt` in tables written before it existed) and `n_correct` those with `base_correct`; `mean_rel_pred`
    averages `rel_pred` over the latter (NaN values skipped). The CI resamples samples, not rows: the S
    baseline-correct samples (in order of first appearance) are drawn with replacement n_boot times,
    `np.random.default_rng(seed).integers(0, S, (n_boot, S))`, the same draws for every curve and layer;
    a replicate's mean for a (curve, layer) is over the drawn samples that have a value there, counted
    with multiplicity; `ci_low`/`ci_high` are the (1 - level)/2 and (1 + level)/2 percentiles (numpy's
    linear interpolation) of the replicates. Curves keep their order of first appearance, layers ascend.
    """
    missing = [column for column in REQUIRED if column not in df.columns]
    if missing:
        raise FlowlensError(f"a knockout table needs columns {', '.join(missing)}")
    if n_boot < 1 or not 0 < level < 1:
        raise FlowlensError(f"need n_boot >= 1 and 0 < level < 1, got n_boot={n_boot}, level={level}")
    if df.duplicated(["sample", "curve", "layer"]).any():
        raise FlowlensError("the knockout table has more than one row for some (sample, curve, layer)")
    curves = list(pd.unique(df["curve"]))
    keys = df[["curve", "layer"]].drop_duplicates()
    keys = keys.assign(order=keys["curve"].map({c: i for i, c in enumerate(curves)}))
    keys = keys.sort_values(["order", "layer"], kind="stable").drop(columns="order").reset_index(drop=True)
    group = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(df[["curve", "layer"]]))
    n_groups = len(keys)

    labelled = _labelled(df)
    base_correct = _truth(df["base_correct"]) & labelled
    new_correct = _truth(df["new_correct"]) & labelled
    rel = df["rel_pred"].to_numpy(dtype=np.float64)
    use = base_correct & ~np.isnan(rel)

    n = np.bincount(group, minlength=n_groups)
    n_labelled = np.bincount(group, weights=labelled, minlength=n_groups)
    n_correct = np.bincount(group, weights=base_correct, minlength=n_groups).astype(np.int64)
    hits = np.bincount(group, weights=base_correct & new_correct, minlength=n_groups)
    hits_any = np.bincount(group, weights=new_correct, minlength=n_groups)
    mean = _ratio(
        np.bincount(group[use], weights=rel[use], minlength=n_groups),
        np.bincount(group[use], minlength=n_groups),
    )
    low, high = _bootstrap_ci(
        df["sample"].to_numpy()[base_correct],
        group[base_correct],
        rel[base_correct],
        n_groups,
        seed,
        n_boot,
        level,
    )
    return pd.DataFrame(
        {
            "curve": keys["curve"].to_numpy(dtype=object),
            "layer": keys["layer"].to_numpy(),
            "n": n.astype(np.int64),
            "n_labelled": n_labelled.astype(np.int64),
            "n_unlabelled": (n - n_labelled).astype(np.int64),
            "n_correct": n_correct,
            "mean_rel_pred": mean,
            "ci_low": low,
            "ci_high": high,
            "knockout_accuracy": _ratio(hits, n_labelled),
            "knockout_accuracy_any": _ratio(hits_any, n_labelled),
        },
        columns=COLUMNS,
    )


def _bootstrap_ci(
    samples: np.ndarray,
    group: np.ndarray,
    values: np.ndarray,
    n_groups: int,
    seed: int,
    n_boot: int,
    level: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI per group of the mean over samples, resampling samples jointly for all groups (NaN: no value)."""
    ids, index = np.unique(samples, return_inverse=True)
    first = np.full(len(ids), len(samples))
    np.minimum.at(first, index, np.arange(len(samples)))
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(ids))  # samples in order of first appearance
    row = rank[index]
    n_samples = len(ids)
    low, high = np.full(n_groups, np.nan), np.full(n_groups, np.nan)
    if n_samples == 0:
        return low, high
    totals = np.zeros((n_samples, n_groups))
    present = np.zeros((n_samples, n_groups))
    ok = ~np.isnan(values)
    np.add.at(totals, (row[ok], group[ok]), values[ok])
    np.add.at(present, (row[ok], group[ok]), 1.0)
    draws = np.random.default_rng(seed).integers(0, n_samples, (n_boot, n_samples))
    offsets = (draws + n_samples * np.arange(n_boot)[:, None]).ravel()
    counts = np.bincount(offsets, minlength=n_boot * n_samples).reshape(n_boot, n_samples).astype(float)
    means = _ratio(counts @ totals, counts @ present)  # (n_boot, n_groups)
    some = ~np.isnan(means).all(axis=0)
    tail = 100 * (1 - level) / 2
    low[some], high[some] = np.nanpercentile(means[:, some], [tail, 100 - tail], axis=0)
    return low, high


def _labelled(df: pd.DataFrame) -> np.ndarray:
    """Rows of samples with a ground truth: the `labelled` column, else a known `p_base_gt`, else all."""
    if "labelled" in df.columns:
        return _truth(df["labelled"])
    if "p_base_gt" in df.columns:
        return df["p_base_gt"].notna().to_numpy()
    return np.ones(len(df), dtype=bool)


def _truth(series: pd.Series) -> np.ndarray:
    """A boolean column as a numpy bool array, missing values as False."""
    return series.astype("boolean").fillna(False).to_numpy(dtype=bool)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, NaN where den is 0."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast_shapes(num.shape, den.shape), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out
