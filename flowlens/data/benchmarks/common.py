"""What every benchmark loader shares: task files, `--task` selection, split slices and the entry collector.

A loader turns each annotation record into a `Sample` or a `LoadFailure` (in file order), and notes
what it skipped (a task whose file is absent); `Collected.finish` applies a split slice and `--limit`.
"""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowlens.data.jsonl import LoadFailure, SampleList, expand_user, loads
from flowlens.data.sample import OPTION_LETTERS, Sample, is_unicode
from flowlens.errors import FlowlensError, SampleError

log = logging.getLogger("flowlens.data")

_SPLIT = re.compile(r"^\s*(?P<name>[\w.-]*)\s*(?:\[\s*(?P<lo>-?\d*%?)\s*:\s*(?P<hi>-?\d*%?)\s*\])?\s*$")


@dataclass(frozen=True)
class TaskFile:
    """One task of a benchmark published as one annotation file per task (MVBench's `data_list` entry).

    `name` is what `--task` takes and `metadata["task"]` holds (the file's stem); `label` is the
    benchmark's own name; `prefix` is the task's video folder under the video root; `data_type` is
    `video` or `frame` (a folder of frame images); `bound` says records carry `start`/`end` seconds.
    """

    label: str
    annotation: str
    prefix: str
    data_type: str = "video"
    bound: bool = False

    @property
    def name(self) -> str:
        return Path(self.annotation).stem


def norm(name: str) -> str:
    """A task name as compared: lower case, runs of spaces and hyphens as one underscore."""
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def select(available: Sequence[str], wanted: Iterable[str] | None, benchmark: str) -> list[str]:
    """The `available` names that `wanted` asks for (all when it is empty), in benchmark order."""
    wanted = [w for w in (wanted or []) if str(w).strip()]
    if not wanted:
        return list(available)
    known = {norm(a): a for a in available}
    unknown = [w for w in wanted if norm(w) not in known]
    if unknown:
        raise FlowlensError(
            f"{benchmark} has no task {', '.join(map(repr, unknown))}; its tasks: {', '.join(available)}"
        )
    keep = {norm(w) for w in wanted}
    return [a for a in available if norm(a) in keep]


@dataclass(frozen=True)
class SplitPart:
    """The rows a split slice selects, as `datasets` reads it: `[10:20]`, `[:50]`, `[-5:]`, `[:10%]`, `[10%:20%]`.

    Percent bounds round to the closest row (`datasets`' default), counted on the rows being sliced.
    """

    lo: str = ""
    hi: str = ""

    @property
    def whole(self) -> bool:
        return not self.lo and not self.hi

    def _bound(self, text: str, n: int) -> int | None:
        if not text:
            return None
        if text.endswith("%"):
            return int(round(float(text[:-1]) * n / 100))
        return int(text)

    def apply(self, rows: Sequence[Any]) -> list[Any]:
        """The selected rows, in order."""
        n = len(rows)
        return list(rows)[self._bound(self.lo, n) : self._bound(self.hi, n)]

    def __str__(self) -> str:
        return "" if self.whole else f"[{self.lo}:{self.hi}]"


def parse_split(split: str | None) -> tuple[str | None, SplitPart]:
    """`test[:50]` -> ("test", rows :50); `val` -> ("val", every row); `[10:20]` has no name."""
    if split is None:
        return None, SplitPart()
    match = _SPLIT.match(str(split))
    bounds = (match["lo"] or "", match["hi"] or "") if match else ("", "")
    if not match or any(b in ("-", "%", "-%") for b in bounds):
        raise FlowlensError(
            f"cannot read split {split!r}; write e.g. test, test[:50], val[10:20] or test[:10%]"
        )
    if any(b.endswith("%") for b in bounds):  # as in `datasets`, one `%` makes both bounds percentages
        bounds = tuple(b if not b or b.endswith("%") else f"{b}%" for b in bounds)
    for bound in bounds:
        try:
            number = int(bound.rstrip("%") or 0)
        except ValueError:  # more digits than Python converts
            raise FlowlensError(f"split {split!r}: a bound has too many digits") from None
        if bound.endswith("%") and not abs(number) <= 100:
            raise FlowlensError(f"split {split!r}: a percentage is between 0% and 100%")
    return match["name"] or None, SplitPart(*bounds)


def require_root(data_dir: str | Path | None, benchmark: str) -> Path:
    """The benchmark's root folder, or a one-line error saying what `--data-dir` must be."""
    if data_dir is None:
        raise FlowlensError(f"{benchmark} needs --data-dir: the benchmark's root folder as published")
    root = expand_user(data_dir)
    if not root.is_dir():
        raise FlowlensError(f"{benchmark}: --data-dir {root} is not a folder")
    return root


def require_no_split(split: str | None, benchmark: str, allowed: Sequence[str] = ("test",)) -> SplitPart:
    """The slice of a benchmark with a single split (`test`); another split name is an error."""
    name, part = parse_split(split)
    if name is not None and name not in allowed:
        raise FlowlensError(f"{benchmark} has no split {name!r} (it has {', '.join(allowed)})")
    return part


def exists(path: Path) -> bool:
    """`path.exists()`, with a name the OS refuses (too long, say, as a record may spell it) counted as absent."""
    try:
        return path.exists()
    except OSError:
        return False


def read_json(path: Path) -> Any:
    """A JSON file's content, or `SampleError` saying why it is not JSON."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SampleError(f"malformed annotation file: cannot read it: {exc}") from exc
    try:
        return loads(text)
    except SampleError as exc:
        raise SampleError(f"malformed annotation file: {exc}") from None


def read_csv(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, row) of a CSV with its header on line 1; a row that is not UTF-8 or not CSV yields its `SampleError`.

    A row with more cells than the header is an error unless the extra cells are empty.
    """
    try:
        handle = path.open(newline="", encoding="utf-8", errors="surrogateescape")
    except OSError as exc:
        raise FlowlensError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with handle:
        reader = csv.DictReader(handle)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # e.g. a field longer than csv.field_size_limit()
                yield (
                    reader.line_num + 1,
                    SampleError(f"malformed annotation: cannot read the CSV row: {exc}"),
                )
                continue
            extra = row.pop(None, None) or []
            cells = [*row, *row.values(), *extra]
            if any(isinstance(c, str) and not is_unicode(c) for c in cells):
                yield reader.line_num, SampleError("malformed annotation: the row is not UTF-8 text")
            elif any(str(c).strip() for c in extra):
                yield (
                    reader.line_num,
                    SampleError(f"malformed annotation: the row has {len(extra)} more cells than the header"),
                )
            else:
                yield reader.line_num, row


def require_fields(record: Any, fields: Sequence[str]) -> dict[str, Any]:
    """`record` as a dict with every field in `fields`, or `SampleError` naming what is missing."""
    if not isinstance(record, dict):
        raise SampleError(f"malformed annotation: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in fields if record.get(f) is None]
    if missing:
        raise SampleError(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    return record


def index_letter(index: Any, n_options: int) -> str:
    """The letter of a 0-based option index (NExT-QA, TOMATO), or `SampleError` when it is out of range."""
    try:
        i = int(index)
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an infinite float
        raise SampleError(f"malformed annotation: answer index {index!r} must be an integer") from exc
    if isinstance(index, float) and i != index:
        raise SampleError(f"malformed annotation: answer index {index!r} must be an integer")
    if not 0 <= i < n_options:
        raise SampleError(f"malformed annotation: answer index {i} is not one of the {n_options} options")
    return OPTION_LETTERS[i]


def seconds(record: dict[str, Any], key: str) -> float:
    """A finite number in a record (segment bounds in seconds, a frame rate)."""
    try:
        value = float(record[key])
    except (TypeError, ValueError, OverflowError) as exc:  # OverflowError: an integer beyond float range
        raise SampleError(f"malformed annotation: `{key}` must be a number, got {record[key]!r}") from exc
    if not math.isfinite(value):
        raise SampleError(f"malformed annotation: `{key}` must be a finite number, got {record[key]!r}")
    return value


@dataclass
class Collected:
    """Samples and load failures in record order, plus notes; `finish` makes the `SampleList`."""

    benchmark: str
    entries: list[Sample | LoadFailure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _ids: set[str] = field(default_factory=set)

    def add(self, sample: Sample, source: str | Path, line: int) -> None:
        """Keep `sample` after validating it; a duplicate id or invalid sample becomes a failure."""
        try:
            if sample.id in self._ids:
                raise SampleError(f"malformed annotation: duplicate id {sample.id!r}")
            sample.validate(require_options=bool(sample.options))
        except SampleError as exc:
            self.fail(source, line, str(exc))
            return
        self._ids.add(sample.id)
        self.entries.append(sample)

    def fail(self, source: str | Path, line: int, reason: str) -> None:
        self.entries.append(LoadFailure(str(source), line, reason))

    def note(self, message: str) -> None:
        """Record (and log as a warning) something skipped, such as a task whose annotation file is absent."""
        log.warning(message)
        self.notes.append(message)

    def note_absent(self, tasks: Sequence[str], folder: Path) -> None:
        """One note naming the tasks skipped because their annotation files are not in `folder`."""
        if tasks:
            plural = "s" if len(tasks) > 1 else ""
            self.note(
                f"{self.benchmark}: skipped {len(tasks)} task{plural} whose file is not in {folder}: "
                + ", ".join(tasks)
            )

    def finish(self, part: SplitPart | None = None, limit: int | None = None) -> SampleList:
        """Entries in `part` (records, good or bad, as a split slice counts rows), up to `limit` samples."""
        out = SampleList(notes=self.notes)
        for entry in (part or SplitPart()).apply(self.entries):
            if limit is not None and len(out) >= limit:
                break
            if isinstance(entry, LoadFailure):
                out.failures.append(entry)
            else:
                out.append(entry)
        return out
