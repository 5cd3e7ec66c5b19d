"""Any CSV, JSONL or JSON-list file (or Hub rows) with a column mapping such as `video=clip,question=q,answer=label`.

Fields: `id`, `video`, `question`, `options`, `answer` (a letter, `(B)` or the option's text),
`answer_index` (0-based), `task`, `start`, `end` (seconds) and `fps`. `options` names one column
holding a list (a JSON list in a CSV cell, or texts separated by `|`) or several columns joined
with `+` (`options=a0+a1+a2`). Unmapped fields default to the column of the same name; columns
that no field uses go to the sample's metadata. A relative video path is read from `--data-dir`,
or from the file's folder. Rows without options become open-ended samples.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from flowlens.data.benchmarks.common import (
    Collected,
    index_letter,
    norm,
    parse_split,
    read_csv,
    read_json,
    seconds,
)
from flowlens.data.jsonl import SampleList, expand_user, json_lines, loads, video_path
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError

FIELDS = ("id", "video", "question", "options", "answer", "answer_index", "task", "start", "end", "fps")
REQUIRED = ("video", "question")
SUFFIXES = (".csv", ".jsonl", ".json")


def parse_columns(spec: str | Mapping[str, str] | None) -> dict[str, list[str]]:
    """`video=clip,options=a0+a1` -> {"video": ["clip"], "options": ["a0", "a1"], ...} (defaults filled in)."""
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in (spec or "").split(","):
            if not part.strip():
                continue
            field, sep, column = part.partition("=")
            if not sep or not field.strip() or not column.strip():
                raise FlowlensError(f"cannot read column mapping {part.strip()!r}; write field=column")
            pairs.append((field, column))
    mapping: dict[str, list[str]] = {}
    for field, column in pairs:
        field = field.strip()
        if field not in FIELDS:
            raise FlowlensError(f"unknown field {field!r} in --columns; fields: {', '.join(FIELDS)}")
        mapping[field] = [c.strip() for c in str(column).split("+") if c.strip()]
    if "answer" in mapping and "answer_index" in mapping:
        raise FlowlensError("--columns: give `answer` (letter or text) or `answer_index`, not both")
    for field in FIELDS:
        if field not in mapping and not (field == "answer" and "answer_index" in mapping):
            mapping[field] = [field]
    return mapping


def options_of(row: Mapping[str, Any], columns: list[str]) -> list[str]:
    """Option texts from one list-valued column or from several columns (empty cells dropped)."""
    if len(columns) > 1:
        return [str(row[c]).strip() for c in columns if row.get(c) not in (None, "")]
    value = row.get(columns[0])
    if value is None or value == "":
        return []
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = loads(text)
            except SampleError as exc:
                raise SampleError(
                    f"malformed annotation: options {text!r} are not a JSON list ({exc})"
                ) from None
        else:
            value = text.split("|")
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise SampleError("malformed annotation: options must be a list")
    return [str(v).strip() for v in value]


def row_to_sample(row: Any, mapping: dict[str, list[str]], video_root: Path, default_id: str) -> Sample:
    """One row as a `Sample` by the column mapping."""
    if not isinstance(row, Mapping):
        raise SampleError(f"malformed annotation: expected an object with columns, got {type(row).__name__}")

    def cell(field: str) -> Any:
        columns = mapping.get(field) or []
        return row.get(columns[0]) if columns else None

    missing = [f"{f} (column {mapping[f][0]!r})" for f in REQUIRED if cell(f) in (None, "")]
    if missing:
        raise SampleError(f"missing field{'s' if len(missing) > 1 else ''}: {', '.join(missing)}")
    options = options_of(row, mapping["options"]) if any(c in row for c in mapping["options"]) else []
    if "answer_index" in mapping and cell("answer_index") not in (None, ""):
        answer: str | None = index_letter(cell("answer_index"), len(options))
    else:
        answer = None if cell("answer") in (None, "") else str(cell("answer")).strip()
    video = video_path(cell("video"), video_root)
    used = {c for cols in mapping.values() for c in cols}
    metadata: dict[str, Any] = {k: v for k, v in row.items() if k not in used}
    metadata["template"] = "mvbench" if options else "open-ended"
    if not options and answer is not None:  # an open-ended reference answer is not an option letter
        metadata["answer_text"], answer = answer, None
    for field in ("start", "end", "fps"):
        if cell(field) not in (None, ""):
            metadata[field] = seconds({field: cell(field)}, field)
    if cell("task") not in (None, ""):
        metadata["task"] = str(cell("task"))
    return Sample(
        id=str(cell("id")) if cell("id") not in (None, "") else default_id,
        video=video,
        question=str(cell("question")).strip(),
        options=options,
        answer=answer,
        metadata=metadata,
    )


def read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line, row) of a CSV (header on line 1), JSONL, or JSON list; a bad JSONL line yields its error."""
    if path.suffix == ".csv":
        yield from read_csv(path)
    elif path.suffix == ".jsonl":
        yield from json_lines(path)
    else:
        try:
            rows = read_json(path)
        except SampleError as exc:
            yield 0, exc
            return
        if not isinstance(rows, list):
            yield 0, SampleError("malformed annotation file: expected a JSON list of rows")
            return
        yield from enumerate(rows, start=1)


def collect(
    rows: Iterable[tuple[int, Any]],
    mapping: dict[str, list[str]],
    video_root: Path,
    source: str,
    tasks: Sequence[str] | None,
) -> Collected:
    """Rows as samples or failures, keeping only `tasks` (by `metadata["task"]`) when given."""
    keep = {norm(t) for t in tasks or []}
    out = Collected(source)
    for line, row in rows:
        try:
            if isinstance(row, SampleError):
                raise row
            sample = row_to_sample(row, mapping, video_root, f"{Path(source).stem}-{line}")
        except SampleError as exc:
            out.fail(source, line, str(exc))
            continue
        if not keep or norm(sample.metadata.get("task", "")) in keep:
            out.add(sample, source, line)
    return out


def load_table(
    path: str | Path,
    columns: str | Mapping[str, str] | None = None,
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """Samples of a CSV, JSONL or JSON file by the column mapping (videos relative to `data_dir` or the file)."""
    path = expand_user(path)
    if path.suffix not in SUFFIXES:
        raise FlowlensError(f"{path}: a mapped dataset file must be {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise FlowlensError(f"dataset file not found: {path}")
    name, part = parse_split(split)
    if name is not None:
        raise FlowlensError(
            f"{path.name} is one file with no splits; slice it with --split '[:50]' or --limit"
        )
    video_root = expand_user(data_dir) if data_dir is not None else path.parent
    return collect(read_rows(path), parse_columns(columns), video_root, str(path), task).finish(part, limit)
