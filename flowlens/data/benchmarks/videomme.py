"""Video-MME (Fu et al., 2024): the Hub parquet `videomme/test-*.parquet` (lmms-lab/Video-MME), videos in `data/`.

The Hub rows have the columns `video_id, duration, domain, sub_category, url, videoID, question_id,
task_type, question, options, answer`: `options` keep their letters (`"A. Black."`) and `answer`
is the letter. The official JSON groups questions by video; a record of its released template
(BradyFU/Video-MME, `evaluation/output_test_template.json`, without the model's `response`):

    {"video_id": "001", "duration_category": "short", "video_category": "Knowledge",
     "video_subcategory": "Humanity & History",
     "questions": [{"question_id": "001-2", "task_type": "Attribute Perception",
                    "question": "What is Moina Michael wearing in the video?",
                    "choices": ["A. Black shirts.", "B. Blue shirts.", "C. Red skirts.", "D. Brown hat."],
                    "answer": "D"}]}

The video is `data/<videoID>.mp4` (the unzipped `videos_chunked_*.zip`), else `.MP4` or `.mkv` as
lmms-eval looks; in the JSON, `videoID` is the YouTube id in `url` (`video_id` when there is none).
Options lose their `A. ` prefix (the template writes it back); the task is `task_type` in snake case.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from flowlens.data.benchmarks.common import (
    Collected,
    exists,
    norm,
    read_json,
    require_fields,
    require_no_split,
    require_root,
)
from flowlens.data.jsonl import SampleList
from flowlens.data.sample import OPTION_LETTERS, Sample
from flowlens.errors import FlowlensError, SampleError

FIELDS = ("videoID", "question_id", "question", "options", "answer")
VIDEO_SUFFIXES = (".mp4", ".MP4", ".mkv")
TEMPLATE = "videomme"
_OPTION = re.compile(r"^([A-Z])\.\s*(.*)$", re.DOTALL)


def strip_letters(options: Any) -> list[str]:
    """`["A. Apples.", "B. Candles."]` -> `["Apples.", "Candles."]`; the letters must run A, B, ... in order."""
    if isinstance(options, (str, dict)) or not hasattr(options, "__iter__"):
        raise SampleError("malformed annotation: `options` must be a list")
    options = list(options)
    if len(options) > len(OPTION_LETTERS):
        raise SampleError(f"malformed annotation: {len(options)} options, at most 26 are supported")
    texts = []
    for j, option in enumerate(options):
        match = _OPTION.match(str(option).strip())
        if not match or match[1] != OPTION_LETTERS[j]:
            raise SampleError(f"malformed annotation: option {option!r} is not `{OPTION_LETTERS[j]}. ...`")
        texts.append(match[2].strip())
    return texts


def video_path(root: Path, video_id: str) -> Path:
    """`data/<videoID>.mp4`, or the first of `.MP4` / `.mkv` that exists (the `.mp4` path when none does)."""
    for suffix in VIDEO_SUFFIXES:
        path = root / "data" / f"{video_id}{suffix}"
        if exists(path):
            return path
    return root / "data" / f"{video_id}.mp4"


def row_to_sample(row: Any, root: Path) -> Sample:
    """One Hub row as a `Sample` (answer letter as given, options without their letters)."""
    row = require_fields(row, FIELDS)
    options = strip_letters(row["options"])
    answer = str(row["answer"]).strip()
    if answer not in OPTION_LETTERS[: len(options)]:
        raise SampleError(f"malformed annotation: answer {answer!r} is not an option letter")
    extra = {k: v for k, v in row.items() if k not in ("question", "options", "answer")}
    return Sample(
        id=str(row["question_id"]),
        video=str(video_path(root, str(row["videoID"]))),
        question=str(row["question"]).strip(),
        options=options,
        answer=answer,
        metadata={
            "task": norm(row.get("task_type") or "videomme"),
            "benchmark": "videomme",
            "template": TEMPLATE,
            **extra,
        },
    )


def official_rows(videos: Any) -> Iterator[dict[str, Any]]:
    """Rows in the Hub's columns from the official JSON (a list of videos, each with `questions`)."""
    for video in videos if isinstance(videos, list) else [videos]:
        if not isinstance(video, dict):
            yield {}
            continue
        url = str(video.get("url") or "")
        try:
            youtube = parse_qs(urlparse(url).query).get("v", [None])[0]
        except ValueError:  # not a URL, e.g. "http://[oops"
            youtube = None
        questions = video.get("questions") or [{}]
        for question in questions if isinstance(questions, list) else [questions]:
            if not isinstance(question, dict):
                yield {}
                continue
            yield {
                "video_id": video.get("video_id"),
                "duration": video.get("duration_category") or video.get("duration"),
                "domain": video.get("video_category"),
                "sub_category": video.get("video_subcategory") or video.get("video_sub_category"),
                "url": url,
                "videoID": youtube or video.get("videoID") or video.get("video_id"),
                "question_id": question.get("question_id"),
                "task_type": question.get("task_type"),
                "question": question.get("question"),
                "options": question.get("choices") or question.get("options"),
                "answer": question.get("answer"),
            }


def find_annotation(root: Path) -> Path:
    """The Hub parquet (`videomme/test-*.parquet`, or any parquet in the root), else a JSON in the root."""
    for pattern in ("videomme/test-*.parquet", "videomme/*.parquet", "*.parquet", "*.json"):
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
    raise FlowlensError(
        f"videomme: no videomme/test-*.parquet (or Video-MME JSON) in {root}; "
        "--data-dir must be the Video-MME root folder with data/ holding the videos"
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of the parquet or official JSON file."""
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise SampleError(f"malformed annotation file: cannot read parquet: {exc}") from exc
        return frame.to_dict(orient="records")
    return list(official_rows(read_json(path)))


def load_videomme(
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """Every question (2,700 in the release); `task` keeps task types such as `temporal_reasoning`."""
    root = require_root(data_dir, "videomme")
    part = require_no_split(split, "videomme")
    path = find_annotation(root)
    keep = {norm(t) for t in task or []}
    out = Collected("videomme")
    try:
        rows = read_rows(path)
    except SampleError as exc:
        out.fail(path, 0, str(exc))
        return out.finish(part, limit)
    for line, row in enumerate(rows, start=1):
        try:
            sample = row_to_sample(row, root)
        except SampleError as exc:
            out.fail(path, line, str(exc))
            continue
        if not keep or sample.metadata["task"] in keep:
            out.add(sample, path, line)
    if keep and not any(isinstance(e, Sample) for e in out.entries):
        raise FlowlensError(f"videomme: no question of task {', '.join(sorted(keep))} in {path.name}")
    return out.finish(part, limit)
