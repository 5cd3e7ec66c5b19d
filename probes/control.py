"""Control tasks (Hewitt & Liang 2019): the same label distribution, assigned at random per token type.

A control task gives every *type* one random label; a probe that scores well on it does so by
memorising types, not by reading the property. Types here:

- sample labels: the type is the sample (each sample gets one control label): the control labels are a
  random permutation of the samples' labels.
- token labels: the type of a video feature token is its spatial cell (row, col), shared by every frame
  of every sample; a row without a cell (a `frame_mean` row, a markup token) is a type of its own.

Labels go to types in the empirical proportions: with T types and label k on a fraction p_k of the rows,
round(T * p_k) types get label k (largest remainder), in a random order drawn from the seed. When every
type has as many rows as every other (samples; cells) the control labels have exactly the real labels'
distribution (up to rounding).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def allocate(labels: np.ndarray, n_types: int, rng: np.random.Generator) -> np.ndarray:
    """`n_types` labels in the proportions of `labels` (largest remainder), shuffled."""
    values, counts = np.unique(labels, return_counts=True)
    exact = counts / counts.sum() * n_types
    slots = np.floor(exact).astype(int)
    order = np.argsort(-(exact - slots), kind="stable")
    slots[order[: n_types - slots.sum()]] += 1
    return rng.permutation(np.repeat(values, slots))


def control_labels(labels: np.ndarray, types: np.ndarray, seed: int) -> np.ndarray:
    """The control label of every row: one random label per type (see the module docstring)."""
    kinds, inverse = np.unique(types, return_inverse=True)
    per_type = allocate(np.asarray(labels), len(kinds), np.random.default_rng(seed))
    return per_type[inverse]


def token_types(index: pd.DataFrame) -> np.ndarray:
    """Type id of each row of an activation index: its cell for feature tokens, its own id otherwise."""
    row = index["row"].to_numpy(np.int64)
    col = index["col"].to_numpy(np.int64)
    cell = row >= 0
    n_cols = int(col.max()) + 1 if cell.any() else 1
    types = np.where(cell, row * n_cols + col, 0)
    n_cells = int(types[cell].max()) + 1 if cell.any() else 0
    types[~cell] = n_cells + np.arange(int((~cell).sum()))
    return types
