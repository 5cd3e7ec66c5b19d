"""Multiple-choice video QA in JSONL: one JSON object per line, the on-disk format of every dataset.

Each line has `id`, `video` (a path relative to the JSONL's folder, or absolute), `question`,
`options` (list of texts) and `answer` (a letter or an option's text); `task` and any other keys
are kept in `Sample.metadata` (a `metadata` object is merged into it). A line that cannot be used
becomes a `LoadFailure` with its line number and reason; the other lines still load.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError

REQUIRED = ("id", "video", "question", "options", "answer")


@dataclass(frozen=True)
class LoadFailure:
    """A dataset entry that could not become a `Sample`: where it is and why."""

    source: str
    line: int
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "line": self.line, "reason": self.reason}


class SampleList(list):
    """A list of `Sample`s that also carries the entries that failed to load and notes (e.g. skipped tasks)."""

    def __init__(
        self,
        samples: list[Sample] | None = None,
        failures: list[LoadFailure] | None = None,
        notes: list[str] | None = None,
    ):
        super().__init__(samples or [])
        self.failures: list[LoadFailure] = list(failures or [])
        self.notes: list[str] = list(notes or [])


def loads(text: str) -> Any:
    """The JSON value in `text`, or `SampleError` saying why it is not one (syntax, nesting, a number too long)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"column {exc.colno}" if exc.lineno == 1 else f"line {exc.lineno}, column {exc.colno}"
        raise SampleError(f"invalid JSON: {exc.msg} ({where})") from None
    except RecursionError:
        raise SampleError("invalid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise SampleError(f"invalid JSON: {exc}") from None


def json_lines(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, JSON value or the `SampleError` saying why not) of each non-blank line of a JSONL file.

    Lines end at LF, CRLF or CR only (JSON strings may hold U+2028 and the like); each is decoded on its own.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FlowlensError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc
    for number, raw in enumerate(re.split(rb"\r\n|\r|\n", data), start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, SampleError(f"invalid JSON: not UTF-8 text (byte {exc.start + 1} of the line)")
            continue
        if not text.strip():
            continue
        try:
            value = loads(text)
        except SampleError as exc:
            value = exc
        yield number, value


def expand_user(path: str | Path) -> Path:
    """`path` with a leading `~` or `~user` expanded; a FlowlensError when that home folder is unknown."""
    try:
        return Path(path).expanduser()
    except RuntimeError as exc:  # "Could not determine home directory."
        raise FlowlensError(f"cannot expand `~` in {str(path)!r}: {exc}") from None


def video_path(value: Any, root: Path) -> str:
    """A record's video path: `~` expanded, relative paths from `root`; `SampleError` when `~user` is unknown."""
    try:
        video = expand_user(str(value))
    except FlowlensError as exc:
        raise SampleError(f"video path: {exc}") from None
    return str(video if video.is_absolute() else root / video)


def parse_record(record: Any, root: Path) -> Sample:
    """One decoded JSON line -> `Sample`, or `SampleError` saying which field is wrong."""
    if not isinstance(record, dict):
        raise SampleError(f"expected a JSON object, got {type(record).__name__}")
    missing = [key for key in REQUIRED if key not in record or record[key] is None]
    if missing:
        raise SampleError(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    options = record["options"]
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise SampleError("`options` must be a list of strings")
    for key in ("id", "video", "question", "answer"):
        if not isinstance(record[key], (str, int)) or isinstance(record[key], bool):
            raise SampleError(f"`{key}` must be a string")
    video = video_path(record["video"], root)
    metadata = dict(record.get("metadata") or {}) if isinstance(record.get("metadata"), dict) else {}
    metadata.update({k: v for k, v in record.items() if k not in (*REQUIRED, "metadata")})
    sample = Sample(
        id=str(record["id"]),
        video=video,
        question=str(record["question"]),
        options=list(options),
        answer=str(record["answer"]),
        metadata=metadata,
    )
    sample.validate()
    return sample


def read_jsonl(path: str | Path, limit: int | None = None, root: str | Path | None = None) -> SampleList:
    """Load a JSONL dataset; bad lines are recorded in `.failures`, not raised. `limit` caps the samples.

    Relative video paths start from `root` (default: the file's folder).
    """
    path = expand_user(path)
    root = expand_user(root) if root is not None else path.parent
    out = SampleList()
    seen: set[str] = set()
    for number, record in json_lines(path):
        if limit is not None and len(out) >= limit:
            break
        try:
            if isinstance(record, SampleError):
                raise record
            sample = parse_record(record, root)
            if sample.id in seen:
                raise SampleError(f"duplicate id {sample.id!r}")
        except SampleError as exc:
            out.failures.append(LoadFailure(str(path), number, str(exc)))
            continue
        seen.add(sample.id)
        out.append(sample)
    return out


def write_jsonl(samples: list[Sample], path: str | Path) -> Path:
    """Write samples with file videos as JSONL, video paths relative to the file's folder where possible."""
    path = Path(path)
    lines = []
    for s in samples:
        if not isinstance(s.video, (str, Path)):
            raise SampleError(f"sample {s.id}: only samples with video files can be written to JSONL")
        video = Path(s.video)
        with contextlib.suppress(ValueError):
            video = video.resolve().relative_to(path.parent.resolve())
        meta = dict(s.metadata)
        task = meta.pop("task", None)
        record = {
            "id": s.id,
            "video": str(video),
            "question": s.question,
            "options": s.options,
            "answer": s.answer,
        }
        if task is not None:
            record["task"] = task
        if meta:
            record["metadata"] = meta
        lines.append(json.dumps(record))
    path.write_text("".join(line + "\n" for line in lines))
    return path
