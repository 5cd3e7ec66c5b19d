"""`RunWriter`: appends samples (traces or row tables) to an HDF5 run file, each flushed and marked complete last."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

import flowlens
from flowlens.errors import FlowlensError, UsageError
from flowlens.hooks import FRAME_MEAN, group_rows, parse_hook
from flowlens.models.layout import TokenLayout
from flowlens.store import rows, schema
from flowlens.store.records import AnswerReadout, SampleTrace


class RunWriter:
    """Writes one run file: root attributes once, then one group per sample, flushed sample by sample.

    A sample is written once, either as a trace (`write_sample`) or as row tables (`write_rows`), its
    group's `kind` attribute saying which. A sample group gets `complete=True` as its last attribute,
    followed by a flush (and fsync): a killed process leaves at most one incomplete group, which readers
    skip and `resume=True` deletes. With `resume=True` an existing file is reopened; its config's `identity`
    (everything that changes a number) must equal `config["identity"]`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        config: Mapping[str, Any],
        model_info: Mapping[str, Any],
        resume: bool = False,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.config = schema.normalized(dict(config))
        self.model_info = schema.normalized(dict(model_info))
        if self.path.exists() and resume:
            self._file = _open(self.path, "r+")
            try:
                schema.check_format(self._file, self.path)
                _check_compatible(self._file, self.path, self.config)
                self._drop_incomplete()
                self._file.attrs["format_version"] = schema.FORMAT_VERSION  # what it may hold from now on
            except BaseException:
                self._file.close()
                raise
        elif self.path.exists() and not overwrite:
            raise FlowlensError(
                f"{self.path} already exists: resume it, choose another output, or overwrite it"
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = _open(self.path, "w")
            self._init_root()
        self._seq = 1 + max((int(g.attrs.get("seq", -1)) for g in self._entries()), default=-1)

    # ------------------------------------------------------------------ queries
    def completed_ids(self) -> list[str]:
        """Ids of the complete samples, in write order (a resuming caller skips these)."""
        groups = [g for g in self._file[schema.SAMPLES].values() if g.attrs.get("complete", False)]
        return [str(g.attrs["id"]) for g in sorted(groups, key=lambda g: int(g.attrs["seq"]))]

    def failed(self) -> dict[str, str]:
        """Recorded failures: sample id -> reason, in write order."""
        groups = [g for g in self._file[schema.FAILURES].values() if "reason" in g.attrs]
        return {
            str(g.attrs["id"]): str(g.attrs["reason"])
            for g in sorted(groups, key=lambda g: int(g.attrs["seq"]))
        }

    # ------------------------------------------------------------------ writing
    def write_sample(self, trace: SampleTrace) -> None:
        """Store one sample's trace, mark it complete and flush; a failed write leaves no group behind."""
        arrays = _checked_arrays(trace)
        activations = _checked_activations(trace)

        def fill(group: h5py.Group) -> None:
            self._fill_sample(
                group, trace.sample_id, schema.KIND_TRACE, trace.layout, trace.answer, trace.metadata
            )
            self._fill_trace(group, arrays, activations)

        self._commit(trace.sample_id, fill)

    def write_rows(
        self,
        sample_id: str,
        layout: TokenLayout,
        answer: AnswerReadout,
        table: str | Mapping[str, Mapping[str, np.ndarray | Sequence[Any]]],
        columns: Mapping[str, np.ndarray | Sequence[Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Store one sample as row tables (e.g. its knockout sweep) with its layout, clean answer and metadata.

        `table, columns` is one table; a mapping {table: columns} (and `columns=None`) stores several. Columns
        are equal-length 1-D str/int/float/bool values (else a FlowlensError); like `write_sample`, the group
        is marked complete last and flushed, and a failed write leaves no group behind.
        """
        tables = dict(table) if isinstance(table, Mapping) else {table: columns or {}}
        checked = {name: rows.checked_columns(name, cols) for name, cols in tables.items()}
        probs = _checked_probs(sample_id, answer)

        def fill(group: h5py.Group) -> None:
            self._fill_sample(group, sample_id, schema.KIND_ROWS, layout, answer, dict(metadata or {}))
            _create(group, schema.PROBS, probs, ("option",))
            stored = group.create_group(schema.TABLES_GROUP)
            for name, cols in checked.items():
                rows.write_table(stored, name, cols)

        self._commit(sample_id, fill)

    def write_run_table(self, table: str, columns: Mapping[str, np.ndarray | Sequence[Any]]) -> None:
        """Store (or replace) a table of the whole run, not of one sample (e.g. probe accuracies per layer)."""
        checked = rows.checked_columns(table, columns)
        tables = self._file.require_group(schema.RUN_TABLES_GROUP)
        if table in tables:
            del tables[table]
        rows.write_table(tables, table, checked)
        self._flush()

    def write_run_array(self, name: str, data: np.ndarray) -> None:
        """Store (or replace) an array of the whole run, e.g. fitted lens translators (`run_arrays/<name>`)."""
        if not isinstance(name, str) or not name or schema.escape_id(name) != name:
            raise FlowlensError(f"a run array name is letters, digits, '_' and '-', got {name!r}")
        array = np.ascontiguousarray(np.asarray(data))
        if array.dtype.kind not in "biuf":
            raise FlowlensError(f"run array {name!r} must hold numbers, got dtype {array.dtype}")
        arrays = self._file.require_group(schema.RUN_ARRAYS_GROUP)
        if name in arrays:
            del arrays[name]
        _create(arrays, name, array, tuple(f"axis{i}" for i in range(array.ndim)))
        self._flush()

    def write_failure(self, sample_id: str, reason: str, metadata: Mapping[str, Any] | None = None) -> None:
        """Record that `sample_id` failed and why; completed samples are never touched (retried on resume)."""
        name = schema.escape_id(sample_id)
        samples, failures = self._file[schema.SAMPLES], self._file[schema.FAILURES]
        if name in samples and samples[name].attrs.get("complete", False):
            raise FlowlensError(
                f"sample {sample_id!r} is already complete in {self.path}; not recording a failure"
            )
        if name in samples:
            del samples[name]
        if name in failures:
            del failures[name]
        group = failures.create_group(name)
        group.attrs["id"] = sample_id
        group.attrs["seq"] = self._seq
        group.attrs["metadata"] = schema.to_json(dict(metadata or {}))
        group.attrs["written"] = _now()
        group.attrs["reason"] = str(reason) or "unknown error"  # last: a failure without a reason is ignored
        self._seq += 1
        self._flush()

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._file.id.valid:
            self._flush()
            self._file.close()

    @property
    def closed(self) -> bool:
        return not self._file.id.valid

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _init_root(self) -> None:
        attrs = self._file.attrs
        attrs["format"] = schema.FORMAT
        attrs["format_version"] = schema.FORMAT_VERSION
        attrs["config"] = schema.to_json(self.config)
        attrs["model_info"] = schema.to_json(self.model_info)
        attrs["model"] = str(self.model_info.get("model") or self.config.get("model") or "")
        attrs["revision"] = str(self.model_info.get("revision") or self.config.get("revision") or "")
        attrs["flowlens_version"] = flowlens.__version__
        attrs["created"] = _now()
        self._file.create_group(schema.SAMPLES)
        self._file.create_group(schema.FAILURES)
        self._flush()

    def _entries(self) -> list[h5py.Group]:
        return [*self._file[schema.SAMPLES].values(), *self._file[schema.FAILURES].values()]

    def _drop_incomplete(self) -> None:
        samples = self._file[schema.SAMPLES]
        for name in [n for n, g in samples.items() if not g.attrs.get("complete", False)]:
            del samples[name]
        failures = self._file[schema.FAILURES]
        for name in [n for n, g in failures.items() if "reason" not in g.attrs]:
            del failures[name]
        self._flush()

    def _commit(self, sample_id: str, fill: Callable[[h5py.Group], None]) -> None:
        """Create the sample's group, let `fill` write it, then mark it complete and flush; on error, delete it."""
        name = schema.escape_id(sample_id)
        samples = self._file[schema.SAMPLES]
        if name in samples:
            if samples[name].attrs.get("complete", False):
                raise FlowlensError(f"sample {sample_id!r} is already in {self.path}")
            del samples[name]
        group = samples.create_group(name)
        try:
            fill(group)
        except BaseException:
            del samples[name]
            self._flush()
            raise
        group.attrs["complete"] = True
        if name in self._file[schema.FAILURES]:  # an earlier failure of this sample was retried successfully
            del self._file[schema.FAILURES][name]
        self._seq += 1
        self._flush()

    def _fill_sample(
        self,
        group: h5py.Group,
        sample_id: str,
        kind: str,
        layout: TokenLayout,
        answer: AnswerReadout,
        metadata: Mapping[str, Any],
    ) -> None:
        """What every sample has: id, order, kind, metadata, the clean answer's attributes and the layout."""
        group.attrs["id"] = sample_id
        group.attrs["seq"] = self._seq
        group.attrs["kind"] = kind
        group.attrs["metadata"] = schema.to_json(dict(metadata))
        group.attrs["letters"] = json.dumps(list(answer.letters))
        group.attrs["predicted"] = str(answer.predicted)
        group.attrs["answer"] = json.dumps(answer.answer)
        group.attrs["correct"] = json.dumps(None if answer.correct is None else bool(answer.correct))
        group.attrs["predicted_letter"] = str(answer.predicted_letter)
        group.attrs["correct_letter"] = json.dumps(
            None if answer.correct_letter is None else bool(answer.correct_letter)
        )
        group.attrs["written"] = _now()
        data = np.frombuffer(layout.to_json().encode(), dtype=np.uint8)
        group.create_dataset(schema.LAYOUT, data=data, chunks=True, **schema.COMPRESSION)

    def _fill_trace(
        self, group: h5py.Group, arrays: dict[str, np.ndarray], activations: dict[str, dict[str, np.ndarray]]
    ) -> None:
        """A trace's checked arrays: probs, the reductions, `resid_video/<layer>` and `activations/<hook>/<group>`."""
        _create(group, schema.PROBS, arrays.pop(schema.PROBS), ("option",))
        for name, (_, axes) in schema.ARRAYS.items():
            _create(group, name, arrays.pop(name), axes)
        video = group.create_group(schema.RESID_VIDEO)
        for key in sorted(arrays):
            _create(
                video, key.split("/", 1)[1], arrays[key], schema.RESID_VIDEO_AXES, lead=arrays[key].shape[0]
            )
        stored = group.create_group(schema.ACTIVATIONS)
        for name, groups in activations.items():
            per_hook = stored.create_group(name)
            for token_group, values in groups.items():
                _create(
                    per_hook,
                    token_group,
                    values,
                    schema.ACTIVATION_AXES,
                    lead=values.shape[0],
                    compression=schema.ACTIVATION_COMPRESSION,
                )

    def _flush(self) -> None:
        self._file.flush()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _create(
    group: h5py.Group,
    name: str,
    data: np.ndarray,
    axes: tuple[str, ...],
    lead: int = 1,
    compression: dict[str, Any] | None = None,
) -> None:
    """One chunked, compressed dataset (gzip unless told otherwise) with its axis names in the `axes` attribute."""
    chunks = schema.chunk_shape(data.shape, data.dtype.itemsize, lead=lead)
    options = {"chunks": chunks, **(compression or schema.COMPRESSION)} if chunks else {}
    group.create_dataset(name, data=data, **options).attrs["axes"] = list(axes)


def _checked_arrays(trace: SampleTrace) -> dict[str, np.ndarray]:
    """The trace's arrays cast to their stored dtypes, after checking every shape against the layout."""
    layout = trace.layout
    n_layers, n_heads, d_model = layout.n_layers, layout.n_heads, layout.d_model
    n_seg, n_frames, n_video = len(layout.partition), layout.n_frames, layout.n_video
    n_question = int(layout["question"].size)
    expected = {
        "segment_flow": (n_layers, n_heads, n_seg, n_seg),
        "frame_flow": (n_layers, n_heads, n_frames, n_frames),
        "last_to_video": (n_layers, n_heads, n_video),
        "question_to_video": (n_layers, n_question, n_video),
        "resid_last": (n_layers, d_model),
        "resid_frame_mean": (n_layers, n_frames, d_model),
    }
    arrays: dict[str, np.ndarray] = {}
    for name, shape in expected.items():
        arrays[name] = _cast(trace.sample_id, name, getattr(trace, name), schema.ARRAYS[name][0], shape)
    for layer, value in trace.resid_video.items():
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"sample {trace.sample_id}: resid_video layer {layer} is not in [0, {n_layers})")
        key = f"{schema.RESID_VIDEO}/{int(layer)}"
        arrays[key] = _cast(trace.sample_id, key, value, schema.RESID_VIDEO_DTYPE, (n_video, d_model))
    arrays[schema.PROBS] = _checked_probs(trace.sample_id, trace.answer)
    return arrays


def _checked_activations(trace: SampleTrace) -> dict[str, dict[str, np.ndarray]]:
    """The trace's activations after checking names, dtypes and shapes against the layout."""
    layout = trace.layout
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, groups in trace.activations.items():
        layer, _ = parse_hook(name)
        if not 0 <= layer < layout.n_layers:
            raise ValueError(
                f"sample {trace.sample_id}: activation {name} is not in [0, {layout.n_layers}) layers"
            )
        for group, values in groups.items():
            if group != FRAME_MEAN and group not in layout:
                raise ValueError(f"sample {trace.sample_id}: activation group {group!r} is not in the layout")
            array = np.asarray(values)
            if array.dtype not in (np.float16, np.float32):
                raise ValueError(f"sample {trace.sample_id}: {name}@{group} is {array.dtype}, not float16/32")
            shape = (group_rows(layout, group), layout.d_model)
            out.setdefault(name, {})[group] = _cast(
                trace.sample_id, f"{name}@{group}", array, array.dtype, shape
            )
    return out


def _checked_probs(sample_id: str, answer: AnswerReadout) -> np.ndarray:
    """The answer's option probabilities as float32, after checking them and the letter prediction against its letters."""
    letters = list(answer.letters)
    probs = _cast(sample_id, "answer.probs", answer.probs, "float32", (len(letters),))
    if letters and answer.predicted_letter not in letters:
        raise ValueError(
            f"sample {sample_id}: predicted letter {answer.predicted_letter!r} is not in {letters}"
        )
    return probs


def _cast(sample_id: str, name: str, value: Any, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value)
    if array.shape != shape:
        raise ValueError(f"sample {sample_id}: {name} has shape {array.shape}, the layout implies {shape}")
    return np.ascontiguousarray(array, dtype=dtype)


def _open(path: Path, mode: str) -> h5py.File:
    """Open for writing; another live writer (HDF5 file lock) or a damaged file is a one-line FlowlensError."""
    try:
        if mode == "w":  # freed space is never reused, so data the last flush points to is never overwritten
            return h5py.File(path, "w", fs_strategy="aggregate")
        return h5py.File(path, mode)
    except (OSError, BlockingIOError) as exc:
        if "lock" in str(exc).lower():
            raise FlowlensError(f"{path} is open for writing by another process") from exc
        raise FlowlensError(f"cannot open {path} as an HDF5 run file: {exc}") from exc


def _check_compatible(file: h5py.File, path: Path, config: dict[str, Any]) -> None:
    """Raise unless the stored run's identity (every setting that changes a number) equals the resuming one's."""
    stored = json.loads(file.attrs["config"]).get("identity")
    if stored is None:
        raise FlowlensError(
            f"cannot resume {path}: it was written by an older flowlens that did not record every setting "
            "that changes a number; start a new run"
        )
    diffs = [
        f"{key}: {old!r} in the file, {new!r} now"
        for key, old, new in _differences(stored, config.get("identity", {}))
    ]
    if diffs:
        raise UsageError(
            f"cannot resume {path}: it was written with different settings ({'; '.join(diffs)}); "
            "use the original settings or a new output folder"
        )


def _differences(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every leaf where two JSON-like values differ (missing = None)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
