"""Reading stored activations lazily, one (hook, group) at a time across samples, with a per-row index.

`run.activations("blocks.3.hook_resid_post", group="video")` returns the stacked rows of every complete
traced sample that holds them, and an index saying where each row came from: `sample`, `position` (input
position; -1 for a `frame_mean` row), `frame` (frame group, -1 outside the video), `row`, `col` (spatial
cell; -1 where there is none). The summaries every trace keeps (`resid_last`, `resid_frame_mean`,
`resid_video/<layer>`) read the same way as `hook_resid_post` at `last`, `frame_mean` and `video_features`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flowlens.errors import FlowlensError
from flowlens.hooks import FRAME_MEAN, parse_hook
from flowlens.models.layout import TokenLayout
from flowlens.store import schema

if TYPE_CHECKING:
    import h5py

    from flowlens.store.run import Run

INDEX_COLUMNS = ["sample", "position", "frame", "row", "col"]
_SUMMARIES = {"last": "resid_last", FRAME_MEAN: "resid_frame_mean"}  # hook_resid_post rows every trace keeps


@dataclass
class Activations:
    """Stacked rows (N, d_model) of one hook at one group, and where each row came from."""

    hook: str
    group: str
    values: np.ndarray
    index: pd.DataFrame

    def __len__(self) -> int:
        return len(self.values)


def row_index(layout: TokenLayout, group: str) -> dict[str, np.ndarray]:
    """position, frame, row, col of each row a group contributes (see the module docstring)."""
    if group == FRAME_MEAN:
        n = layout.n_frames
        minus = np.full(n, -1, dtype=np.int64)
        return {
            "position": minus,
            "frame": np.arange(n, dtype=np.int64),
            "row": minus.copy(),
            "col": minus.copy(),
        }
    positions = np.asarray(layout[group], dtype=np.int64)
    frame = np.full(positions.size, -1, dtype=np.int64)
    for f, name in enumerate(layout.frame_groups):
        frame[np.isin(positions, layout[name])] = f
    row = np.full(positions.size, -1, dtype=np.int64)
    col = row.copy()
    features = layout["video_features"]
    at = np.searchsorted(features, positions)
    hit = (at < features.size) & (features[np.minimum(at, features.size - 1)] == positions)
    row[hit] = layout.video_cells[at[hit], 1]
    col[hit] = layout.video_cells[at[hit], 2]
    return {"position": positions, "frame": frame, "row": row, "col": col}


def _dataset(group: h5py.Group, hook: str, token_group: str) -> h5py.Dataset | None:
    """The stored rows of `hook` at `token_group` in one sample group, or None."""
    stored = group.get(f"{schema.ACTIVATIONS}/{hook}/{token_group}")
    if stored is not None:
        return stored
    layer, kind = parse_hook(hook)
    if kind != "hook_resid_post":
        return None
    if token_group in _SUMMARIES and _SUMMARIES[token_group] in group:
        return _LayerView(group[_SUMMARIES[token_group]], layer)
    if token_group == "video_features":
        return group.get(f"{schema.RESID_VIDEO}/{layer}")
    return None


class _LayerView:
    """Layer `layer` of a layer-major summary array (`resid_last` (L, D) or `resid_frame_mean` (L, F, D))."""

    def __init__(self, dataset: h5py.Dataset, layer: int):
        self.dataset, self.layer = dataset, layer

    def __getitem__(self, key: object) -> np.ndarray:
        rows = self.dataset[self.layer]
        return np.atleast_2d(rows)


def read_activations(run: Run, hook: str, group: str, samples: list[str] | None = None) -> Activations:
    """Every complete traced sample's rows of `hook` at `group` (those without them are skipped)."""
    parse_hook(hook)
    blocks, parts = [], []
    for sample in samples if samples is not None else run.traced:
        stored = _dataset(run._trace_group(sample), hook, group)
        if stored is None:
            continue
        values = stored[()]
        index = row_index(run.layout(sample), group)
        if values.shape[0] != index["position"].size:
            raise FlowlensError(
                f"sample {sample!r}: {hook}@{group} holds {values.shape[0]} rows, not {index['position'].size}"
            )
        blocks.append(values)
        parts.append(pd.DataFrame({"sample": sample, **index}))
    if not blocks:
        held = ", ".join(f"{h}@{g}" for h, g in activation_names(run)) or "none"
        raise FlowlensError(f"no sample of {run.path} holds {hook}@{group}; activations held: {held}")
    index = pd.concat(parts, ignore_index=True)
    index["sample"] = pd.Categorical(index["sample"], categories=list(dict.fromkeys(index["sample"])))
    return Activations(hook, group, np.concatenate(blocks), index[INDEX_COLUMNS])


def activation_names(run: Run, sample: str | None = None) -> list[tuple[str, str]]:
    """(hook, group) pairs stored with `sample` (default: the first traced sample), activations first."""
    samples = [sample] if sample is not None else run.traced[:1]
    out: list[tuple[str, str]] = []
    for sample_id in samples:
        group = run._trace_group(sample_id)
        for hook, per_hook in group.get(schema.ACTIVATIONS, {}).items():
            out += [(hook, token_group) for token_group in per_hook]
        n_layers = run.layout(sample_id).n_layers
        for token_group, name in _SUMMARIES.items():
            if name in group:
                out += [(f"blocks.{layer}.hook_resid_post", token_group) for layer in range(n_layers)]
        for layer in group.get(schema.RESID_VIDEO, {}):
            out.append((f"blocks.{layer}.hook_resid_post", "video_features"))
    return list(dict.fromkeys(out))


def activation_table(run: Run, hook: str, group: str, samples: list[str] | None = None) -> pd.DataFrame:
    """The rows as a tidy table: the index columns, then one column per dimension (`d0`, `d1`, ...)."""
    found = read_activations(run, hook, group, samples)
    values = pd.DataFrame(
        found.values.astype(np.float32), columns=[f"d{i}" for i in range(found.values.shape[1])]
    )
    return pd.concat([found.index, values], axis=1)
