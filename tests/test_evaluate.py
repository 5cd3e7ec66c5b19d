"""`flowlens eval` and `flowlens.analyses.evaluate`: per-task accuracy, frame interventions, recorded failures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_sample, tiny

import flowlens.data
from flowlens.analyses.evaluate import evaluate
from flowlens.analyses.frames import blank_frames, shuffled_frames, transformed_frames
from flowlens.cli import main
from flowlens.zoo import TOY_DIR

needs_toy = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="toy weights not built")


def test_frame_transforms_change_only_the_pixels():
    lm = tiny("llava_next_video")
    sample = make_sample()
    base = lm.adapter.sample_frames(sample, 8)
    with transformed_frames(lm, blank_frames):
        blank = lm.adapter.sample_frames(sample, 8)
        _, layout = lm.prepare(sample)
    assert not blank.frames.any() and np.array_equal(blank.indices, base.indices)
    assert layout.n_frames == 8
    with transformed_frames(lm, shuffled_frames(3)):
        shuffled = lm.adapter.sample_frames(sample, 8)
        again = lm.adapter.sample_frames(sample, 8)
    np.testing.assert_array_equal(shuffled.frames, again.frames)  # seeded
    assert not np.array_equal(shuffled.frames, base.frames)
    assert sorted(map(bytes, shuffled.frames)) == sorted(map(bytes, base.frames))  # a permutation
    assert np.array_equal(lm.adapter.sample_frames(sample, 8).frames, base.frames)  # restored


def test_failed_samples_are_counted_and_the_run_goes_on(tmp_path):
    samples = flowlens.data.load("synthetic", seed=31, limit=4)
    rows = [
        json.dumps(
            {
                "id": s.id,
                "video": s.video,
                "question": s.question,
                "options": s.options,
                "answer": s.answer,
                "task": s.metadata["task"],
            }
        )
        for s in samples
    ]
    rows.append(
        json.dumps(
            {
                "id": "gone",
                "video": "missing.mp4",
                "question": "Which?",
                "options": ["a", "b"],
                "answer": "A",
                "task": "static",
            }
        )
    )
    rows.append("{broken")
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    result = evaluate(tiny("llava_next_video"), flowlens.data.load(tmp_path / "d.jsonl"), progress=False)
    assert len(result.samples) == 4 and len(result.failures) == 2  # 4 evaluated; a missing video, a bad line
    reasons = [f["reason"] for f in result.failures]
    assert any("video not found" in r for r in reasons) and any("invalid JSON" in r for r in reasons)
    overall = result.summary.set_index("task").loc["all"]
    assert overall["n"] == 4 and overall["failed"] == 2
    scored = result.samples.dropna(subset=["predicted"])
    for probs, letter in zip(scored["probs"], scored["predicted_letter"], strict=True):
        assert 0 < sum(probs.values()) <= 1 + 1e-6  # softmax over the whole vocabulary, option letters only
        assert letter == max(probs, key=probs.get)


@needs_toy
def test_cli_eval_json_blind_and_shuffled(capsys, tmp_path):
    args = ["eval", "toy", "--dataset", "synthetic", "--seed", "5", "--limit", "20"]
    assert main([*args, "--json", "--out", str(tmp_path / "video")]) == 0
    report = json.loads(capsys.readouterr().out)
    summary = {row["task"]: row for row in report["summary"]}
    assert summary["all"]["n"] == 20 and summary["all"]["failed"] == 0 and not report["failures"]
    assert summary["static"]["accuracy"] >= 0.75
    assert main([*args, "--blind", "--out", str(tmp_path / "blind")]) == 0
    table = capsys.readouterr().out
    assert "blind" in table and "static" in table and "all" in table
    assert main([*args, "--shuffle-frames", "--json", "--out", str(tmp_path / "shuffled")]) == 0
    assert json.loads(capsys.readouterr().out)["settings"]["shuffle_frames"] is True


def test_cli_eval_errors_exit_2(capsys, tmp_path):
    assert main(["eval", "tiny:llava_next_video", "--dataset", "kinetics"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    args = ["eval", "tiny:llava_next_video", "--dataset", "synthetic", "--limit", "2"]
    assert main([*args, "--blind", "--shuffle-frames"]) == 2
    assert "exclusive" in capsys.readouterr().err
    assert main(["eval", "tiny:llava_next_video", "--dataset", str(tmp_path / "none.jsonl")]) == 2
    assert "not found" in capsys.readouterr().err
