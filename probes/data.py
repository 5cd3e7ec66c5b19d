"""The design matrix of one probe: rows of one hook at one token group, their labels, samples and token types."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from flowlens.errors import FlowlensError
from probes.control import token_types
from probes.labels import SAMPLE, Target

if TYPE_CHECKING:
    from flowlens.store.activations import Activations
    from flowlens.store.run import Run

POOLS = ("mean", "concat", "tokens")


@dataclass
class ProbeData:
    """`X` (n, features), `y` (n,) labels as str, `groups` (n,) sample number, `types` (n,) token type id."""

    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    types: np.ndarray
    samples: list[str]
    pool: str

    def __len__(self) -> int:
        return len(self.y)


def probe_data(
    run: Run,
    target: Target,
    activations: Activations,
    pool: str = "mean",
    max_tokens: int | None = None,
    seed: int = 0,
    labels: dict[str, str] | None = None,
) -> ProbeData:
    """Rows, labels and groups for `target` from `activations` (one hook at one group of `run`).

    Sample labels: with `pool="mean"` each sample's rows are averaged into one row, with `"concat"` they
    are concatenated in order (every sample must have as many rows), with `"tokens"` every row is kept
    and carries its sample's label. Token labels always keep one row per token. `max_tokens` keeps at most
    that many rows per sample where rows are tokens (a seeded random subset, in order).
    """
    index = activations.index
    sample_ids = index["sample"].astype(str).to_numpy()
    if target.level == SAMPLE:
        if labels is None:
            labels = target.sample_labels(run, list(dict.fromkeys(sample_ids)))
        row_labels = np.asarray([labels.get(s) for s in sample_ids], dtype=object)
        pool_used = pool
    else:
        row_labels = target.token_labels(index)
        pool_used = "tokens"
    keep = np.flatnonzero(row_labels != None)  # noqa: E711 (elementwise on an object array)
    if pool_used == "tokens" and max_tokens is not None:
        keep = _subsample(keep, sample_ids[keep], max_tokens, seed)
    if keep.size == 0:
        raise FlowlensError(
            f"no row of {activations.hook}@{activations.group} carries a {target.name!r} label"
            + (" (frame_mean rows have no spatial cell)" if target.column in ("row", "col") else "")
        )
    ids = sample_ids[keep]
    samples = list(dict.fromkeys(ids))
    codes = np.searchsorted(np.asarray(sorted(samples)), ids)  # stable sample numbers for grouping
    values = np.asarray(activations.values[keep], dtype=np.float32)
    y = np.asarray(row_labels[keep].astype(str))
    if pool_used == "tokens":
        types = token_types(index.iloc[keep]) if target.level != SAMPLE else codes
        return ProbeData(values, y, codes, types, samples, pool_used)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    blocks = np.split(values[order], bounds)
    if pool_used == "mean":
        X = np.stack([block.mean(axis=0) for block in blocks])
    elif pool_used == "concat":
        sizes = sorted({len(block) for block in blocks})
        if len(sizes) > 1:
            raise FlowlensError(
                f"--pool concat needs as many {activations.group} rows in every sample; they hold {sizes}"
            )
        X = np.stack([block.reshape(-1) for block in blocks])
    else:
        raise FlowlensError(f"--pool {pool!r}: use one of {', '.join(POOLS)}")
    first = order[np.concatenate([[0], bounds])]
    groups = codes[first]
    return ProbeData(X, y[first], groups, groups.copy(), [ids[i] for i in first], pool_used)


def _subsample(rows: np.ndarray, samples: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """At most `limit` of `rows` per sample, drawn with `seed`, in their original order."""
    rng = np.random.default_rng(seed)
    kept = []
    for sample in dict.fromkeys(samples):
        mine = rows[samples == sample]
        kept.append(mine if mine.size <= limit else np.sort(rng.choice(mine, limit, replace=False)))
    return np.concatenate(kept) if kept else rows
