"""Names, dtypes, axes and chunking of the HDF5 run file, shared by the writer and the reader (docs/run-file.md)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from flowlens.errors import FlowlensError

FORMAT = "flowlens-run"
FORMAT_VERSION = 2  # 2 added row samples (`kind="rows"`); version-1 files hold traces only and read unchanged

# The `kind` attribute of a sample group: what it holds (a group without one is a trace, as in version 1).
KIND_TRACE = "trace"
KIND_ROWS = "rows"

SAMPLES = "samples"
FAILURES = "failures"
RESID_VIDEO = "resid_video"
PROBS = "probs"
LAYOUT = "layout"
TABLES_GROUP = "tables"  # a rows sample's named tables: tables/<table>/<escaped column>
RUN_TABLES_GROUP = "run_tables"  # tables of the whole run (root level): run_tables/<table>/<escaped column>
RUN_ARRAYS_GROUP = "run_arrays"  # arrays of the whole run (root level), e.g. tuned-lens translators

# Tables every run has, tables built from traced samples, and the columns `Run.table` puts before row columns.
RUN_TABLES = ("answers", "failures")
TRACE_TABLES = ("frame_flow", "segment_flow", "flow_summary")
ROW_KEY_COLUMNS = ("sample", "task")

# Per-sample arrays: name -> (stored dtype, axis names). resid_video/<layer> is (video_token, d_model) float16.
ARRAYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "segment_flow": ("float32", ("layer", "head", "target", "source")),
    "frame_flow": ("float32", ("layer", "head", "target_frame", "source_frame")),
    "last_to_video": ("float32", ("layer", "head", "video_token")),
    "question_to_video": ("float32", ("layer", "question_token", "video_token")),
    "resid_last": ("float16", ("layer", "d_model")),
    "resid_frame_mean": ("float16", ("layer", "frame", "d_model")),
}
# Per-sample arrays a trace stores only when asked (trace options of the same name; see flowlens.pruning).
OPTIONAL_ARRAYS: dict[str, tuple[str, tuple[str, ...]]] = {
    "received_attention": ("float32", ("layer", "head", "query_set", "video_token")),
    "rollout": ("float32", ("layer", "query_set", "video_token")),
    "value_norm": ("float32", ("layer", "video_token")),
    "pixel_novelty": ("float32", ("video_token",)),
}
THUMBNAILS = "thumbnails"  # optional (frame, y, x, rgb) uint8: the sampled frames, shrunk, for the report
THUMBNAIL_AXES = ("frame", "y", "x", "rgb")
RESID_VIDEO_DTYPE = "float16"
RESID_VIDEO_AXES = ("video_token", "d_model")
ACTIVATIONS = "activations"  # activations/<hook name>/<group>: (rows, d_model) float16 or float32
ACTIVATION_AXES = ("row", "d_model")
# Activations are large and compress little: LZF (fast) with the byte shuffle, not gzip.
ACTIVATION_COMPRESSION = {"compression": "lzf", "shuffle": True}


MAX_CHUNK_BYTES = 1 << 20
COMPRESSION = {"compression": "gzip", "compression_opts": 4, "shuffle": True}

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def escape_id(sample_id: str) -> str:
    """HDF5 group name for a sample id: `[A-Za-z0-9_-]` kept, every other UTF-8 byte as %XX (so `/`, `.` are safe).

    Lone surrogates are encoded as UTF-8 would encode their code points, so every `str` has its own name.
    """
    if not isinstance(sample_id, str) or not sample_id:
        raise FlowlensError(f"sample id must be a non-empty string, got {sample_id!r}")
    return "".join(
        c if c in _SAFE else "".join(f"%{b:02X}" for b in c.encode("utf-8", "surrogatepass"))
        for c in sample_id
    )


def unescape_id(name: str) -> str:
    """The sample id `escape_id` turned into the group name `name` (its inverse)."""
    parts = name.split("%")
    data = bytearray(parts[0].encode("ascii"))
    for part in parts[1:]:
        data += bytes.fromhex(part[:2]) + part[2:].encode("ascii")
    return data.decode("utf-8", "surrogatepass")


def group_id(group: Any, name: str | None = None) -> str:
    """The sample id of a `/samples` or `/failures` group, read from its link `name` (default: the group's own
    name; the `id` attribute may be escaped)."""
    try:
        return unescape_id(name if name is not None else group.name.rsplit("/", 1)[1])
    except (ValueError, UnicodeDecodeError):  # not a name `escape_id` made
        return str(group.attrs["id"])


def storable_text(text: str) -> str:
    """`text` as an HDF5 string attribute can hold it: NUL written `\\x00`, lone surrogates `\\udXXX`."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def entry(parent: Any, name: str) -> Any | None:
    """`parent[name]` (a sample or failure group), or None where it is missing or the link leads nowhere.

    A write cut short (older flowlens versions, or damage) can leave a dead link, to an object that never
    reached the file: readers skip it as incomplete.
    """
    if name not in parent:
        return None
    try:
        return parent.get(name)
    except (KeyError, OSError, RuntimeError, ValueError):
        return None


TEMPORARY = "~"  # names of groups being copied in (a merge): never an escaped id, never read as a sample


def entries(parent: Any) -> dict[str, Any]:
    """Name -> group of every member of `parent` (`samples` or `failures`) that opens (see `entry`)."""
    found = {name: entry(parent, name) for name in parent if not name.startswith(TEMPORARY)}
    return {name: group for name, group in found.items() if group is not None}


def sample_kind(attrs: Any) -> str:
    """A sample group's kind from its attributes: `trace` when absent (version-1 files)."""
    return str(attrs.get("kind", KIND_TRACE))


def chunk_shape(
    shape: tuple[int, ...], itemsize: int, lead: int = 1, max_bytes: int = MAX_CHUNK_BYTES
) -> tuple[int, ...] | None:
    """Chunk of `lead` indices of the first (read) axis and whole other axes, halved from the left to fit `max_bytes`.

    Layer-major arrays use lead=1 (one layer per chunk); `resid_video` uses all rows. Returns None
    (contiguous, uncompressed) for empty or 0-d arrays, which HDF5 cannot chunk.
    """
    if not shape or 0 in shape:
        return None
    chunk = [min(max(lead, 1), shape[0]), *shape[1:]]
    axis = 0
    while math.prod(chunk) * itemsize > max_bytes and axis < len(chunk):
        if chunk[axis] > 1:
            chunk[axis] = math.ceil(chunk[axis] / 2)
        else:
            axis += 1
    return tuple(chunk)


def check_format(file: Any, path: Any) -> None:
    """Raise unless `file` (an open h5py.File) is a run file this flowlens can read."""
    if file.attrs.get("format") != FORMAT:
        raise FlowlensError(f"{path} is not a flowlens run file")
    version = int(file.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise FlowlensError(
            f"{path} has run-file format {version}; this flowlens reads up to {FORMAT_VERSION}: upgrade flowlens"
        )


def to_json(value: Any) -> str:
    """JSON text of a config/metadata value; numpy scalars and arrays become plain numbers and lists."""
    return json.dumps(value, default=_json_default, sort_keys=True)


def normalized(value: Any) -> Any:
    """`value` as it reads back from JSON, so tuples and lists (or numpy and Python numbers) compare equal."""
    return json.loads(to_json(value))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return str(value)
