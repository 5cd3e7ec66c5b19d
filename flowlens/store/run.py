"""`open_run` / `Run`: read a run file's complete samples back as `SampleTrace`s, row tables and tidy tables."""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout
from flowlens.store import schema
from flowlens.store.records import AnswerReadout, SampleTrace
from flowlens.store.rows import read_table


def run_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The flowlens run files directly in `folder` (`trace.h5`, `knockout.h5`, ...), sorted by name."""
    found = []
    for path in sorted(Path(folder).glob("*.h5")):
        try:
            with h5py.File(path, "r", locking=False) as file:
                if file.attrs.get("format") == schema.FORMAT:
                    found.append(path)
        except OSError:
            continue
    return found


def open_run(path: str | os.PathLike[str], analysis: str | None = None) -> Run:
    """Open a run file, or the folder holding it, read-only (works while a writer still appends).

    A folder may hold several runs (a trace and a knockout written to one `--out`): name the one to open
    with `analysis="knockout"` (or open the file itself).
    """
    if Path(path).is_dir():
        found = run_files(path)
        if analysis is not None:
            found = [p for p in found if p.stem == analysis]
        if len(found) != 1:
            names = ", ".join(p.name for p in run_files(path)) or "none"
            hint = " (open one: open_run(folder, analysis=...) or the file itself)" if len(found) > 1 else ""
            wanted = f"{analysis}.h5" if analysis else "one run file"
            raise FlowlensError(f"expected {wanted} in {path}; run files there: {names}{hint}")
        path = found[0]
    return Run(path)


class Run:
    """A run file opened read-only: settings, complete samples in write order, failures and tables.

    Each sample is a trace (`sample`, `array`) or row tables (`rows`); both have a layout, answer and
    metadata. The sample list is read when the file is opened; open it again to see samples a live writer adds.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FlowlensError(f"no run file at {self.path}")
        self._file = _open_read(self.path)
        try:
            schema.check_format(self._file, self.path)
            self._groups, self._kinds = _complete_groups(self._file[schema.SAMPLES])
        except BaseException:
            self._file.close()
            raise
        self._layouts: dict[str, TokenLayout] = {}

    # ------------------------------------------------------------------ settings
    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved run configuration the writer stored."""
        return json.loads(self._file.attrs["config"])

    @cached_property
    def model_info(self) -> dict[str, Any]:
        """Model id, revision and whatever else the writer was given about the model."""
        return json.loads(self._file.attrs["model_info"])

    @property
    def flowlens_version(self) -> str:
        return str(self._file.attrs["flowlens_version"])

    @property
    def created(self) -> str:
        """ISO-8601 UTC time the run file was created."""
        return str(self._file.attrs["created"])

    # ------------------------------------------------------------------- samples
    @property
    def samples(self) -> list[str]:
        """Ids of the complete samples, in write order."""
        return list(self._groups)

    @property
    def traced(self) -> list[str]:
        """Ids of the complete samples that hold a trace, in write order."""
        return [sample for sample, kind in self._kinds.items() if kind == schema.KIND_TRACE]

    def kind(self, sample_id: str) -> str:
        """What a complete sample holds: `trace` or `rows`."""
        self._group(sample_id)
        return self._kinds[sample_id]

    @cached_property
    def row_tables(self) -> dict[str, list[str]]:
        """Row table name -> ids of the samples that hold it (write order), tables in order of first appearance."""
        out: dict[str, list[str]] = {}
        for sample, kind in self._kinds.items():
            if kind == schema.KIND_ROWS:
                for table in self._group(sample)[schema.TABLES_GROUP]:
                    out.setdefault(table, []).append(sample)
        return out

    def rows(self, sample_id: str, table: str) -> pd.DataFrame:
        """One sample's row table (e.g. `knockout`) as stored, without the `sample` and `task` columns."""
        group = self._group(sample_id)
        tables = group.get(schema.TABLES_GROUP, {})
        if table not in tables:
            held = ", ".join(tables) or f"none: it is a {self._kinds[sample_id]}"
            raise FlowlensError(f"sample {sample_id!r} has no row table {table!r} (its row tables: {held})")
        return read_table(tables[table])

    @cached_property
    def failures(self) -> dict[str, str]:
        """Failed samples: id -> reason, in write order."""
        groups = self._file[schema.FAILURES]
        return {sample: str(groups[name].attrs["reason"]) for sample, name in self._failure_groups.items()}

    def failure_metadata(self, sample_id: str) -> dict[str, Any]:
        """The metadata recorded with a failure (e.g. its task)."""
        if sample_id not in self._failure_groups:
            raise FlowlensError(f"no failure recorded for {sample_id!r} in {self.path}")
        return json.loads(self._file[schema.FAILURES][self._failure_groups[sample_id]].attrs["metadata"])

    @cached_property
    def _failure_groups(self) -> dict[str, str]:
        """Failed sample id -> its group's name, in write order (a failure without a reason is not one)."""
        groups = schema.entries(self._file[schema.FAILURES])
        found = sorted((int(g.attrs["seq"]), n, g) for n, g in groups.items() if "reason" in g.attrs)
        return {schema.group_id(group, name): name for _, name, group in found}

    def layout(self, sample_id: str) -> TokenLayout:
        """The sample's `TokenLayout` (cached)."""
        if sample_id not in self._layouts:
            raw = self._group(sample_id)[schema.LAYOUT][()]
            self._layouts[sample_id] = TokenLayout.from_json(raw.tobytes().decode())
        return self._layouts[sample_id]

    def metadata(self, sample_id: str) -> dict[str, Any]:
        """The sample's metadata (task, question, ... as the writer got them)."""
        return json.loads(self._group(sample_id).attrs["metadata"])

    def answer(self, sample_id: str) -> AnswerReadout:
        """Option letters, their probabilities, the prediction and the ground truth."""
        group = self._group(sample_id)
        return AnswerReadout(
            letters=json.loads(group.attrs["letters"]),
            probs=group[schema.PROBS][()],
            predicted=str(group.attrs["predicted"]),
            answer=json.loads(group.attrs["answer"]),
            correct=json.loads(group.attrs["correct"]),
            predicted_letter=str(group.attrs.get("predicted_letter", "")),
            correct_letter=json.loads(group.attrs.get("correct_letter", "null")),
        )

    def array(self, sample_id: str, name: str) -> np.ndarray:
        """One stored array (`segment_flow`, `frame_flow`, ..., or `resid_video/<layer>`) without the rest."""
        group = self._trace_group(sample_id)
        if name not in group or not isinstance(group[name], h5py.Dataset):
            valid = [
                *self.arrays(sample_id),
                *(f"{schema.RESID_VIDEO}/{k}" for k in group[schema.RESID_VIDEO]),
            ]
            raise FlowlensError(f"sample {sample_id!r} has no array {name!r}; arrays: {', '.join(valid)}")
        return group[name][()]

    def arrays(self, sample_id: str) -> list[str]:
        """Names of the per-sample arrays a traced sample holds: every `schema.ARRAYS` name and the optional
        ones its trace stored (`received_attention`, `rollout`, `value_norm`, `pixel_novelty`)."""
        group = self._trace_group(sample_id)
        return [*schema.ARRAYS, *(name for name in schema.OPTIONAL_ARRAYS if name in group)]

    def thumbnails(self, sample_id: str) -> np.ndarray | None:
        """The sample's stored frame thumbnails (n, h, w, 3) uint8, or None (traced with --thumbnails 0)."""
        group = self._trace_group(sample_id)
        return group[schema.THUMBNAILS][()] if schema.THUMBNAILS in group else None

    def activations(self, hook: str, group: str = "last", samples: list[str] | None = None) -> Any:
        """One hook's stored rows at one token group, across samples (read lazily, this hook only).

        Returns `Activations(values (N, d_model), index DataFrame[sample, position, frame, row, col])`;
        see `flowlens.store.activations`.
        """
        from flowlens.store.activations import read_activations

        return read_activations(self, hook, group, samples)

    def activation_table(
        self, hook: str, group: str = "last", samples: list[str] | None = None
    ) -> pd.DataFrame:
        """`activations` as a tidy table: sample, position, frame, row, col, then d0, d1, ..."""
        from flowlens.store.activations import activation_table

        return activation_table(self, hook, group, samples)

    def activation_names(self, sample_id: str | None = None) -> list[tuple[str, str]]:
        """(hook, group) pairs a traced sample holds (default: the first one)."""
        from flowlens.store.activations import activation_names

        return activation_names(self, sample_id)

    def resid_video_layers(self, sample_id: str) -> list[int]:
        """Layers at which every video token's residual was stored for this sample."""
        return sorted(int(k) for k in self._trace_group(sample_id)[schema.RESID_VIDEO])

    def sample(self, sample_id: str) -> SampleTrace:
        """The full `SampleTrace` of one complete traced sample, as it was written."""
        group = self._trace_group(sample_id)
        arrays = {name: group[name][()] for name in schema.ARRAYS}
        arrays.update({name: group[name][()] for name in schema.OPTIONAL_ARRAYS if name in group})
        video = {int(k): v[()] for k, v in group[schema.RESID_VIDEO].items()}
        activations = {
            hook: {token_group: data[()] for token_group, data in per_hook.items()}
            for hook, per_hook in group.get(schema.ACTIVATIONS, {}).items()
        }
        return SampleTrace(
            sample_id=sample_id,
            layout=self.layout(sample_id),
            answer=self.answer(sample_id),
            resid_video=dict(sorted(video.items())),
            metadata=self.metadata(sample_id),
            activations=activations,
            thumbnails=self.thumbnails(sample_id),
            **arrays,
        )

    # -------------------------------------------------------------------- tables
    def tables(self) -> list[str]:
        """Names `table` accepts here: trace tables (unless every sample holds rows), answers, failures, row
        tables, tables derived from them, and tables of the whole run."""
        from flowlens.store.tables import derived_tables

        trace = (
            []
            if (self._kinds and not self.traced) or (not self._kinds and self.run_tables)
            else list(schema.TRACE_TABLES)
        )
        return [*trace, *schema.RUN_TABLES, *self.row_tables, *derived_tables(self), *self.run_tables]

    @cached_property
    def run_tables(self) -> list[str]:
        """Tables stored for the whole run rather than per sample (e.g. `probes`)."""
        return list(self._file.get(schema.RUN_TABLES_GROUP, {}))

    @cached_property
    def run_arrays(self) -> list[str]:
        """Arrays stored for the whole run (`RunWriter.write_run_array`, e.g. tuned-lens translators)."""
        return list(self._file.get(schema.RUN_ARRAYS_GROUP, {}))

    def run_array(self, name: str) -> np.ndarray:
        """One array of the whole run."""
        if name not in self.run_arrays:
            raise FlowlensError(
                f"{self.path} has no run array {name!r}; arrays: {', '.join(self.run_arrays) or 'none'}"
            )
        return self._file[schema.RUN_ARRAYS_GROUP][name][()]

    def table(self, name: str) -> pd.DataFrame:
        """A tidy table over the complete samples that have it; see docs/run-file.md for names and columns."""
        from flowlens.store.tables import build_table

        return build_table(self, name)

    # ----------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self._groups

    def __repr__(self) -> str:
        model = self.model_info.get("model", "?")
        return f"Run({str(self.path)!r}, model={model!r}, samples={len(self)}, failures={len(self.failures)})"

    def _trace_group(self, sample_id: str) -> h5py.Group:
        group = self._group(sample_id)
        if self._kinds[sample_id] != schema.KIND_TRACE:
            held = ", ".join(group[schema.TABLES_GROUP]) if schema.TABLES_GROUP in group else ""
            raise FlowlensError(
                f"sample {sample_id!r} holds row tables ({held}), not a trace: read them with Run.rows"
            )
        return group

    def _group(self, sample_id: str) -> h5py.Group:
        try:
            return self._file[schema.SAMPLES][self._groups[sample_id]]
        except KeyError:
            raise FlowlensError(
                f"no complete sample {sample_id!r} in {self.path} ({len(self._groups)} samples)"
            ) from None


def _open_read(path: Path) -> h5py.File:
    """Open without taking the HDF5 file lock, so a live writer neither blocks nor is blocked by readers."""
    try:
        return h5py.File(path, "r", locking=False)
    except OSError as exc:
        if "locking flag" not in str(exc):
            raise FlowlensError(f"cannot read {path} as an HDF5 run file: {exc}") from exc
    try:  # this process already holds the file open (e.g. a RunWriter): share that handle
        return h5py.File(path, "r")
    except OSError as exc:
        raise FlowlensError(f"cannot read {path} as an HDF5 run file: {exc}") from exc


def _complete_groups(samples: h5py.Group) -> tuple[dict[str, str], dict[str, str]]:
    """Sample id -> group name and id -> kind of every complete sample, in write order (incomplete ones skipped)."""
    found = sorted(
        (int(g.attrs["seq"]), n, g) for n, g in schema.entries(samples).items() if g.attrs.get("complete")
    )
    names = {schema.group_id(group, name): name for _, name, group in found}
    kinds = {schema.group_id(group, name): schema.sample_kind(group.attrs) for _, name, group in found}
    return names, kinds
