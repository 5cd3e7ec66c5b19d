"""Synthetic temporal VideoQA: determinism, balance, no leaks, visibility; the JSONL format and its failures."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

import flowlens.data
from flowlens.data import synthetic
from flowlens.data.jsonl import read_jsonl, write_jsonl
from flowlens.data.video import read_frames, uniform_indices
from flowlens.errors import FlowlensError


def decoded(folder, record) -> np.ndarray:
    n = record["metadata"]["n_frames"]
    return read_frames(folder / record["video"], n).frames


def test_same_seed_gives_identical_jsonl_and_frames(tmp_path):
    a = synthetic.generate(11, 10, tmp_path / "a")
    b = synthetic.generate(11, 10, tmp_path / "b")
    assert a.read_bytes() == b.read_bytes()
    records = [json.loads(line) for line in a.read_text().splitlines()]
    assert {r["task"] for r in records} == set(synthetic.TASKS)
    for r in records:
        np.testing.assert_array_equal(decoded(a.parent, r), decoded(b.parent, r))
        assert decoded(a.parent, r).shape == (r["metadata"]["n_frames"], 64, 64, 3)
    other = synthetic.generate(12, 10, tmp_path / "c")
    assert other.read_bytes() != a.read_bytes()


def test_sample_does_not_depend_on_set_size():
    for i in (0, 7, 33):
        small, frames_small = synthetic.make_sample(5, i)
        large, frames_large = synthetic.make_sample(5, i)
        assert small == large and np.array_equal(frames_small, frames_large)


def test_answers_balanced_and_options_shuffled():
    records = [synthetic.make_sample(3, i)[0] for i in range(400)]
    by_task = Counter(r["task"] for r in records)
    assert set(by_task.values()) == {80}
    for task in synthetic.TASKS:
        rows = [r for r in records if r["task"] == task]
        k = synthetic.N_OPTIONS[task]
        assert all(len(r["options"]) == k and len(set(r["options"])) == k for r in rows)
        assert Counter(r["answer"] for r in rows) == {chr(65 + j): 80 // k for j in range(k)}
        orders = Counter(tuple(r["options"]) for r in rows)
        assert len(orders) > 1 and orders.most_common(1)[0][1] < len(rows) / 2


def test_questions_do_not_leak_the_answer():
    records = [synthetic.make_sample(4, i)[0] for i in range(400)]
    for r in records:
        answer_text = r["options"][ord(r["answer"]) - 65]
        assert answer_text == r["metadata"]["answer_text"]
        assert not set(answer_text.split()) & set(r["question"].rstrip("?").split()), r
    # A question-only guesser (majority letter per question text) stays near chance.
    groups: dict[str, Counter] = {}
    for r in records:
        groups.setdefault(r["question"], Counter())[r["answer"]] += 1
    best = sum(c.most_common(1)[0][1] for c in groups.values()) / len(records)
    chance = np.mean([1 / synthetic.N_OPTIONS[r["task"]] for r in records])
    assert best < chance + 0.15


@pytest.mark.parametrize("n_frames", range(synthetic.MIN_FRAMES, synthetic.MAX_FRAMES + 1))
def test_every_event_is_visible_with_eight_sampled_frames(n_frames):
    sampled = uniform_indices(n_frames, synthetic.SAMPLED_FRAMES)
    for slots in (4, 8):
        starts = [*synthetic.slot_starts(n_frames, slots), n_frames]
        hits = [int(np.sum((sampled >= starts[j]) & (sampled < starts[j + 1]))) for j in range(slots)]
        assert hits == [synthetic.SAMPLED_FRAMES // slots] * slots


def test_rendered_events_match_the_annotation(tmp_path):
    """Event order and counts are readable from the 8 sampled frames of the decoded mp4."""
    path = synthetic.generate(21, 40, tmp_path)
    for r in map(json.loads, path.read_text().splitlines()):
        frames = read_frames(path.parent / r["video"], 8).frames.astype(int)
        busy = np.abs(frames - np.array([96, 96, 96])).sum(-1) > 60  # pixels off the grey background
        if r["task"] == "object_count":
            assert sum(busy[2 * j : 2 * j + 2].any() for j in range(4)) == r["metadata"]["count"]
        if r["task"] == "event_order":
            assert all(busy[2 * j : 2 * j + 2].any() for j in range(4))


def test_cache_is_reused_and_limit_sets_the_size(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWLENS_CACHE", str(tmp_path))
    first = flowlens.data.load("synthetic", seed=9, limit=5)
    assert (tmp_path / "synthetic" / "9-5" / "annotations.jsonl").exists()
    again = flowlens.data.load("synthetic", seed=9, limit=5)
    assert [s.id for s in first] == [s.id for s in again] and len(first) == 5 and not first.failures
    assert first[0].metadata["task"] in synthetic.TASKS
    assert not list((tmp_path / "synthetic").glob(".*"))  # no staging folders left behind
    with pytest.raises(FlowlensError, match="either a split or a seed"):
        flowlens.data.load("synthetic", split="test", seed=1)
    with pytest.raises(FlowlensError, match="unknown synthetic split"):
        flowlens.data.load("synthetic", split="dev")
    with pytest.raises(FlowlensError, match="unknown dataset"):
        flowlens.data.load("kinetics")


def test_jsonl_round_trip(tmp_path):
    path = synthetic.generate(13, 6, tmp_path / "set")
    samples = read_jsonl(path)
    assert len(samples) == 6 and not samples.failures
    assert all(s.video.startswith(str(path.parent)) for s in samples)
    copy = write_jsonl(samples, path.parent / "copy.jsonl")
    again = read_jsonl(copy)
    assert [vars(s) for s in again] == [vars(s) for s in samples]
    assert json.loads(copy.read_text().splitlines()[0])["video"].startswith("videos/")


def test_malformed_lines_are_recorded_not_raised(tmp_path):
    good = {
        "id": "a",
        "video": "a.mp4",
        "question": "Which?",
        "options": ["x", "y"],
        "answer": "B",
        "task": "t",
    }
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({k: v for k, v in good.items() if k != "options"} | {"id": "b"}),
        "",
        json.dumps(good | {"id": "c", "answer": "z"}),
        json.dumps(good | {"id": "d", "options": "x, y"}),
        json.dumps(good),
        "[1, 2]",
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    samples = flowlens.data.load(tmp_path / "d.jsonl")
    assert [s.id for s in samples] == ["a"]
    assert samples[0].video == str(tmp_path / "a.mp4") and samples[0].metadata == {"task": "t"}
    reasons = {f.line: f.reason for f in samples.failures}
    assert sorted(reasons) == [2, 3, 5, 6, 7, 8]
    assert "invalid JSON" in reasons[2]
    assert "missing field: options" in reasons[3]
    assert "not one of the options" in reasons[5]
    assert "list of strings" in reasons[6]
    assert "duplicate id" in reasons[7]
    assert "JSON object" in reasons[8]


def test_clips_are_lossless_so_every_machine_decodes_the_same_pixels(tmp_path):
    """x264's bytes can differ between runs; at qp 0 the decoded frames cannot (they are the yuv input)."""
    import av

    from flowlens.data.video_writer import write_mp4

    record, frames = synthetic.make_sample(1001, 18)
    write_mp4(tmp_path / "clip.mp4", frames)
    expected = np.stack(
        [
            av.VideoFrame.from_ndarray(f, format="rgb24")
            .reformat(format="yuv420p")
            .to_ndarray(format="rgb24")
            for f in frames
        ]
    )
    got = read_frames(tmp_path / "clip.mp4", len(frames)).frames
    np.testing.assert_array_equal(got, expected)
