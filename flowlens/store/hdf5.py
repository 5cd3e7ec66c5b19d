"""`RunWriter`: appends samples (traces or row tables) to an HDF5 run file, each flushed and marked complete last."""

from __future__ import annotations

import errno
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

import flowlens
from flowlens.errors import FlowlensError, UsageError, disk_full, no_space
from flowlens.hooks import FRAME_MEAN, group_rows, parse_hook
from flowlens.models.layout import TokenLayout
from flowlens.store import rows, schema
from flowlens.store.records import AnswerReadout, SampleTrace

WRITE_MARGIN = 256 * 1024  # bytes of HDF5 metadata and slack a sample write may need beyond its data


class RunWriter:
    """Writes one run file: root attributes once, then one group per sample, flushed sample by sample.

    A sample is written once, either as a trace (`write_sample`) or as row tables (`write_rows`), its
    group's `kind` attribute saying which. A sample (or failure) group is written unlinked, marked
    `complete=True`, flushed and synced, and only then linked under its id and flushed again: a process
    killed at any point, or a write refused half-way, leaves no entry of that sample, never a link to data
    that is not on disk. (Readers still skip incomplete groups, which older flowlens versions could leave,
    and `resume=True` deletes them.) A write refused for lack of room raises `DiskFullError`; the writer
    then writes nothing more. With `resume=True` an existing file is reopened; its config's `identity`
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
        self._refused: int | None = None  # errno of a write refused for lack of room: write nothing more
        if self.path.exists() and resume:
            self._file = _open(self.path, "r+")
            try:
                schema.check_format(self._file, self.path)
                _check_compatible(self._file, self.path, self.config)
                with self._writing():
                    self._drop_incomplete()
                    self._file.attrs["format_version"] = schema.FORMAT_VERSION  # what it may hold from now on
            except BaseException:
                self._close_file()
                raise
        elif self.path.exists() and not overwrite:
            raise FlowlensError(
                f"{self.path} already exists: resume it, choose another output, or overwrite it"
            )
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = _open(self.path, "w")
            try:
                with self._writing():
                    self._init_root()
            except BaseException:
                self._close_file()
                raise
        self._seq = 1 + max((int(g.attrs.get("seq", -1)) for g in self._entries()), default=-1)

    # ------------------------------------------------------------------ queries
    def completed_ids(self) -> list[str]:
        """Ids of the complete samples, in write order (a resuming caller skips these)."""
        entries = schema.entries(self._file[schema.SAMPLES]).items()
        done = sorted((int(g.attrs["seq"]), n, g) for n, g in entries if g.attrs.get("complete"))
        return [schema.group_id(group, name) for _, name, group in done]

    def failed(self) -> dict[str, str]:
        """Recorded failures: sample id -> reason, in write order."""
        entries = schema.entries(self._file[schema.FAILURES]).items()
        found = sorted((int(g.attrs["seq"]), n, g) for n, g in entries if "reason" in g.attrs)
        return {schema.group_id(group, name): str(group.attrs["reason"]) for _, name, group in found}

    # ------------------------------------------------------------------ writing
    def write_sample(self, trace: SampleTrace) -> None:
        """Store one sample's trace, mark it complete and flush; a failed write leaves no group behind."""
        arrays = _checked_arrays(trace)
        activations = _checked_activations(trace)
        size = sum(a.nbytes for a in arrays.values()) + sum(
            a.nbytes for groups in activations.values() for a in groups.values()
        )

        def fill(group: h5py.Group) -> None:
            self._fill_sample(
                group, trace.sample_id, schema.KIND_TRACE, trace.layout, trace.answer, trace.metadata
            )
            self._fill_trace(group, arrays, activations)

        self._commit(trace.sample_id, fill, size + len(trace.layout.to_json()))

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

        size = sum(_column_bytes(c) for cols in checked.values() for c in cols.values())
        self._commit(sample_id, fill, size + len(layout.to_json()))

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
        if _complete(samples, name):
            raise FlowlensError(
                f"sample {sample_id!r} is already complete in {self.path}; not recording a failure"
            )
        self._check_room(len(reason) + 4096)
        reason = schema.storable_text(str(reason))
        with self._writing():
            group = failures.create_group(None)  # linked once on disk, as a sample (see the class)
            group.attrs["id"] = schema.storable_text(sample_id)  # the link's name is the exact id
            group.attrs["seq"] = self._seq
            group.attrs["metadata"] = schema.to_json(dict(metadata or {}))
            group.attrs["written"] = _now()
            group.attrs["reason"] = reason if reason.strip() else "unknown error"  # without one: ignored
            self._flush()
            for parent in (samples, failures):
                if name in parent:
                    del parent[name]
            failures[name] = group
            self._seq += 1
            self._flush()

    def absorb(self, other: str | os.PathLike[str], batch: int = 64) -> tuple[int, int]:
        """Copy every complete sample and every failure of run file `other` (a rank's shard) that this file
        does not have as complete; return (samples, failures) copied. Groups are copied `batch` at a time
        under temporary names, flushed, then renamed and flushed: a merge stopped half-way leaves no
        half-copied sample (and costs two syncs per batch, not per sample)."""
        copied = [0, 0]
        with h5py.File(other, "r", locking=False) as source:
            for kind, index in ((schema.SAMPLES, 0), (schema.FAILURES, 1)):
                target = self._file[kind]
                todo = []
                for name, group in schema.entries(source[kind]).items():
                    usable = group.attrs.get("complete") if index == 0 else "reason" in group.attrs
                    if not usable or _complete(self._file[schema.SAMPLES], name):
                        continue
                    if index == 1 and name in self._file[schema.FAILURES]:
                        continue  # already recorded
                    todo.append((name, group))
                for first in range(0, len(todo), batch):
                    chunk = todo[first : first + batch]
                    self._check_room(sum(_group_bytes(group) for _, group in chunk))
                    with self._writing():
                        for name, group in chunk:
                            temporary = f"{schema.TEMPORARY}{name}"
                            if temporary in target:
                                del target[temporary]
                            source.copy(group, target, name=temporary)
                            target[temporary].attrs["seq"] = self._seq
                            self._seq += 1
                        self._flush()
                        for name, _ in chunk:
                            for parent in (self._file[schema.SAMPLES], self._file[schema.FAILURES]):
                                if name in parent:
                                    del parent[name]
                            target.move(f"{schema.TEMPORARY}{name}", name)
                        self._flush()
                    copied[index] += len(chunk)
        return copied[0], copied[1]

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Flush and close the file (idempotent); after a `DiskFullError`, close it without raising again."""
        if not self._file.id.valid:
            return
        try:
            if self._refused is None:
                with self._writing():
                    self._flush()
        finally:
            self._close_file()

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
        return [
            *schema.entries(self._file[schema.SAMPLES]).values(),
            *schema.entries(self._file[schema.FAILURES]).values(),
        ]

    def _drop_incomplete(self) -> None:
        """Delete incomplete samples and failures without a reason; refuse a file with links to nothing."""
        samples, failures = self._file[schema.SAMPLES], self._file[schema.FAILURES]
        dead = [
            name for parent in (samples, failures) for name in parent if schema.entry(parent, name) is None
        ]
        if dead:  # HDF5 can neither delete them nor keep new data from landing where they point
            raise FlowlensError(
                f"cannot resume {self.path}: {len(dead)} entries ({', '.join(dead[:3])}) point at data that "
                "never reached the disk (a write cut short); its finished samples still open: start a new run"
            )
        for parent in (samples, failures):  # groups a merge was copying in when it stopped
            for name in [n for n in parent if n.startswith(schema.TEMPORARY)]:
                del parent[name]
        for name, group in schema.entries(samples).items():
            if not group.attrs.get("complete", False):
                del samples[name]
        for name, group in schema.entries(failures).items():
            if "reason" not in group.attrs:
                del failures[name]
        self._flush()

    def _commit(self, sample_id: str, fill: Callable[[h5py.Group], None], size: int = 0) -> None:
        """Let `fill` write an unlinked group, mark it complete, flush, then link it under the sample's id and flush.

        A write that fails (or a process killed) before the link leaves no entry: the group is never reachable.
        """
        name = schema.escape_id(sample_id)
        samples, failures = self._file[schema.SAMPLES], self._file[schema.FAILURES]
        if _complete(samples, name):
            raise FlowlensError(f"sample {sample_id!r} is already in {self.path}")
        self._check_room(size)
        with self._writing():
            group = samples.create_group(None)
            fill(group)
            group.attrs["complete"] = True
            self._flush()  # all of the sample is on disk before a link leads to it
            for parent in (samples, failures):  # an incomplete group, or a failure retried: it worked
                if name in parent:
                    del parent[name]
            samples[name] = group
            self._seq += 1
            self._flush()

    def _check_room(self, size: int) -> None:
        """Refuse a write of about `size` bytes before HDF5 starts it when the disk (or the file size limit)
        cannot take it: HDF5 recovers badly from a write refused half-way (see `_writing`), so this is the
        usual path to a `DiskFullError`; `_writing` remains for a disk that fills during the write."""
        if self._refused is not None:
            raise disk_full(self.path, self._refused)
        needed = size + WRITE_MARGIN
        stats = os.statvfs(self.path.parent)
        if needed > stats.f_bavail * stats.f_frsize:
            raise disk_full(self.path, errno.ENOSPC)
        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
        if (
            limit not in (-1, getattr(resource, "RLIM_INFINITY", -1))
            and self.path.stat().st_size + needed > limit
        ):
            self._refused = errno.EFBIG
            raise disk_full(self.path, errno.EFBIG)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Raise the write errors h5py only reports when it closes a dataset; one refused for lack of room is a `DiskFullError`."""
        if self._refused is not None:
            raise disk_full(self.path, self._refused)
        ignored: list[BaseException] = []
        try:
            with _h5py_reports(ignored):
                yield
            if ignored:
                raise ignored[0]
        except Exception as exc:
            code = next(filter(None, map(no_space, [*ignored, exc])), None)
            if code is None:
                raise
            self._refused = code
            self._freeze()
            raise disk_full(self.path, code) from exc

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
        group.attrs["id"] = schema.storable_text(sample_id)  # the group's name is the exact id
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
        for name, (_, axes) in schema.OPTIONAL_ARRAYS.items():
            if name in arrays:
                data = arrays.pop(name)  # a 1-D array (pixel_novelty) is one chunk, not one per element
                _create(group, name, data, axes, lead=data.shape[0] if data.ndim == 1 else 1)
        if schema.THUMBNAILS in arrays:
            thumbs = arrays.pop(schema.THUMBNAILS)
            _create(group, schema.THUMBNAILS, thumbs, schema.THUMBNAIL_AXES, lead=thumbs.shape[0])
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

    def _freeze(self) -> None:
        """After a write refused half-way, send what HDF5 still writes (on closing) to the null device.

        The file keeps what reached it before: samples linked only once on disk. A superblock or link
        written now could point past the data the refused writes lost, and the file would not reopen.
        """
        null = os.open(os.devnull, os.O_RDWR)
        try:
            os.dup2(null, self._file.id.get_vfd_handle())
        finally:
            os.close(null)

    def _close_file(self) -> None:
        """Close the file; after a refused write, the errors of the writes HDF5 retries on closing are dropped."""
        if self._refused is None:
            self._file.close()
            return
        try:
            with _h5py_reports([]):
                self._file.close()
        except Exception:
            pass  # what could not be written is left incomplete: readers skip it, a resume redoes it


@contextmanager
def _h5py_reports(into: list[BaseException]) -> Iterator[None]:
    """Collect, instead of printing, the errors h5py meets while closing an object (a write that failed).

    h5py cannot raise them: it prints them (`sys.excepthook`) and passes them to `sys.unraisablehook`.
    Anything else goes to the hooks as before.
    """
    hooks = sys.excepthook, sys.unraisablehook

    def printed(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
        if not any("h5py" in frame.filename for frame in traceback.extract_tb(tb)):
            hooks[0](kind, value, tb)

    def unraisable(report: Any) -> None:
        if "h5py" in repr(report.object) and isinstance(report.exc_value, Exception):
            into.append(report.exc_value)
        else:
            hooks[1](report)

    sys.excepthook, sys.unraisablehook = printed, unraisable
    try:
        yield
    finally:
        sys.excepthook, sys.unraisablehook = hooks


def _complete(parent: h5py.Group, name: str) -> bool:
    """Whether `parent[name]` opens and is marked complete."""
    group = schema.entry(parent, name)
    return group is not None and bool(group.attrs.get("complete", False))


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
    optional = {
        "received_attention": (n_layers, n_heads, 3, n_video),
        "rollout": (n_layers, 4, n_video),
        "value_norm": (n_layers, n_video),
        "pixel_novelty": (n_video,),
    }
    for name, shape in optional.items():
        if getattr(trace, name, None) is not None:
            dtype = schema.OPTIONAL_ARRAYS[name][0]
            arrays[name] = _cast(trace.sample_id, name, getattr(trace, name), dtype, shape)
    for layer, value in trace.resid_video.items():
        if not 0 <= int(layer) < n_layers:
            raise ValueError(f"sample {trace.sample_id}: resid_video layer {layer} is not in [0, {n_layers})")
        key = f"{schema.RESID_VIDEO}/{int(layer)}"
        arrays[key] = _cast(trace.sample_id, key, value, schema.RESID_VIDEO_DTYPE, (n_video, d_model))
    arrays[schema.PROBS] = _checked_probs(trace.sample_id, trace.answer)
    if trace.thumbnails is not None:
        thumbs = np.asarray(trace.thumbnails)
        if thumbs.dtype != np.uint8 or thumbs.ndim != 4 or thumbs.shape[-1] != 3:
            raise ValueError(f"sample {trace.sample_id}: thumbnails must be (frames, h, w, 3) uint8")
        arrays[schema.THUMBNAILS] = thumbs
    return arrays


def _group_bytes(group: h5py.Group) -> int:
    """Stored bytes of every dataset under a group (what copying it writes, about)."""
    sizes: list[int] = []
    group.visititems(
        lambda name, item: (
            sizes.append(item.id.get_storage_size()) if isinstance(item, h5py.Dataset) else None
        )
    )
    return sum(sizes)


def _column_bytes(column: np.ndarray) -> int:
    """Bytes a row-table column takes (strings counted by their length)."""
    if column.dtype == object:
        return sum(len(str(value).encode()) + 16 for value in column)
    return int(column.nbytes)


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
