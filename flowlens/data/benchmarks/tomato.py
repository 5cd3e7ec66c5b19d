"""TOMATO (Shangguan et al., 2024): `data/<reasoning type>.json`, videos in `videos/<demonstration type>/<key>.mp4`.

As in the official repository (yale-nlp/TOMATO), each file maps an id to a record whose `answer`
is the 0-based index of the correct option (so 3 is option D); from `data/rotation.json`:

    "0": {"question": "Which direction(s) does the person's hand rotate in?",
          "options": ["No rotation.", "Clockwise then counter-clockwise.", "Counter-clockwise then clockwise.",
                      "Clockwise throughout.", "Counter-clockwise throughout."],
          "answer": 3, "key": "0215-06", "video_source_url": "", "motion_type": "rotation",
          "variation": {"counterfactual": 0, "composite": 0, "zoom": 1, "first_person": 0},
          "demonstration_type": "human", "note": "Eason rotating hand clockwise"}

The video path is the one `src/generate_lib/*.py` builds: `videos/<demonstration_type>/<key>.mp4`.
The reasoning type (file stem) is the task; ids are `<reasoning type>/<id>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowlens.data.benchmarks.common import (
    Collected,
    index_letter,
    read_json,
    require_fields,
    require_no_split,
    require_root,
    select,
)
from flowlens.data.jsonl import SampleList
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError

REASONING_TYPES = ("count", "direction", "rotation", "shape&trend", "velocity&frequency", "visual_cues")
FIELDS = ("question", "options", "answer", "key", "demonstration_type")
TEMPLATE = "mvbench"


def record_to_sample(reasoning: str, key: str, record: Any, root: Path) -> Sample:
    """One record of a reasoning-type file as a `Sample`."""
    record = require_fields(record, FIELDS)
    options = record["options"]
    if not isinstance(options, list) or not options:
        raise SampleError("malformed annotation: `options` must be a non-empty list")
    options = [str(o) for o in options]
    extra = {k: v for k, v in record.items() if k not in ("question", "options", "answer")}
    return Sample(
        id=f"{reasoning}/{key}",
        video=str(root / "videos" / str(record["demonstration_type"]) / f"{record['key']}.mp4"),
        question=str(record["question"]).strip(),
        options=options,
        answer=index_letter(record["answer"], len(options)),
        metadata={"task": reasoning, "benchmark": "tomato", "template": TEMPLATE, **extra},
    )


def load_tomato(
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """Every record of the selected reasoning types; a type whose file is absent is skipped with a note."""
    root = require_root(data_dir, "tomato")
    part = require_no_split(split, "tomato")
    chosen = select(REASONING_TYPES, task, "tomato")
    out = Collected("tomato")
    absent = [r for r in chosen if not (root / "data" / f"{r}.json").is_file()]
    out.note_absent(absent, root / "data")
    for reasoning in chosen:
        path = root / "data" / f"{reasoning}.json"
        if reasoning in absent:
            continue
        try:
            records = read_json(path)
            if not isinstance(records, dict):
                raise SampleError("malformed annotation file: expected a JSON object of id -> record")
        except SampleError as exc:
            out.fail(path, 0, str(exc))
            continue
        for line, (key, record) in enumerate(records.items(), start=1):
            try:
                sample = record_to_sample(reasoning, str(key), record, root)
            except SampleError as exc:
                out.fail(path, line, f"record {key}: {exc}")
                continue
            out.add(sample, path, line)
    if len(absent) == len(chosen):
        raise FlowlensError(
            f"tomato: no reasoning-type files ({', '.join(f'{r}.json' for r in chosen)}) in {root / 'data'}; "
            "--data-dir must be the TOMATO repository root (with data/ and videos/)"
        )
    return out.finish(part, limit)
