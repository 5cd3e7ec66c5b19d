"""`flowlens trace` end to end: run file, report, bad input recorded per sample, resume, context limit."""

from __future__ import annotations

import json

import numpy as np
from conftest import make_sample, random_video, tiny
from test_data import write_mp4

import flowlens
from flowlens.analyses.trace import TraceOptions
from flowlens.analyses.trace_run import trace
from flowlens.cli import main


def write_dataset(folder) -> str:
    """A JSONL file with two good samples and every kind of bad one."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        write_mp4(folder / f"{name}.mp4", rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8))
    (folder / "corrupt.mp4").write_bytes(b"\x00" * 100)
    good = {"question": "What moved?", "options": ["red ball", "blue box"], "answer": "A"}
    lines = [
        json.dumps({"id": "a", "video": "a.mp4", **good}),
        json.dumps({"id": "missing", "video": "nope.mp4", **good}),
        json.dumps({"id": "corrupt", "video": "corrupt.mp4", **good}),
        json.dumps({"id": "no_options", "video": "a.mp4", "question": "What?", "options": [], "answer": "A"}),
        json.dumps({"id": "bad_answer", "video": "a.mp4", **{**good, "answer": "green star"}}),
        "{not json",
        json.dumps({"id": "b", "video": "b.mp4", **good}),
    ]
    path = folder / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_cli_trace_records_failures_and_goes_on(tmp_path, capsys):
    data = write_dataset(tmp_path)
    out = tmp_path / "run"
    code = main(["trace", "tiny:llava_next_video", "--dataset", data, "--frames", "4", "--out", str(out)])
    assert code == 1  # some samples failed (5), the others are written
    run = flowlens.open_run(out)
    assert run.samples == ["a", "b"]
    failures = run.failures
    assert "not found" in failures["missing"] and "cannot decode" in failures["corrupt"]
    reasons = " ".join(failures.values())
    assert "no options" in reasons and "not one of the options" in reasons and "invalid JSON" in reasons
    assert (out / "trace.html").exists()
    answers = run.table("answers")
    assert list(answers["sample"]) == ["a", "b"]
    assert "5 failed" in capsys.readouterr().out


def test_resume_skips_finished_samples(tmp_path):
    lm = tiny("llava_next_video")
    samples = [make_sample(random_video(seed=i, frames=8)) for i in range(3)]
    for i, s in enumerate(samples):
        s.id = f"s{i}"
    options = TraceOptions(frames=4)
    first = trace(lm, samples[:2], tmp_path, options, report=False, progress=False)
    kept = first.sample("s0").segment_flow.copy()
    first.close()
    calls = []
    original = lm.prepare

    def counting(sample, frames=8, template=None):
        calls.append(sample.id)
        return original(sample, frames=frames, template=template)

    lm.prepare = counting
    try:
        run = trace(lm, samples, tmp_path, options, resume=True, report=False, progress=False)
    finally:
        del lm.prepare
    assert calls == ["s2"]
    assert run.samples == ["s0", "s1", "s2"]
    np.testing.assert_array_equal(run.sample("s0").segment_flow, kept)


def test_too_long_input_is_refused_with_counts(tmp_path):
    lm = flowlens.load("tiny:llava_next_video")
    lm.adapter.text_config.max_position_embeddings = 64
    run = trace(
        lm,
        [make_sample(random_video(frames=8))],
        tmp_path,
        TraceOptions(frames=8),
        report=False,
        progress=False,
    )
    (reason,) = run.failures.values()
    assert "more than the model's context of 64" in reason and "tokens" in reason
