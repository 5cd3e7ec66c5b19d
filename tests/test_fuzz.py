"""Fuzzing (hypothesis): loaders, knockout specs, rule tables, run-file ids and split strings on hostile input.

The contract every property checks: a loader returns samples plus per-record `.failures` (each with a
reason) or raises a `FlowlensError` with a message; a parser raises nothing but `FlowlensError` and
round-trips whatever it accepts; any sample id is stored under an injective HDF5 name and reads back
unchanged; a split string parses or is refused, and a parsed slice selects the rows `datasets` selects.
"""

from __future__ import annotations

import csv
import io
import json
import string
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tracegen import random_trace

from flowlens.data import LoadFailure, Sample, SampleList, load
from flowlens.data.benchmarks.common import SplitPart, parse_split
from flowlens.data.benchmarks.mvbench import MVBENCH_TASKS, TVBENCH_TASKS
from flowlens.data.benchmarks.tomato import REASONING_TYPES
from flowlens.engine.pathways import RuleTable
from flowlens.engine.spec import PRESETS, Block, BlockSet, Knockout, load_block_set
from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout
from flowlens.store import RunWriter, open_run, schema

IDENTITY = {"model": "fuzz", "revision": None, "settings": {"frames": 2}}
CONFIG = {"model": "fuzz", "identity": IDENTITY}
MODEL = {"model": "fuzz", "revision": None, "family": "fuzz"}


def io_settings(max_examples: int) -> settings:
    """Hypothesis settings for tests that touch files: no deadline (disk speed varies), big inputs allowed."""
    return settings(
        max_examples=max_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ---------------------------------------------------------------------------------------- helpers
def flowlens_only(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`call(...)`'s result, or None when it raised a `FlowlensError` with a message (anything else fails)."""
    try:
        return call(*args, **kwargs)
    except FlowlensError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} without a message"
        return None


def check_loaded(result: Any) -> None:
    """A loader's result: unique storable samples that passed validation, and failures with reasons."""
    if result is None:
        return
    assert isinstance(result, SampleList)
    ids = [s.id for s in result]
    assert len(set(ids)) == len(ids), "duplicate sample ids"
    for sample in result:
        assert isinstance(sample, Sample) and isinstance(sample.id, str) and isinstance(sample.video, str)
        assert isinstance(sample.question, str) and sample.question.strip()
        assert all(isinstance(o, str) and o.strip() for o in sample.options)
        sample.validate(require_options=bool(sample.options))
        schema.escape_id(sample.id)  # the id can name a run-file group
        json.loads(schema.to_json(sample.metadata))  # the metadata can be stored in a run file
    for failure in result.failures:
        assert isinstance(failure, LoadFailure) and isinstance(failure.line, int)
        assert isinstance(failure.reason, str) and failure.reason.strip(), failure


@contextmanager
def folder() -> Iterator[Path]:
    """A fresh temporary folder per hypothesis example (function-scoped `tmp_path` is shared by all)."""
    with tempfile.TemporaryDirectory(prefix="flowlens-fuzz-") as name:
        yield Path(name)


def encode(text: str) -> bytes:
    """UTF-8 bytes of `text`; lone surrogates become their (invalid) three-byte forms."""
    return text.encode("utf-8", "surrogatepass")


# -------------------------------------------------------------------------------------- strategies
HOSTILE_TEXTS = [
    "",
    " ",
    "\x00",
    "a\x00b",
    "../../../etc/passwd",
    "/abs/../x.mp4",
    "~flowlens-no-such-user/x.mp4",
    "~",
    "\ud800",
    "x\udcff",
    "%00",
    "%2F.",
    "\u2028",
    "a\x85b",
    "\r",
    "NaN",
    "1e999",
    "A",
    "(B)",
    "A. x",
    "x" * 150_000,
    "\U0010ffff" * 500,
]
characters = st.one_of(
    st.characters(),
    st.sampled_from("\x00/.%\\\n\r\t\u2028\x85~-_ "),
    st.integers(0xD800, 0xDFFF).map(chr),  # lone surrogates
)
any_text = st.lists(characters, max_size=12).map("".join)
hostile_text = st.one_of(st.sampled_from(HOSTILE_TEXTS), any_text)
numbers = st.one_of(
    st.integers(),
    st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1, 26, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, hostile_text)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=10,
)
RAW_LINES = [
    b"",
    b"   ",
    b"[" * 100_000,
    b'{"a":' * 30_000,
    b"1" * 5_000,
    b'{"id": ' + b"9" * 5_000 + b"}",
    b"\xff\xfe{}",
    b"\xc3\x28",
    b'{"id": "\xed\xa0\x80"}',
    b"\x00" * 8,
    b"NaN",
    b"-Infinity",
    b'{"id": 1} trailing',
    b"\xef\xbb\xbf{}",
    b"null",
    b"[]",
    b'"text"',
]
raw_line = st.one_of(st.sampled_from(RAW_LINES), st.binary(max_size=30))
letters = st.sampled_from(list("ABCDEFZ") + ["(A)", "(b)", "a", "AA"])


def records(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Dicts with any subset of `fields` (each a plausible or a hostile value) plus unknown keys; or any JSON value."""
    plausible = st.fixed_dictionaries(
        {}, optional={key: st.one_of(value, json_values) for key, value in fields.items()}
    )
    extra = st.dictionaries(any_text, json_values, max_size=2)
    return st.one_of(
        st.builds(lambda known, more: {**more, **known}, plausible, extra),
        plausible,
        json_values,
    )


def dump(value: Any, ascii_only: bool) -> bytes:
    return encode(json.dumps(value, ensure_ascii=ascii_only))


def lines_file(lines: list[bytes], newline: bytes, tail: bytes) -> bytes:
    return newline.join(lines) + tail


@st.composite
def jsonl_bytes(draw: st.DrawFn, record: st.SearchStrategy[Any]) -> bytes:
    """A JSONL file: records (some dumped with raw non-ASCII), hostile raw lines, any newlines, any tail."""
    ascii_only = draw(st.booleans())
    lines = draw(st.lists(st.one_of(record.map(lambda r: dump(r, ascii_only)), raw_line), max_size=8))
    newline = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    return lines_file(lines, newline, draw(st.sampled_from([b"", b"\n", b"\xff", b"\x00"])))


split_strings = st.one_of(
    st.none(),
    st.sampled_from(["test", "[:1]", "[1:]", "[-2:]", "[:50%]", "[10:90%]", "test[:0]", "val", "[::]"]),
    any_text,
)
limits = st.one_of(st.none(), st.integers(1, 5))


# ----------------------------------------------------------------------------- 1. the JSONL loader
JSONL_FIELDS = {
    "id": st.one_of(st.sampled_from(["dup", "dup", "x", ""]), any_text, st.integers()),
    "video": st.one_of(st.sampled_from(["clip.mp4", "../up.mp4", "/abs.mp4"]), hostile_text),
    "question": st.one_of(st.just("Which?"), hostile_text),
    "options": st.lists(st.one_of(st.sampled_from(["left", "right"]), hostile_text), max_size=28),
    "answer": st.one_of(letters, hostile_text),
    "task": hostile_text,
    "metadata": json_values,
}


@io_settings(60)
@given(content=st.one_of(jsonl_bytes(records(JSONL_FIELDS)), st.binary(max_size=200)), limit=limits)
@example(content=b"[" * 100_000, limit=None)
@example(content=b"1" * 5_000, limit=None)
@example(
    content=b'{"id": 1, "video": "~flowlens-no-such-user/x.mp4", "question": "q", "options": ["a"], "answer": "A"}',
    limit=None,
)
@example(content=b"\xff\xfe\x00", limit=None)
def test_jsonl_loader_fails_per_line(content: bytes, limit: int | None) -> None:
    with folder() as root:
        path = root / "data.jsonl"
        path.write_bytes(content)
        result = flowlens_only(load, path, limit=limit)
        check_loaded(result)
        if result is not None and limit is None:
            n_lines = len(
                [x for x in content.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n") if x.strip()]
            )
            assert len(result) + len(result.failures) <= n_lines


valid_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=12).filter(str.strip)


@st.composite
def valid_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(st.lists(valid_text, min_size=1, max_size=5, unique=True))
    out = []
    for sample_id in ids:
        options = draw(st.lists(valid_text, min_size=1, max_size=5))
        out.append(
            {
                "id": sample_id,
                "video": draw(valid_text.filter(lambda v: not v.startswith("~"))),
                "question": draw(valid_text),
                "options": options,
                "answer": "ABCDE"[draw(st.integers(0, len(options) - 1))],
                "task": draw(valid_text),
            }
        )
    return out


@io_settings(40)
@given(rows=valid_records(), ascii_only=st.booleans(), newline=st.sampled_from(["\n", "\r\n"]))
@example(
    rows=[
        {
            "id": "a",
            "video": "v.mp4",
            "question": "x\u2028y\x85z",
            "options": ["p\u2029"],
            "answer": "A",
            "task": "t",
        }
    ],
    ascii_only=False,
    newline="\n",
)
def test_jsonl_loader_reads_every_valid_record(
    rows: list[dict[str, Any]], ascii_only: bool, newline: str
) -> None:
    with folder() as root:
        path = root / "data.jsonl"
        path.write_bytes(encode(newline.join(json.dumps(r, ensure_ascii=ascii_only) for r in rows)))
        result = load(path)
        assert not result.failures, result.failures
        assert [s.id for s in result] == [r["id"] for r in rows]
        assert [(s.question, s.options, s.answer) for s in result] == [
            (r["question"], r["options"], r["answer"]) for r in rows
        ]


# -------------------------------------------------------------------- 1. the column-mapped loader
COLUMNS = "video=clip,question=q,options=a0+a1,answer=label"
TABLE_COLUMNS = [
    "clip",
    "q",
    "a0",
    "a1",
    "label",
    "id",
    "task",
    "start",
    "end",
    "fps",
    "answer_index",
    "options",
]
TABLE_FIELDS = {
    **{
        c: st.one_of(st.sampled_from(["x", "clip.mp4", "A", "B", "0", "1.5"]), hostile_text)
        for c in TABLE_COLUMNS
    },
    "start": st.one_of(numbers, hostile_text),
    "answer_index": st.one_of(numbers, hostile_text),
    "options": st.one_of(st.lists(hostile_text, max_size=28), hostile_text),
}
column_specs = st.one_of(
    st.just(COLUMNS),
    st.just("video=clip,question=q,options=options,answer_index=answer_index,start=start,end=end,fps=fps"),
    st.lists(
        st.tuples(
            st.one_of(
                st.sampled_from(
                    ["video", "question", "options", "answer", "answer_index", "task", "bogus", ""]
                ),
                any_text,
            ),
            st.one_of(st.sampled_from(TABLE_COLUMNS + ["a0+a1", "+", ""]), any_text),
            st.sampled_from(["=", "", "=="]),
        ),
        max_size=4,
    ).map(lambda parts: ",".join(f"{f}{sep}{c}" for f, c, sep in parts)),
)


def csv_bytes(header: list[str], rows: list[list[str]], newline: str) -> bytes:
    handle = io.StringIO()
    writer = csv.writer(handle, lineterminator=newline)
    writer.writerow(header)
    writer.writerows(rows)
    return encode(handle.getvalue())


@st.composite
def table_file(draw: st.DrawFn) -> tuple[str, bytes]:
    """(suffix, content) of a CSV, JSONL or JSON table with plausible and hostile cells."""
    suffix = draw(st.sampled_from([".csv", ".jsonl", ".json"]))
    if draw(st.integers(0, 9)) == 0:
        return suffix, draw(st.binary(max_size=200))
    if suffix == ".csv":
        header = draw(st.lists(st.one_of(st.sampled_from(TABLE_COLUMNS), hostile_text), max_size=8))
        cells = st.one_of(
            st.sampled_from(["x", "A", "left", "0", "", '["a", "b"]', "a|b", "[oops"]), hostile_text
        )
        rows = draw(st.lists(st.lists(cells, max_size=10), max_size=6))
        content = csv_bytes(header, rows, draw(st.sampled_from(["\n", "\r\n"])))
        extra = draw(st.lists(raw_line, max_size=2))
        return suffix, content + b"\n".join(extra)
    record = records(TABLE_FIELDS)
    if suffix == ".jsonl":
        return suffix, draw(jsonl_bytes(record))
    return suffix, dump(draw(st.one_of(st.lists(record, max_size=6), json_values)), draw(st.booleans()))


@io_settings(60)
@given(
    file=table_file(),
    columns=column_specs,
    split=split_strings,
    limit=limits,
    task=st.one_of(st.none(), hostile_text),
)
@example(
    file=(".csv", b"clip,q,a0,a1,label\n" + b'"' + b"x" * 200_000 + b'",q,a,b,A\nv,q,a,b,A,extra\n'),
    columns=COLUMNS,
    split=None,
    limit=None,
    task=None,
)
@example(
    file=(".json", b'[{"clip": "v", "q": "q", "start": 1' + b"0" * 400 + b"}]"),
    columns=COLUMNS,
    split=None,
    limit=None,
    task=None,
)
@example(
    file=(".json", b'[{"clip": "v", "q": "q", "a0": "x", "a1": "y", "answer_index": 1e999}]'),
    columns="video=clip,question=q,options=a0+a1,answer_index=answer_index",
    split=None,
    limit=None,
    task=None,
)
@example(
    file=(".csv", b"clip,q,a0,a1,label\n\xff,q,a,b,A\nv,q,a,b,A\n"),
    columns=COLUMNS,
    split=None,
    limit=None,
    task=None,
)
def test_table_loader_fails_per_row(
    file: tuple[str, bytes], columns: str, split: str | None, limit: int | None, task: str | None
) -> None:
    suffix, content = file
    with folder() as root:
        path = root / f"data{suffix}"
        path.write_bytes(content)
        check_loaded(flowlens_only(load, path, columns=columns, split=split, limit=limit, task=task))


# ---------------------------------------------------------------------- 1. the benchmark loaders
MV_FIELDS = {
    "video": st.one_of(st.sampled_from(["v.mp4", "../../escape.mp4", "/abs.mp4"]), hostile_text),
    "question": st.one_of(st.just("What?"), hostile_text),
    "candidates": st.lists(st.one_of(st.sampled_from(["a", "b"]), hostile_text, numbers), max_size=30),
    "answer": st.one_of(st.sampled_from(["a", "b"]), hostile_text, numbers),
    "start": st.one_of(numbers, hostile_text),
    "end": st.one_of(numbers, hostile_text),
    "question_id": hostile_text,
}


@st.composite
def json_file(draw: st.DrawFn, content: st.SearchStrategy[Any]) -> bytes:
    """A JSON annotation file: usually `content`, sometimes random bytes or a hostile raw JSON text."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.binary(max_size=200))
    if kind == 1:
        return draw(st.sampled_from(RAW_LINES))
    return dump(draw(content), draw(st.booleans()))


@st.composite
def mv_tree(draw: st.DrawFn, tasks: tuple[Any, ...]) -> dict[str, bytes]:
    """`json/<task>.json` files of some tasks (MVBench/TVBench layout) with hostile records."""
    chosen = draw(st.lists(st.sampled_from(tasks), min_size=1, max_size=3, unique_by=lambda t: t.annotation))
    mv_record = records(MV_FIELDS)
    return {
        f"json/{t.annotation}": draw(json_file(st.one_of(st.lists(mv_record, max_size=6), json_values)))
        for t in chosen
    }


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


task_names = st.one_of(
    st.none(),
    st.lists(
        st.one_of(st.sampled_from(["action_count", "Action Sequence", "episodic_reasoning"]), hostile_text),
        max_size=2,
    ),
)
bench_split = st.one_of(
    st.none(), st.sampled_from(["test", "test[:1]", "test[-1:]", "test[:50%]", "val"]), any_text
)


@io_settings(50)
@given(
    benchmark=st.sampled_from(["tvbench", "mvbench"]),
    data=st.data(),
    task=task_names,
    split=bench_split,
    limit=limits,
)
@example(benchmark="tvbench", data=None, task=None, split=None, limit=None)
def test_mvbench_and_tvbench_fail_per_record(
    benchmark: str, data: st.DataObject, task: Any, split: str | None, limit: int | None
) -> None:
    if data is None:  # the explicit example: one file of each kind of known trouble
        many = [f"c{i}" for i in range(30)]
        tree = {
            "json/action_count.json": b"[" * 100_000,
            "json/object_count.json": b'[{"video": "v", "question": "q", "candidates": ["a"], "answer": '
            + b"1" * 5000
            + b"}]",
            "json/action_sequence.json": json.dumps(
                [
                    {
                        "video": "v",
                        "question": "q",
                        "candidates": ["a"],
                        "answer": "a",
                        "start": 10**400,
                        "end": 1,
                    },
                    {
                        "video": "v",
                        "question": "q",
                        "candidates": ["a"],
                        "answer": "a",
                        "start": float("nan"),
                        "end": 1,
                    },
                ]
            ).encode(),
            "json/object_shuffle.json": json.dumps(
                [{"video": "v", "question": "q", "candidates": many, "answer": "c28"}]
            ).encode(),
            "json/scene_transition.json": b"\xff\xfe[]",
        }
    else:
        tree = data.draw(mv_tree(TVBENCH_TASKS if benchmark == "tvbench" else MVBENCH_TASKS))
    with folder() as root:
        write_tree(root, tree)
        check_loaded(flowlens_only(load, benchmark, data_dir=root, task=task, split=split, limit=limit))


VIDEOMME_QUESTION = {
    "question_id": st.one_of(st.sampled_from(["001-1", "001-1"]), hostile_text),
    "task_type": st.one_of(st.just("Counting Problem"), hostile_text),
    "question": st.one_of(st.just("How many?"), hostile_text),
    "choices": st.lists(
        st.one_of(
            st.sampled_from(["A. one", "B. two", "C. three"]),
            st.builds(lambda i, t: f"{string.ascii_uppercase[i % 26]}. {t}", st.integers(0, 40), any_text),
            hostile_text,
        ),
        max_size=30,
    ),
    "answer": st.one_of(letters, hostile_text, numbers),
}
VIDEOMME_VIDEO = {
    "video_id": st.one_of(st.just("001"), hostile_text, numbers),
    "duration_category": hostile_text,
    "url": st.one_of(
        st.sampled_from(
            ["https://www.youtube.com/watch?v=abc", "http://[oops", "https://x/?v=../../up", "::"]
        ),
        hostile_text,
    ),
    "questions": st.one_of(st.lists(records(VIDEOMME_QUESTION), max_size=4), hostile_text, json_values),
}


@st.composite
def videomme_tree(draw: st.DrawFn) -> dict[str, bytes]:
    """The official JSON at the root, or the Hub parquet (random bytes, or rows with hostile strings)."""
    kind = draw(st.sampled_from(["json", "json", "parquet-bytes", "parquet"]))
    if kind == "json":
        content = st.one_of(st.lists(records(VIDEOMME_VIDEO), max_size=4), records(VIDEOMME_VIDEO))
        return {"videomme.json": draw(json_file(content))}
    if kind == "parquet-bytes":
        return {"videomme/test-00000-of-00001.parquet": draw(st.binary(max_size=200))}
    text = st.one_of(st.sampled_from(["001-1", "A", "B. x", "A. y"]), hostile_text)
    safe = text.map(lambda t: encode(t).decode("utf-8", "replace"))  # arrow stores valid UTF-8 only
    rows = draw(
        st.lists(
            st.fixed_dictionaries(
                {
                    "videoID": safe,
                    "question_id": safe,
                    "task_type": safe,
                    "question": safe,
                    "options": st.lists(safe, max_size=28),
                    "answer": safe,
                }
            ),
            min_size=1,
            max_size=4,
        )
    )
    handle = io.BytesIO()
    pd.DataFrame(rows).to_parquet(handle)
    return {"videomme/test-00000-of-00001.parquet": handle.getvalue()}


@io_settings(50)
@given(tree=videomme_tree(), task=st.one_of(st.none(), hostile_text), split=bench_split, limit=limits)
@example(
    tree={"videomme.json": json.dumps([{"url": "http://[oops", "questions": "abc"}]).encode()},
    task=None,
    split=None,
    limit=None,
)
@example(
    tree={
        "videomme.json": json.dumps(
            [
                {
                    "video_id": "1",
                    "questions": [
                        {
                            "question_id": "q",
                            "question": "q",
                            "choices": [f"{c}. x" for c in string.ascii_uppercase] + ["A. x"],
                            "answer": "A",
                        }
                    ],
                }
            ]
        ).encode()
    },
    task=None,
    split=None,
    limit=None,
)
@example(  # a video id longer than a file name may be
    tree={
        "videomme.json": json.dumps(
            [
                {
                    "video_id": "x" * 300,
                    "questions": [{"question_id": "q", "question": "q", "choices": ["A. a"], "answer": "A"}],
                }
            ]
        ).encode()
    },
    task=None,
    split=None,
    limit=None,
)
def test_videomme_fails_per_question(
    tree: dict[str, bytes], task: str | None, split: str | None, limit: int | None
) -> None:
    with folder() as root:
        write_tree(root, tree)
        check_loaded(flowlens_only(load, "videomme", data_dir=root, task=task, split=split, limit=limit))


TOMATO_FIELDS = {
    "question": st.one_of(st.just("Which way?"), hostile_text),
    "options": st.lists(st.one_of(st.just("left"), hostile_text, numbers), max_size=30),
    "answer": st.one_of(st.integers(-2, 30), numbers, hostile_text),
    "key": st.one_of(st.just("0001"), hostile_text, numbers),
    "demonstration_type": st.one_of(st.just("human"), hostile_text),
}
TEMPCOMPASS_ITEM = {
    "question": st.one_of(
        st.just("Q?\nA. up\nB. down"),
        st.lists(st.sampled_from(["Q?", "A. x", "B. y", "C. z", "Z. q", ""]), max_size=30).map("\n".join),
        hostile_text,
    ),
    "answer": st.one_of(st.sampled_from(["A. up", "B. down", "A. x"]), hostile_text, numbers),
}
NEXTQA_HEADER = [
    "video",
    "frame_count",
    "width",
    "height",
    "question",
    "answer",
    "qid",
    "type",
    "a0",
    "a1",
    "a2",
    "a3",
    "a4",
]


@st.composite
def other_benchmark(draw: st.DrawFn) -> tuple[str, dict[str, bytes]]:
    """TOMATO, TempCompass or NExT-QA folders with hostile annotation files."""
    name = draw(st.sampled_from(["tomato", "tempcompass", "nextqa"]))
    if name == "tomato":
        by_key = st.dictionaries(any_text, records(TOMATO_FIELDS), max_size=5)
        types = draw(st.lists(st.sampled_from(REASONING_TYPES), min_size=1, max_size=2, unique=True))
        return name, {f"data/{t}.json": draw(json_file(st.one_of(by_key, json_values))) for t in types}
    if name == "tempcompass":
        by_aspect = st.dictionaries(
            st.sampled_from(["action", "speed", "direction", "order"]) | any_text,
            st.one_of(st.lists(records(TEMPCOMPASS_ITEM), max_size=3), json_values),
            max_size=3,
        )
        videos = st.dictionaries(any_text, st.one_of(by_aspect, json_values), max_size=3)
        return name, {"questions/multi-choice.json": draw(json_file(st.one_of(videos, json_values)))}
    cells = st.one_of(st.sampled_from(["1", "0", "CH", "x", "inf", "nan", "1e999", "-1", ""]), hostile_text)
    rows = draw(st.lists(st.lists(cells, min_size=10, max_size=14), max_size=5))
    files = {
        "nextqa/val.csv": csv_bytes(NEXTQA_HEADER, rows, "\n")
        + draw(st.sampled_from([b"", b"\xff\n", b'"' + b"y" * 140_000 + b'"\n']))
    }
    if draw(st.booleans()):
        files["nextqa/map_vid_vidorID.json"] = draw(json_file(json_values))
    return name, files


@io_settings(50)
@given(bench=other_benchmark(), split=bench_split, limit=limits)
@example(
    bench=(
        "tempcompass",
        {
            "questions/multi-choice.json": json.dumps(
                {
                    "v": {
                        "action": [
                            {
                                "question": "Q?\n"
                                + "\n".join(f"{c}. x" for c in string.ascii_uppercase)
                                + "\nA. y",
                                "answer": "A. x",
                            }
                        ]
                    }
                }
            ).encode()
        },
    ),
    split=None,
    limit=None,
)
@example(
    bench=(
        "tomato",
        {
            "data/count.json": b'{"0": {"question": "q", "options": ["a"], "answer": 1e999, "key": "k", "demonstration_type": "human"}}'
        },
    ),
    split=None,
    limit=None,
)
def test_other_benchmarks_fail_per_record(
    bench: tuple[str, dict[str, bytes]], split: str | None, limit: int | None
) -> None:
    name, tree = bench
    with folder() as root:
        write_tree(root, tree)
        check_loaded(flowlens_only(load, name, data_dir=root, split=split, limit=limit))


# ------------------------------------------------------------------ 2. knockout specs and rule tables
GROUPS = ["video", "question", "last", "frame0", "option_A", "cross_frame", "", " video ", "a->b", "->"]
group_names = st.one_of(st.sampled_from(GROUPS), hostile_text, numbers, st.none())
block_data = st.one_of(
    st.sampled_from(
        ["cross_frame", "video->question", "video -> last", "->", "a->b->c", "cross_frame->video", "video"]
    ),
    st.builds(lambda s, d: f"{s}->{d}", hostile_text, hostile_text),
    st.fixed_dictionaries({"src": group_names, "dst": group_names}),
    json_values,
)
index_lists = st.one_of(
    st.lists(st.one_of(st.integers(0, 40), numbers, hostile_text), max_size=5),
    st.lists(st.integers(0, 40), max_size=5),
    json_values,
)
knockout_data = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "blocks": st.one_of(st.lists(block_data, max_size=3), json_values),
            "layers": index_lists,
            "heads": st.one_of(st.none(), index_lists),
            "name": st.one_of(hostile_text, json_values),
            "bogus": json_values,
        },
    ),
    json_values,
)
block_set_data = st.one_of(
    st.fixed_dictionaries(
        {
            "curves": st.one_of(
                st.dictionaries(
                    st.one_of(hostile_text, st.integers()),
                    st.one_of(st.lists(block_data, max_size=3), json_values),
                    max_size=3,
                ),
                json_values,
            )
        },
        optional={"name": st.one_of(hostile_text, json_values)},
    ),
    json_values,
)
keep_data = st.one_of(
    st.lists(
        st.one_of(
            st.integers(0, 30), st.lists(st.integers(-1, 30), min_size=2, max_size=2), numbers, json_values
        ),
        max_size=4,
    ),
    json_values,
)
rule_table_data = st.one_of(
    st.fixed_dictionaries(
        {
            "rules": st.one_of(
                st.lists(
                    st.one_of(
                        st.fixed_dictionaries({"edges": block_data}, optional={"keep": keep_data}),
                        json_values,
                    ),
                    max_size=4,
                ),
                json_values,
            )
        },
        optional={"name": st.one_of(hostile_text, json_values)},
    ),
    json_values,
)


@settings(max_examples=120)
@given(data=block_data)
@example(data={"src": "cross_frame", "dst": "video"})
@example(data={"src": "a->b", "dst": "c"})
def test_block_parser(data: Any) -> None:
    block = flowlens_only(Block.from_data, data)
    if block is not None:
        assert Block.from_data(block.to_data()) == block
        assert Block.from_data(block.label) == block  # the rule-table form


@settings(max_examples=120)
@given(data=knockout_data)
@example(data={"layers": [1.5]})
@example(data={"layers": [-1]})
@example(data={"layers": 3})
@example(data={"name": "\ud800\udc00"})
def test_knockout_parser(data: Any) -> None:
    knockout = flowlens_only(Knockout.from_dict, data)
    if knockout is not None:
        assert Knockout.from_dict(knockout.to_dict()) == knockout
        assert Knockout.from_json(knockout.to_json()) == knockout
        assert all(isinstance(x, int) and x >= 0 for x in (*knockout.layers, *(knockout.heads or ())))


@settings(max_examples=100)
@given(
    text=st.one_of(
        st.sampled_from(["{", "[" * 50_000, "1" * 5_000, '{"layers": [' + "9" * 5000 + "]}"]),
        any_text,
        knockout_data.map(json.dumps),
    )
)
def test_knockout_json_parser(text: str) -> None:
    knockout = flowlens_only(Knockout.from_json, text)
    if knockout is not None:
        assert Knockout.from_json(knockout.to_json()) == knockout


@settings(max_examples=100)
@given(data=block_set_data)
@example(data={"curves": {1: ["cross_frame"], "1": ["video->last"]}})
def test_block_set_parser(data: Any) -> None:
    block_set = flowlens_only(BlockSet.from_dict, data)
    if block_set is not None:
        assert BlockSet.from_dict(block_set.to_dict()) == block_set


@settings(max_examples=100)
@given(data=rule_table_data)
@example(data={"rules": [{"edges": {"src": " video", "dst": "last"}, "keep": [1]}]})
def test_rule_table_parser(data: Any) -> None:
    table = flowlens_only(RuleTable.from_dict, data)
    if table is not None:
        assert RuleTable.from_dict(table.to_dict()) == table


def yaml_text(value: Any) -> bytes:
    try:
        return encode(yaml.safe_dump(value, allow_unicode=True))
    except (yaml.YAMLError, UnicodeEncodeError):
        return b"{"


yaml_files = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"",
            b"[" * 1_000,
            b"- " * 2_000,
            b"- &a [*a]",
            b"!!python/object:os.system {}",
            b"\xff: 1",
            b"a: !!binary zz",
        ]
    ),
    block_set_data.map(yaml_text),
    rule_table_data.map(yaml_text),
)


@io_settings(60)
@given(content=yaml_files, as_folder=st.booleans())
def test_yaml_spec_files(content: bytes, as_folder: bool) -> None:
    with folder() as root:
        path = root / "spec.yaml"
        if as_folder:
            path.mkdir()
        else:
            path.write_bytes(content)
        block_set = flowlens_only(load_block_set, str(path))
        if block_set is not None:
            assert BlockSet.from_dict(block_set.to_dict()) == block_set
        table = flowlens_only(RuleTable.load, path)
        if table is not None:
            assert RuleTable.from_dict(table.to_dict()) == table


def test_presets_round_trip() -> None:
    for preset in PRESETS.values():
        assert BlockSet.from_dict(preset.to_dict()) == preset


# -------------------------------------------------------------------------- 3. sample ids in HDF5
ids = st.one_of(
    st.lists(characters, min_size=1, max_size=10).map("".join),
    st.sampled_from(["/", ".", "..", "%", "%25", "\x00", "a/b", "\ud83d\ude00", "\ud800", "x" * 5_000]),
)
NAME_CHARS = set(string.ascii_letters + string.digits + "_-%")


@settings(max_examples=400)
@given(sample_id=ids, other=ids)
def test_escape_id_is_a_safe_injective_name(sample_id: str, other: str) -> None:
    name = schema.escape_id(sample_id)
    assert name and set(name) <= NAME_CHARS and name not in (".", "..")
    assert schema.unescape_id(name) == sample_id
    assert (schema.escape_id(other) == name) == (other == sample_id)


@pytest.mark.parametrize("bad", ["", None, 3, b"x"])
def test_escape_id_refuses_what_is_not_an_id(bad: Any) -> None:
    with pytest.raises(FlowlensError, match="non-empty string"):
        schema.escape_id(bad)


def small_layout() -> TokenLayout:
    """A valid 9-position layout (2 frames of 2 tokens, 2 options) without loading a model."""
    groups = {
        "prefix": [0],
        "video": [1, 2, 3, 4],
        "video_features": [1, 2, 3, 4],
        "frame0": [1, 2],
        "frame1": [3, 4],
        "question": [5, 6, 7],
        "option_A": [6],
        "option_B": [7],
        "last": [8],
    }
    layout = TokenLayout.from_dict(
        {
            "groups": groups,
            "partition": ["prefix", "frame0", "frame1", "question", "last"],
            "video_cells": [[0, 0, 0], [0, 0, 1], [1, 0, 0], [1, 0, 1]],
            "frame_sources": [[0], [1]],
            "frame_grid": [[1, 2], [1, 2]],
            "seq_len": 9,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 2,
            "d_model": 8,
            "option_letters": ["A", "B"],
            "option_token_ids": [10, 11],
            "answer_letter": "B",
        }
    )
    layout.validate()
    return layout


LAYOUT = small_layout()
# (what, sample id): write a trace, a failure with a hostile reason, a trace that fails (bad shape), or a duplicate
operations = st.lists(
    st.tuples(st.sampled_from(["trace", "trace", "failure", "bad", "again"]), ids, hostile_text),
    min_size=1,
    max_size=6,
)


@io_settings(30)
@given(ops=operations)
@example(
    ops=[("trace", "a\x00b", ""), ("failure", "\ud800", "why\x00 \udcff"), ("trace", "\ud83d\ude00", "")]
)
def test_run_file_round_trips_any_id(ops: list[tuple[str, str, str]]) -> None:
    traced: list[str] = []
    failed: dict[str, str] = {}
    with folder() as root, RunWriter(root / "run.h5", CONFIG, MODEL) as writer:
        for seq, (what, sample_id, reason) in enumerate(ops):
            if what == "again" and traced:
                with pytest.raises(FlowlensError, match="already"):
                    writer.write_sample(random_trace(LAYOUT, traced[0], seq))
            elif what == "bad":
                trace = random_trace(LAYOUT, sample_id, seq)
                trace.frame_flow = trace.frame_flow[:, :, :1]
                with pytest.raises(ValueError, match="frame_flow has shape"):
                    writer.write_sample(trace)
            elif what == "failure" and sample_id not in traced:
                writer.write_failure(sample_id, reason, {"id": sample_id})
                failed.pop(sample_id, None)
                failed[sample_id] = reason
            elif what in ("trace", "again") and sample_id not in traced:
                writer.write_sample(random_trace(LAYOUT, sample_id, seq, metadata={"id": sample_id}))
                traced.append(sample_id)
                failed.pop(sample_id, None)
            assert writer.completed_ids() == traced and list(writer.failed()) == list(failed)
            with open_run(root / "run.h5") as run:  # readable after every write, failed or not
                assert run.samples == traced and list(run.failures) == list(failed)
        writer.close()
        with open_run(root / "run.h5") as run:
            assert run.samples == traced and list(run.failures) == list(failed)
            for sample_id in traced:
                assert run.sample(sample_id).sample_id == sample_id
                assert run.metadata(sample_id) == schema.normalized(
                    {"id": sample_id}
                )  # JSON joins surrogate pairs
            for sample_id, reason in failed.items():
                assert run.failure_metadata(sample_id) == schema.normalized({"id": sample_id})
                assert run.failures[sample_id].strip()
                if "\x00" not in reason and reason.isprintable():
                    assert run.failures[sample_id] == (reason if reason.strip() else "unknown error")
        with h5py.File(root / "run.h5", "r") as file:
            assert sorted(file["samples"]) == sorted(schema.escape_id(i) for i in traced)
        with RunWriter(root / "run.h5", CONFIG, MODEL, resume=True) as writer:
            assert writer.completed_ids() == traced and list(writer.failed()) == list(failed)


# ------------------------------------------------------------------------------ 4. split strings
def datasets_rule(lo: str, hi: str, n: int) -> list[int] | None:
    """The rows `datasets` selects from n rows for `[lo:hi]` (its `_rel_to_abs_instr`, closest rounding); None if refused.

    One `%` makes both bounds percentages, of magnitude at most 100; negative bounds count from the end.
    """
    percent = lo.endswith("%") or hi.endswith("%")
    values = [int(b.rstrip("%")) if b else None for b in (lo, hi)]
    if percent and any(v is not None and abs(v) > 100 for v in values):
        return None
    if percent:
        values = [None if v is None else int(round(v * n / 100.0)) for v in values]
    start, stop = (0 if values[0] is None else values[0]), (n if values[1] is None else values[1])
    start, stop = (min(max(n + x, 0) if x < 0 else x, n) for x in (start, stop))
    return list(range(n))[start:stop]


def datasets_rows(spec: str, n: int) -> list[int] | None | str:
    """The rows `datasets` itself reads for split `spec` of n rows, None when it refuses, "absent" without it."""
    try:
        from datasets.arrow_reader import ReadInstruction
    except ImportError:
        return "absent"
    try:
        instruction = ReadInstruction.from_spec(spec)
        (absolute,) = instruction.to_absolute({spec.partition("[")[0]: n})
    except (ValueError, AssertionError):
        return None
    return list(range(n))[absolute.from_ : absolute.to]


bounds = st.one_of(
    st.just(""), st.integers(-130, 130).map(str), st.integers(-130, 130).map(lambda x: f"{x}%")
)
slice_specs = st.builds(
    lambda name, lo, hi: f"{name}[{lo}:{hi}]", st.sampled_from(["test", "", "val.x"]), bounds, bounds
)


@settings(max_examples=300)
@given(
    text=st.one_of(
        any_text,
        slice_specs,
        st.sampled_from(
            ["[:" + "9" * 5000 + "]", "[" + "1" * 5000 + "%:]", "test[:10%", "x[1:2](closest)", "a+b"]
        ),
    ),
    n=st.integers(0, 50),
)
def test_split_strings_parse_or_refuse(text: str, n: int) -> None:
    parsed = flowlens_only(parse_split, text)
    if parsed is None:
        return
    name, part = parsed
    assert name is None or isinstance(name, str)
    assert isinstance(part, SplitPart)
    rows = list(range(n))
    selected = part.apply(rows)
    assert selected == [r for r in rows if r in selected]  # a contiguous subsequence, in order
    assert parse_split(f"{name or ''}{part}") == parsed  # str(part) writes the slice back


@settings(max_examples=300, deadline=None)  # the first call imports `datasets`
@given(spec=slice_specs, n=st.integers(0, 250))
@example(spec="test[10:50%]", n=50)  # 10 is 10%: rows 5 to 25, as datasets reads it
@example(spec="test[:50%]", n=5)
@example(spec="test[-5%:]", n=30)
def test_split_slices_select_what_datasets_selects(spec: str, n: int) -> None:
    rows = list(range(n))
    parsed = flowlens_only(parse_split, spec)
    name, _, rest = spec.partition("[")
    lo, hi = rest.rstrip("]").split(":")
    if not any(b.endswith("%") for b in (lo, hi)):  # integer bounds: Python's slicing
        assert parsed is not None
        assert parsed[1].apply(rows) == rows[int(lo) if lo else None : int(hi) if hi else None]
    expected = datasets_rule(lo, hi, n)
    if name:  # datasets needs a split name; where it is installed, its own parser is the reference
        real = datasets_rows(spec, n)
        assert real == "absent" or real == expected, f"{spec!r}: datasets reads {real}"
    if expected is None:
        assert parsed is None, f"datasets refuses {spec!r}"
    else:
        assert parsed is not None, f"datasets reads {spec!r}"
        assert parsed[1].apply(rows) == expected
