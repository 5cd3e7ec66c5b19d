"""On the trained toy model, blocking every edge out of the video in every layer drops temporal-task
accuracy to the blind (no-video) floor: the knockout engine removes exactly the video's influence."""

from __future__ import annotations

import pandas as pd
import pytest

import flowlens
from flowlens.analyses.evaluate import evaluate
from flowlens.analyses.knockout import SweepOptions, sweep_sample
from flowlens.data.synthetic import TEMPORAL_TASKS
from flowlens.engine.spec import Block, BlockSet
from flowlens.zoo import TOY_DIR

pytestmark = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="toy weights not built")
N = 100  # 20 per task: per-task accuracies move by ~0.1 from sample noise alone


def test_blocking_the_video_everywhere_gives_the_blind_floor():
    lm = flowlens.load("toy")
    samples = flowlens.data.load("synthetic", split="test", limit=N)
    readers = ["pre_question", "question", "post_question", "last"]  # every query after the video
    cut = BlockSet("video-out", [("video->everything", tuple(Block("video", g) for g in readers))])
    options = SweepOptions(style="top_down", centres=[0], frames=8)  # layers [0, L): every layer
    rows = []
    for sample in samples:
        result = sweep_sample(lm, sample, cut, options)
        rows.append(
            {
                "task": sample.metadata["task"],
                "ko": result.rows["new_correct"][0],
                "clean": result.clean.correct,
            }
        )
    table = pd.DataFrame(rows)
    blind = evaluate(lm, samples, frames=8, blind=True, progress=False).samples
    blind_by_task = blind.groupby("task")["correct"].mean()
    by_task = table.groupby("task")[["ko", "clean"]].mean()
    chance = {s.metadata["task"]: 1 / len(s.options) for s in samples}
    for task in TEMPORAL_TASKS:
        assert by_task.loc[task, "clean"] >= 0.9, by_task  # the video mattered
        assert by_task.loc[task, "ko"] <= chance[task] + 0.2, (by_task, blind_by_task)
    temporal = table["task"].isin(TEMPORAL_TASKS)
    pooled_ko = table.loc[temporal, "ko"].mean()
    pooled_blind = blind.loc[blind["task"].isin(TEMPORAL_TASKS), "correct"].mean()
    assert abs(pooled_ko - pooled_blind) <= 0.1, (by_task, blind_by_task)
