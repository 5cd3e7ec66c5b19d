"""Toy training code: the batch schedule, the per-frame target positions, and a tiny end-to-end run
whose output loads through `flowlens.load` like the shipped model."""

from __future__ import annotations

import json

import pytest
import torch

import flowlens
from flowlens.zoo.encoding import frame_ends, frame_word_ids
from flowlens.zoo.toy_model import ToyArchitecture, toy_components
from flowlens.zoo.train_toy import LOG_NAME, TrainConfig, run, schedule


def test_frame_ends_are_the_last_video_token_of_each_frame():
    video = 9
    row = [1, 2] + [video] * 6 + [3, 4]  # 3 frames of 2 tokens
    ids = torch.tensor([row, [5] + [video] * 6 + [3, 4, 0]])
    assert frame_ends(ids, video, frames=3).tolist() == [[3, 5, 7], [2, 4, 6]]


def test_in_video_targets_are_what_the_video_alone_determines():
    tokenizer = toy_components(ToyArchitecture())[1].tokenizer
    samples = flowlens.data.load("synthetic", seed=5, limit=5)
    words = dict(
        zip([s.metadata["task"] for s in samples], frame_word_ids(samples, tokenizer).tolist(), strict=True)
    )
    by_task = {s.metadata["task"]: s.metadata for s in samples}
    assert tokenizer.decode([words["moving_direction"]]) == by_task["moving_direction"]["direction"]
    assert tokenizer.decode([words["event_order"]]) == by_task["event_order"]["sequence"][0].split()[0]
    assert words["static"] == words["object_count"] == words["scene_transition"] == -1


def test_schedule_leads_with_lead_tasks_then_shows_every_sample_once_per_epoch():
    tasks = ["moving_direction", "static", "event_order", "moving_direction", "static"] * 4
    cfg = TrainConfig(epochs=2, batch_size=3, lead=(("moving_direction", 5),))
    phases = schedule(cfg, tasks, torch.Generator().manual_seed(0))
    assert len(phases) == 3 and len(phases[0]) == 5
    assert all(tasks[i] == "moving_direction" for b in phases[0] for i in b.tolist())
    for epoch in phases[1:]:
        assert sorted(torch.cat(epoch).tolist()) == list(range(len(tasks)))
    again = schedule(cfg, tasks, torch.Generator().manual_seed(0))
    assert all(
        torch.equal(a, b) for p, q in zip(phases, again, strict=True) for a, b in zip(p, q, strict=True)
    )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_tiny_training_run_saves_a_loadable_model_and_a_log(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWLENS_CACHE", str(tmp_path / "cache"))
    cfg = TrainConfig(
        train_size=10,
        val_size=5,
        text_steps=2,
        text_batch_size=4,
        epochs=1,
        batch_size=4,
        lead=(("moving_direction", 2),),
        warmup_steps=1,
        workers=1,
    )
    out = tmp_path / "toy"
    log = run(cfg, out, progress=False)
    assert [p["phase"] for p in log["phases"]] == ["lead moving_direction", "epoch 1"]
    assert log["phases"][0]["steps"] == 2 and log["phases"][1]["steps"] == 3
    saved = json.loads((out / LOG_NAME).read_text())
    assert saved["config"]["lead"] == [["moving_direction", 2]] and set(saved["final_val_accuracy"]) >= {
        "all"
    }
    lm = flowlens.load(str(out))
    assert lm.family == "llava_next_video" and lm.template.system is None
    sample = flowlens.data.load("synthetic", seed=5, limit=5)[0]
    inputs, layout = lm.prepare(sample)
    assert lm.tokenizer.unk_token_id not in inputs["input_ids"][0].tolist()
    assert layout.n_frames == 8
