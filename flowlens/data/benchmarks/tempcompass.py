"""TempCompass multi-choice (Liu et al., 2024): `questions/multi-choice.json`, videos in `videos/<video_id>.mp4`.

As in the official repository (llyx97/TempCompass), the file maps video id -> temporal aspect
(`action`, `speed`, `direction`, `order`, `attribute_change`) -> questions; the options are lines of
the question text and the answer repeats its option with the letter:

    {"1034419625": {"action": [{"question": "What is the man doing in the video?\\nA. dunking a
      basketball\\nB. dribbling a basketball\\nC. passing a basketball",
      "answer": "A. dunking a basketball"}, ...], "direction": [...]}, ...}

The aspect is the sample's task; its id is `<video_id>/<aspect>/<n>`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowlens.data.benchmarks.common import Collected, read_json, require_no_split, require_root, select
from flowlens.data.jsonl import SampleList
from flowlens.data.sample import OPTION_LETTERS, Sample
from flowlens.errors import FlowlensError, SampleError

ASPECTS = ("action", "speed", "direction", "order", "attribute_change")
ANNOTATION = Path("questions") / "multi-choice.json"
TEMPLATE = "tempcompass"
_OPTION = re.compile(r"^([A-Z])\.\s?(.*)$")


def split_options(text: str) -> tuple[str, list[str]]:
    """`question\\nA. x\\nB. y` -> (question, [x, y]); the letters must run A, B, ... in order."""
    lines = [line.strip() for line in str(text).strip().splitlines()]
    first = next((i for i, line in enumerate(lines) if _OPTION.match(line)), None)
    if first is None or first == 0:
        raise SampleError("malformed annotation: no `A. ...` option lines after the question")
    if len(lines) - first > len(OPTION_LETTERS):
        raise SampleError(
            f"malformed annotation: {len(lines) - first} option lines, at most 26 are supported"
        )
    options = []
    for j, line in enumerate(lines[first:]):
        match = _OPTION.match(line)
        if not match or match[1] != OPTION_LETTERS[j]:
            raise SampleError(f"malformed annotation: option line {line!r} is not `{OPTION_LETTERS[j]}. ...`")
        options.append(match[2].strip())
    return " ".join(lines[:first]), options


def answer_letter(answer: Any, options: list[str]) -> str:
    """The letter of an answer written `B. text` (its text must be option B's)."""
    match = _OPTION.match(str(answer).strip())
    if not match or match[1] not in OPTION_LETTERS[: len(options)]:
        raise SampleError(f"malformed annotation: answer {answer!r} is not `<letter>. <option>`")
    letter = match[1]
    if match[2].strip() != options[OPTION_LETTERS.index(letter)]:
        raise SampleError(f"malformed annotation: answer {answer!r} does not match option {letter}")
    return letter


def item_to_sample(video_id: str, aspect: str, number: int, item: Any, video_root: Path) -> Sample:
    """One question of a video and aspect as a `Sample`."""
    if not isinstance(item, dict) or not item.get("question") or not item.get("answer"):
        raise SampleError("missing fields: question, answer")
    question, options = split_options(item["question"])
    return Sample(
        id=f"{video_id}/{aspect}/{number}",
        video=str(video_root / f"{video_id}.mp4"),
        question=question,
        options=options,
        answer=answer_letter(item["answer"], options),
        metadata={"task": aspect, "benchmark": "tempcompass", "template": TEMPLATE, "video_id": video_id},
    )


def load_tempcompass(
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """Every multi-choice question of the selected aspects, in file order."""
    root = require_root(data_dir, "tempcompass")
    part = require_no_split(split, "tempcompass")
    aspects = set(select(ASPECTS, task, "tempcompass")) if task else None
    path = root / ANNOTATION
    if not path.is_file():
        raise FlowlensError(
            f"tempcompass: {path} not found; --data-dir must be the TempCompass repository root"
        )
    out = Collected("tempcompass")
    try:
        data = read_json(path)
        if not isinstance(data, dict):
            raise SampleError("malformed annotation file: expected a JSON object of videos")
    except SampleError as exc:
        out.fail(path, 0, str(exc))
        return out.finish(part, limit)
    line = 0
    for video_id, by_aspect in data.items():
        if not isinstance(by_aspect, dict) or not all(isinstance(v, list) for v in by_aspect.values()):
            line += 1
            out.fail(path, line, f"{video_id}: malformed annotation: expected {{aspect: [questions]}}")
            continue
        for aspect, items in by_aspect.items():
            if aspects is not None and aspect not in aspects:
                continue
            for number, item in enumerate(items):
                line += 1
                try:
                    sample = item_to_sample(str(video_id), aspect, number, item, root / "videos")
                except SampleError as exc:
                    out.fail(path, line, f"{video_id}/{aspect}/{number}: {exc}")
                    continue
                out.add(sample, path, line)
    return out.finish(part, limit)
