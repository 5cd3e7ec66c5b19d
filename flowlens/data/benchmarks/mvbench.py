"""MVBench and TVBench: one JSON list per task in `json/`, videos under `video/<task prefix>/`.

Both follow MVBench's `data_list` (VideoChat2's `mvbench.ipynb`; TVBench's `infer.ipynb` uses the
same code): task -> (json file, video prefix, data type, bound). A record (TVBench `action_sequence.json`):

    {"video": "6H78U.mp4", "question": "What did the person do first?",
     "answer": "Put down the blanket.", "candidates": ["Put down the blanket.", "Took the towel."],
     "question_id": "Sequence_T3_5", "start": 16.6, "end": 25.6}

The video is `<root>/video/<prefix><video>`; options are `candidates` in order, lettered A, B, ...;
the answer letter is that of the candidate equal to `answer` (the last such, as `qa_template` does).
Tasks with `bound` keep `start`/`end` (seconds) in the sample's metadata; `frame` tasks are folders
of frame images at 3 fps (MVBench's `read_frame`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flowlens.data.benchmarks.common import (
    Collected,
    TaskFile,
    read_json,
    require_fields,
    require_no_split,
    require_root,
    seconds,
    select,
)
from flowlens.data.jsonl import SampleList
from flowlens.data.sample import OPTION_LETTERS, Sample
from flowlens.errors import FlowlensError, SampleError

FRAME_FOLDER_FPS = 3.0  # MVBench's read_frame(fps=3): TVQA frames extracted at 3 fps
TEMPLATE = "mvbench"
FIELDS = ("video", "question", "candidates", "answer")

MVBENCH_TASKS = (
    TaskFile("Action Sequence", "action_sequence.json", "star/Charades_v1_480/", bound=True),
    TaskFile("Action Prediction", "action_prediction.json", "star/Charades_v1_480/", bound=True),
    TaskFile("Action Antonym", "action_antonym.json", "ssv2_video/"),
    TaskFile("Fine-grained Action", "fine_grained_action.json", "Moments_in_Time_Raw/videos/"),
    TaskFile("Unexpected Action", "unexpected_action.json", "FunQA_test/test/"),
    TaskFile("Object Existence", "object_existence.json", "clevrer/video_validation/"),
    TaskFile("Object Interaction", "object_interaction.json", "star/Charades_v1_480/", bound=True),
    TaskFile("Object Shuffle", "object_shuffle.json", "perception/videos/"),
    TaskFile("Moving Direction", "moving_direction.json", "clevrer/video_validation/"),
    TaskFile("Action Localization", "action_localization.json", "sta/sta_video/", bound=True),
    TaskFile("Scene Transition", "scene_transition.json", "scene_qa/video/"),
    TaskFile("Action Count", "action_count.json", "perception/videos/"),
    TaskFile("Moving Count", "moving_count.json", "clevrer/video_validation/"),
    TaskFile("Moving Attribute", "moving_attribute.json", "clevrer/video_validation/"),
    TaskFile("State Change", "state_change.json", "perception/videos/"),
    TaskFile("Fine-grained Pose", "fine_grained_pose.json", "nturgbd/"),
    TaskFile("Character Order", "character_order.json", "perception/videos/"),
    TaskFile("Egocentric Navigation", "egocentric_navigation.json", "vlnqa/"),
    TaskFile("Episodic Reasoning", "episodic_reasoning.json", "tvqa/frames_fps3_hq/", "frame", bound=True),
    TaskFile("Counterfactual Inference", "counterfactual_inference.json", "clevrer/video_validation/"),
)

TVBENCH_TASKS = (
    TaskFile("Action Count", "action_count.json", "action_count/"),
    TaskFile("Object Count", "object_count.json", "object_count/"),
    TaskFile("Action Sequence", "action_sequence.json", "action_sequence/", bound=True),
    TaskFile("Object Shuffle", "object_shuffle.json", "object_shuffle/"),
    TaskFile("Scene Transition", "scene_transition.json", "scene_transition/"),
    TaskFile("Action Localization", "action_localization.json", "action_localization/", bound=True),
    TaskFile("Action Antonym", "action_antonym.json", "action_antonym/"),
    TaskFile("Unexpected Action", "unexpected_action.json", "unexpected_action/"),
    TaskFile("Egocentric Sequence", "egocentric_sequence.json", "egocentric_sequence/"),
    TaskFile("Moving Direction", "moving_direction.json", "moving_direction/"),
)

BENCHMARK_TASKS = {"mvbench": MVBENCH_TASKS, "tvbench": TVBENCH_TASKS}


def record_to_sample(record: Any, task: TaskFile, number: int, video_root: Path, benchmark: str) -> Sample:
    """One record of a task file (the `number`-th, from 0) as a `Sample`, or `SampleError` saying why not."""
    record = require_fields(record, FIELDS)
    candidates = record["candidates"]
    if not isinstance(candidates, list) or not candidates:
        raise SampleError("malformed annotation: `candidates` must be a non-empty list")
    if len(candidates) > len(OPTION_LETTERS):
        raise SampleError(f"malformed annotation: {len(candidates)} candidates, at most 26 are supported")
    options = [str(c) for c in candidates]
    answer = str(record["answer"])
    matches = [i for i, c in enumerate(options) if c == answer]
    if not matches:
        raise SampleError(f"malformed annotation: answer {answer!r} is not one of the candidates")
    metadata: dict[str, Any] = {
        "task": task.name,
        "task_label": task.label,
        "benchmark": benchmark,
        "template": TEMPLATE,
        "answer_text": answer,
    }
    metadata.update({k: v for k, v in record.items() if k not in (*FIELDS, "start", "end")})
    if task.bound:
        metadata["start"], metadata["end"] = seconds(record, "start"), seconds(record, "end")
    if task.data_type == "frame":
        metadata["fps"] = FRAME_FOLDER_FPS
    return Sample(
        id=f"{task.name}/{number}",
        video=str(video_root / task.prefix / str(record["video"])),
        question=str(record["question"]),
        options=options,
        answer=OPTION_LETTERS[matches[-1]],
        metadata=metadata,
    )


def load_tasks(
    benchmark: str,
    tasks: Sequence[TaskFile],
    data_dir: str | Path | None,
    wanted: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """Every record of the selected tasks; a task whose file is absent is skipped with a note."""
    root = require_root(data_dir, benchmark)
    part = require_no_split(split, benchmark)
    chosen = [
        t for name in select([t.name for t in tasks], wanted, benchmark) for t in tasks if t.name == name
    ]
    out = Collected(benchmark)
    absent = [t.name for t in chosen if not (root / "json" / t.annotation).is_file()]
    out.note_absent(absent, root / "json")
    for task in chosen:
        path = root / "json" / task.annotation
        if task.name in absent:
            continue
        try:
            records = read_json(path)
            if not isinstance(records, list):
                raise SampleError("malformed annotation file: expected a JSON list of records")
        except SampleError as exc:
            out.fail(path, 0, str(exc))
            continue
        for number, record in enumerate(records):
            try:
                sample = record_to_sample(record, task, number, root / "video", benchmark)
            except SampleError as exc:
                out.fail(path, number + 1, str(exc))
                continue
            out.add(sample, path, number + 1)
    if len(absent) == len(chosen):
        raise FlowlensError(
            f"{benchmark}: none of the task files ({', '.join(t.annotation for t in chosen)}) is in "
            f"{root / 'json'}; --data-dir must be the benchmark's root folder (with json/ and video/)"
        )
    return out.finish(part, limit)


def load_mvbench(
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """MVBench (Li et al., 2024): 20 tasks, `json/<task>.json` and `video/<prefix>/` as on the Hub."""
    return load_tasks("mvbench", MVBENCH_TASKS, data_dir, task, split, limit)


def load_tvbench(
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
) -> SampleList:
    """TVBench (Cores et al., 2024): 10 tasks, `json/<task>.json` and `video/<task>/` (unzipped archives)."""
    return load_tasks("tvbench", TVBENCH_TASKS, data_dir, task, split, limit)
