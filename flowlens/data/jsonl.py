"""Multiple-choice video QA in JSONL: one JSON object per line, the on-disk format of every dataset.

Each line has `id`, `video` (a path relative to the JSONL's folder, or absolute), `question`,
`options` (list of texts) and `answer` (a letter or an option's text); `task` and any other keys
are kept in `Sample.metadata` (a `metadata` object is merged into it). A line that cannot be used
becomes a `LoadFailure` with its line number and reason; the other lines still load.
"""

from __future__ import annotations

import contextlib
import json
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
    video = Path(str(record["video"])).expanduser()
    metadata = dict(record.get("metadata") or {}) if isinstance(record.get("metadata"), dict) else {}
    metadata.update({k: v for k, v in record.items() if k not in (*REQUIRED, "metadata")})
    sample = Sample(
        id=str(record["id"]),
        video=str(video if video.is_absolute() else root / video),
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
    path = Path(path).expanduser()
    root = Path(root).expanduser() if root is not None else path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FlowlensError(f"cannot read dataset {path}: {exc.strerror or exc}") from exc
    out = SampleList()
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if limit is not None and len(out) >= limit:
            break
        if not line.strip():
            continue
        try:
            sample = parse_record(json.loads(line), root)
            if sample.id in seen:
                raise SampleError(f"duplicate id {sample.id!r}")
        except json.JSONDecodeError as exc:
            out.failures.append(
                LoadFailure(str(path), number, f"invalid JSON: {exc.msg} (column {exc.colno})")
            )
            continue
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
