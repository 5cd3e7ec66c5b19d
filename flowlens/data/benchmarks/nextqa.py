"""NExT-QA multiple choice (Xiao et al., 2021): `nextqa/<split>.csv`, videos in `NExTVideo/`.

As released (doc-doc/NExT-QA, `dataset/nextqa/`), one CSV per split with five answers `a0`..`a4`
and the correct one's 0-based index in `answer` (so 2 is option C):

    video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4
    4010069381,369,640,480,how do the two man play the instrument,0,6,CH,roll the handle,tap their feet,...

`map_vid_vidorID.json` (next to the CSV) maps a video to its VidOR folder: the video is
`NExTVideo/<map[video]>.mp4` (e.g. `NExTVideo/1164/4010069381.mp4`); without the map, or when
that file is absent but `NExTVideo/<video>.mp4` exists (lmms-eval's flat copy), the flat path is used.
The question type (`CW`, `CH`, `TN`, `TC`, `TP`, `DL`, `DO`, `DC`, `DB`) is the task; ids are `<video>_<qid>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowlens.data.benchmarks.common import (
    Collected,
    exists,
    index_letter,
    parse_split,
    read_csv,
    read_json,
    require_fields,
    require_root,
    select,
)
from flowlens.data.jsonl import SampleList
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT = "val"
TYPES = ("CW", "CH", "TN", "TC", "TP", "DL", "DO", "DC", "DB")
ANSWER_COLUMNS = ("a0", "a1", "a2", "a3", "a4")
FIELDS = ("video", "question", "answer", "qid", "type", *ANSWER_COLUMNS)
MAP_FILE = "map_vid_vidorID.json"
ANNOTATION_DIRS = ("nextqa", "dataset/nextqa", ".")
TEMPLATE = "mvbench"


def video_path(root: Path, video: str, vidor: dict[str, str]) -> Path:
    """`NExTVideo/<VidOR folder>/<video>.mp4` by the map, else the flat `NExTVideo/<video>.mp4`."""
    flat = root / "NExTVideo" / f"{video}.mp4"
    if video in vidor:
        mapped = root / "NExTVideo" / f"{vidor[video]}.mp4"
        return flat if not exists(mapped) and exists(flat) else mapped
    return flat


def row_to_sample(row: Any, root: Path, vidor: dict[str, str]) -> Sample:
    """One CSV row (or Hub row with the same columns) as a `Sample`."""
    row = require_fields(row, FIELDS)
    options = [str(row[c]).strip() for c in ANSWER_COLUMNS]
    video = str(row["video"]).strip()
    extra = {k: v for k, v in row.items() if k not in FIELDS}
    return Sample(
        id=f"{video}_{str(row['qid']).strip()}",
        video=str(video_path(root, video, vidor)),
        question=str(row["question"]).strip(),
        options=options,
        answer=index_letter(row["answer"], len(options)),
        metadata={"task": str(row["type"]).strip(), "benchmark": "nextqa", "template": TEMPLATE, **extra},
    )


def find_split_file(root: Path, split: str) -> Path:
    """The split's CSV in the released layout (`nextqa/`, `dataset/nextqa/` or the root itself)."""
    for folder in ANNOTATION_DIRS:
        path = root / folder / f"{split}.csv"
        if path.is_file():
            return path
    raise FlowlensError(
        f"nextqa: no {split}.csv in {', '.join(str(root / d) for d in ANNOTATION_DIRS)}; "
        "--data-dir must hold nextqa/<split>.csv and NExTVideo/"
    )


def load_nextqa(
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """The rows of one split (default `val`), keeping only the question types in `task` when given."""
    root = require_root(data_dir, "nextqa")
    name, part = parse_split(split)
    name = name or DEFAULT_SPLIT
    if name not in SPLITS:
        raise FlowlensError(f"nextqa has no split {name!r} (it has {', '.join(SPLITS)})")
    types = {t.upper() for t in select(TYPES, task, "nextqa")}
    path = find_split_file(root, name)
    out = Collected("nextqa")
    vidor: dict[str, str] = {}
    if (path.parent / MAP_FILE).is_file():
        try:
            vidor = {str(k): str(v) for k, v in read_json(path.parent / MAP_FILE).items()}
        except (SampleError, AttributeError) as exc:
            out.note(f"nextqa: ignoring {path.parent / MAP_FILE} ({exc}); using NExTVideo/<video>.mp4")
    else:
        out.note(f"nextqa: no {MAP_FILE} next to {path.name}; videos are read as NExTVideo/<video>.mp4")
    for line, row in read_csv(path):
        try:
            if isinstance(row, SampleError):
                raise row
            sample = row_to_sample(row, root, vidor)
        except SampleError as exc:
            out.fail(path, line, str(exc))
            continue
        if sample.metadata["task"].upper() in types:
            out.add(sample, path, line)
    return out.finish(part, limit)
