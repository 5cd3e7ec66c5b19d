"""Run files: writer -> reader round trip, crash safety and resume, failures, tidy tables and export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_sample, tiny
from tracegen import random_trace

import flowlens
from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout
from flowlens.store import RunWriter, export_table, open_run, schema
from flowlens.store.edges import EDGES

IDENTITY = {"model": "tiny:llava_next_video", "revision": None, "settings": {"frames": 8}}
CONFIG = {"model": "tiny:llava_next_video", "frames": 8, "limit": 10, "identity": IDENTITY}


def with_identity(**changes: object) -> dict:
    """CONFIG whose identity (what a resumed run must match) has `changes` in `settings` or at the top."""
    settings = {**IDENTITY["settings"], **{k: v for k, v in changes.items() if k in IDENTITY["settings"]}}
    top = {k: v for k, v in changes.items() if k not in IDENTITY["settings"]}
    return {**CONFIG, "identity": {**IDENTITY, **top, "settings": settings}}


MODEL = {"model": "tiny:llava_next_video", "revision": None, "family": "llava_next_video"}
TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def layout() -> TokenLayout:
    return tiny("llava_next_video").prepare(make_sample(), frames=8)[1]


def assert_same_trace(got: flowlens.store.SampleTrace, want: flowlens.store.SampleTrace) -> None:
    assert got.sample_id == want.sample_id
    assert got.layout.to_dict() == want.layout.to_dict()
    for name in (
        "segment_flow",
        "frame_flow",
        "last_to_video",
        "question_to_video",
        "resid_last",
        "resid_frame_mean",
    ):
        expected = getattr(want, name)
        assert getattr(got, name).dtype == expected.dtype, name
        np.testing.assert_array_equal(getattr(got, name), expected, err_msg=name)
    assert sorted(got.resid_video) == sorted(want.resid_video)
    for layer, value in want.resid_video.items():
        np.testing.assert_array_equal(got.resid_video[layer], value)
    assert got.answer.letters == want.answer.letters
    np.testing.assert_array_equal(got.answer.probs, want.answer.probs)
    assert (got.answer.predicted, got.answer.answer, got.answer.correct) == (
        want.answer.predicted,
        want.answer.answer,
        want.answer.correct,
    )
    assert got.metadata == want.metadata


def test_round_trip(tmp_path: Path, layout: TokenLayout) -> None:
    traces = [
        random_trace(
            layout, "b/../first", 0, resid_layers=(1, 3), metadata={"task": "order", "question": "Why?"}
        ),
        random_trace(layout, "a", 1, answer=None),
        random_trace(layout, "ünï cödé %41 <x>", 2, metadata={"task": "count", "n": np.int64(3)}),
    ]
    with RunWriter(tmp_path / "run.h5", CONFIG, MODEL) as writer:
        for trace in traces:
            writer.write_sample(trace)
        assert writer.completed_ids() == [t.sample_id for t in traces]
    assert writer.closed
    with open_run(tmp_path / "run.h5") as run:
        assert run.samples == [t.sample_id for t in traces]  # write order, not alphabetical
        assert len(run) == 3 and "a" in run and "zzz" not in run
        assert run.config == CONFIG and run.model_info == MODEL
        assert run.flowlens_version == flowlens.__version__ and run.created.endswith("+00:00")
        for trace in traces:
            assert_same_trace(run.sample(trace.sample_id), trace)
        assert run.metadata("ünï cödé %41 <x>") == {"task": "count", "n": 3}
        assert run.resid_video_layers("b/../first") == [1, 3]
        assert run.sample("a").answer.correct is None and run.sample("a").answer.answer is None
        np.testing.assert_array_equal(run.array("a", "frame_flow"), traces[1].frame_flow)
        np.testing.assert_array_equal(run.array("b/../first", "resid_video/3"), traces[0].resid_video[3])
        with pytest.raises(FlowlensError, match="no complete sample 'zzz'"):
            run.sample("zzz")
        with pytest.raises(FlowlensError, match="no array 'attention'"):
            run.array("a", "attention")
    with h5py.File(tmp_path / "run.h5", "r") as file:  # plain h5py sees the documented schema
        assert file.attrs["model"] == "tiny:llava_next_video" and file.attrs["revision"] == ""
        group = file["samples"][schema.escape_id("b/../first")]
        assert group.name == "/samples/b%2F%2E%2E%2Ffirst" and group.attrs["complete"]
        flow = group["segment_flow"]
        assert flow.chunks == (1, *flow.shape[1:]) and flow.compression == "gzip"
        assert list(flow.attrs["axes"]) == ["layer", "head", "target", "source"]
        assert group["resid_video/1"].dtype == np.float16 and group["resid_last"].chunks[0] == 1


def test_chunks_fit_one_mebibyte() -> None:
    assert schema.chunk_shape((28, 28, 14, 14), 4) == (1, 28, 14, 14)
    assert schema.chunk_shape((2000, 3584), 2, lead=2000) == (125, 3584)  # resid_video: 875 KiB chunks
    assert schema.chunk_shape((4, 0, 3), 4) is None
    big = schema.chunk_shape((2, 4096, 4096), 4)
    assert big[0] == 1 and np.prod(big) * 4 <= schema.MAX_CHUNK_BYTES


def test_bad_shape_leaves_nothing(tmp_path: Path, layout: TokenLayout) -> None:
    trace = random_trace(layout, "bad")
    trace.frame_flow = trace.frame_flow[:, :, :3]
    with RunWriter(tmp_path / "run.h5", CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "ok"))
        with pytest.raises(ValueError, match="frame_flow has shape"):
            writer.write_sample(trace)
        assert writer.completed_ids() == ["ok"]
    with h5py.File(tmp_path / "run.h5", "r") as file:
        assert list(file["samples"]) == ["ok"]


def test_existing_file_needs_resume_or_overwrite(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "s0"))
    with pytest.raises(FlowlensError, match="already exists"):
        RunWriter(path, CONFIG, MODEL)
    with RunWriter(path, CONFIG, MODEL, overwrite=True) as writer:
        assert writer.completed_ids() == []
    with RunWriter(path, CONFIG, MODEL, resume=True) as writer:
        writer.write_sample(random_trace(layout, "s0"))
        with pytest.raises(FlowlensError, match="already in"):
            writer.write_sample(random_trace(layout, "s0"))


def test_resume_skips_complete_and_rewrites_incomplete(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "s0", 0))
        writer.write_sample(random_trace(layout, "s1", 1))
    with h5py.File(path, "a") as file:  # what a crash in the middle of writing s2 leaves behind
        half = file["samples"].create_group("s2")
        half.attrs.update({"id": "s2", "seq": 2})
        half.create_dataset("segment_flow", data=np.zeros((4, 4, 14, 14), np.float32))
    with open_run(path) as run:
        assert run.samples == ["s0", "s1"]
    resumed = {**CONFIG, "limit": 20}  # a key that does not change what is measured
    with RunWriter(path, resumed, MODEL, resume=True) as writer:
        assert writer.completed_ids() == ["s0", "s1"]
        for i in range(4):
            if f"s{i}" not in writer.completed_ids():
                writer.write_sample(random_trace(layout, f"s{i}", i))
    with open_run(path) as run:
        assert run.samples == ["s0", "s1", "s2", "s3"]
        assert run.config == CONFIG  # the original settings stay
        assert_same_trace(run.sample("s2"), random_trace(layout, "s2", 2))
        assert_same_trace(run.sample("s0"), random_trace(layout, "s0", 0))


def test_resume_refuses_other_settings(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "s0"))
    with pytest.raises(FlowlensError, match=r"settings.frames: 8 in the file, 16 now"):
        RunWriter(path, with_identity(frames=16), MODEL, resume=True)
    with pytest.raises(FlowlensError, match="revision: None in the file, 'abc123' now"):
        RunWriter(path, with_identity(revision="abc123"), MODEL, resume=True)
    with pytest.raises(FlowlensError, match="older flowlens"):  # a file without an identity cannot be checked
        RunWriter(path, {k: v for k, v in CONFIG.items() if k != "identity"}, MODEL, overwrite=True).close()
        RunWriter(path, CONFIG, MODEL, resume=True)
    with RunWriter(path, CONFIG, MODEL, overwrite=True) as writer:
        writer.write_sample(random_trace(layout, "s0"))
    with RunWriter(path, CONFIG, MODEL, resume=True) as writer:  # the refused attempts left the file usable
        assert writer.completed_ids() == ["s0"]


def test_failures_are_recorded_and_retried(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "s0"))
        writer.write_failure("s1", "SampleError: video has 0 frames", {"task": "order"})
        writer.write_failure("s2", "CUDA out of memory")
        with pytest.raises(FlowlensError, match="already complete"):
            writer.write_failure("s0", "late failure")
        assert writer.failed() == {"s1": "SampleError: video has 0 frames", "s2": "CUDA out of memory"}
    with open_run(path) as run:
        assert run.samples == ["s0"]
        assert run.failures == {"s1": "SampleError: video has 0 frames", "s2": "CUDA out of memory"}
        assert run.failure_metadata("s1") == {"task": "order"}
        assert_same_trace(run.sample("s0"), random_trace(layout, "s0"))
        table = run.table("failures")
        assert table[["sample", "reason"]].to_dict("list") == {
            "sample": ["s1", "s2"],
            "reason": list(run.failures.values()),
        }
        assert table["kind"].tolist() == ["other", "other"] and table["line"].isna().all()
    with RunWriter(path, CONFIG, MODEL, resume=True) as writer:  # a retried failure that succeeds is cleared
        writer.write_sample(random_trace(layout, "s2", 2))
        assert writer.failed() == {"s1": "SampleError: video has 0 frames"}
        assert writer.completed_ids() == ["s0", "s2"]


def test_reader_while_writer_is_open(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "s0"))
        with open_run(path) as run:
            assert run.samples == ["s0"]
        writer.write_sample(random_trace(layout, "s1"))
        with open_run(path) as run:
            assert run.samples == ["s0", "s1"]
            assert_same_trace(run.sample("s1"), random_trace(layout, "s1"))


CHILD = """
import sys
from flowlens.models.layout import TokenLayout
from flowlens.store import RunWriter
from tracegen import random_trace
layout = TokenLayout.from_json(open(sys.argv[1]).read())
with RunWriter(sys.argv[2], {config!r}, {model!r}) as writer:
    for i in range(100000):
        print(f"writing s{{i}}", flush=True)
        writer.write_sample(random_trace(layout, f"s{{i}}", i, resid_layers=(0, 1, 2, 3)))
        print(f"done s{{i}}", flush=True)
"""


def test_killed_writer_leaves_a_valid_resumable_file(tmp_path: Path, layout: TokenLayout) -> None:
    path, layout_file = tmp_path / "run.h5", tmp_path / "layout.json"
    layout_file.write_text(layout.to_json())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    code = CHILD.format(config=CONFIG, model=MODEL)
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(layout_file), str(path)], stdout=subprocess.PIPE, text=True, env=env
    )
    lines: list[str] = []
    try:
        for line in child.stdout:  # type: ignore[union-attr]
            lines.append(line.strip())
            if (
                line.strip() == "done s1"
            ):  # another process is still writing: the reader sees the flushed samples
                with open_run(path) as run:
                    assert run.samples[:2] == ["s0", "s1"]
                    assert_same_trace(
                        run.sample("s1"), random_trace(layout, "s1", 1, resid_layers=(0, 1, 2, 3))
                    )
            if line.strip() == "writing s4":
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        rest = child.communicate()[0]
    lines += rest.split()
    done = [line.split()[1] for line in lines if line.startswith("done")]
    started = [line.split()[1] for line in lines if line.startswith("writing")]
    with open_run(path) as run:
        assert run.samples[: len(done)] == done and set(run.samples) <= set(started)
        for sample in run.samples:
            want = random_trace(layout, sample, int(sample[1:]), resid_layers=(0, 1, 2, 3))
            assert_same_trace(run.sample(sample), want)
    with RunWriter(path, CONFIG, MODEL, resume=True) as writer:
        completed = writer.completed_ids()
        assert completed == run.samples
        writer.write_sample(random_trace(layout, "extra", 99))
    with h5py.File(path, "r") as file:
        assert all(group.attrs.get("complete") for group in file["samples"].values())
    with open_run(path) as run:
        assert run.samples == [*completed, "extra"]


def test_tables(tmp_path: Path, layout: TokenLayout) -> None:
    traces = [
        random_trace(layout, "s0", 0, metadata={"task": "order"}),
        random_trace(layout, "s1", 1, answer="D"),
    ]
    with RunWriter(tmp_path / "run.h5", CONFIG, MODEL) as writer:
        for trace in traces:
            writer.write_sample(trace)
        writer.write_failure("s2", "no video")
    run = open_run(tmp_path / "run.h5")
    assert run.tables() == ["frame_flow", "segment_flow", "flow_summary", "answers", "failures"]
    n_layers, n_heads, n_frames, n_seg = (
        layout.n_layers,
        layout.n_heads,
        layout.n_frames,
        len(layout.partition),
    )

    frames = run.table("frame_flow")
    assert list(frames.columns) == ["sample", "layer", "head", "target_frame", "source_frame", "value"]
    assert len(frames) == 2 * n_layers * n_heads * n_frames * n_frames
    row = frames.query(
        "sample == 's1' and layer == 2 and head == 3 and target_frame == 5 and source_frame == 1"
    )
    assert row["value"].item() == traces[1].frame_flow[2, 3, 5, 1]

    segments = run.table("segment_flow")
    assert list(segments.columns) == ["sample", "layer", "head", "target", "source", "value"]
    assert len(segments) == 2 * n_layers * n_heads * n_seg * n_seg
    t, s = layout.partition.index("question"), layout.partition.index("frame3")
    row = segments.query(
        "sample == 's0' and layer == 1 and head == 0 and target == 'question' and source == 'frame3'"
    )
    assert row["value"].item() == traces[0].segment_flow[1, 0, t, s]
    sums = segments.groupby(["sample", "layer", "head", "target"], observed=True)["value"].sum()
    np.testing.assert_allclose(sums.to_numpy(), 1.0, rtol=1e-5)  # every row of segment_flow sums to 1

    summary = run.table("flow_summary")
    assert list(summary.columns) == ["sample", "layer", "edge", "value"]
    assert set(summary["edge"]) == set(EDGES) and len(summary) == 2 * n_layers * len(EDGES)
    flow = traces[1].segment_flow.astype(np.float64).mean(axis=1)  # head mean
    video = [
        i for i, name in enumerate(layout.partition) if name.startswith("frame") or name == "video_markup"
    ]
    last, question = layout.partition.index("last"), layout.partition.index("question")
    fidx = [layout.partition.index(g) for g in layout.frame_groups]

    def value(edge: str, layer: int) -> float:
        return summary.query("sample == 's1' and edge == @edge and layer == @layer")["value"].item()

    for layer in range(n_layers):
        assert value("video->last", layer) == pytest.approx(flow[layer, last, video].sum())
        assert value("video->question", layer) == pytest.approx(flow[layer, question, video].sum())
        assert value("question->last", layer) == pytest.approx(flow[layer, last, question])
        earlier = np.mean(
            [flow[layer, fidx[f], fidx[:f]].sum() for f in range(1, n_frames)]
        )  # equal-size frames
        assert value("frame->earlier_frames", layer) == pytest.approx(earlier)
        assert value("frame->same_frame", layer) == pytest.approx(np.mean([flow[layer, i, i] for i in fidx]))

    answers = run.table("answers")
    assert list(answers.columns) == [
        "sample",
        "task",
        "answer",
        "predicted",
        "correct",
        "predicted_letter",
        "correct_letter",
        "p_A",
        "p_B",
        "p_C",
        "p_D",
    ]
    assert answers["sample"].tolist() == ["s0", "s1"] and answers["task"].iloc[0] == "order"
    assert pd.isna(answers["task"].iloc[1]) and answers["answer"].tolist() == ["B", "D"]
    np.testing.assert_allclose(
        answers.loc[1, ["p_A", "p_B", "p_C", "p_D"]].to_numpy(float), traces[1].answer.probs
    )
    assert answers["predicted"].tolist() == [t.answer.predicted for t in traces]
    assert answers["correct"].tolist() == [t.answer.correct for t in traces]

    with pytest.raises(FlowlensError, match="no table 'attention'; tables: frame_flow, segment_flow"):
        run.table("attention")
    run.close()


def test_empty_run_tables(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "run.h5", CONFIG, MODEL) as writer:
        writer.write_failure("s0", "broken")
    with open_run(tmp_path / "run.h5") as run:
        assert run.samples == [] and run.failures == {"s0": "broken"}
        for name in run.tables():
            assert len(run.table(name)) == (1 if name == "failures" else 0), name


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export(tmp_path: Path, layout: TokenLayout, fmt: str) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "s0", 0, metadata={"task": "order"}))
        writer.write_sample(random_trace(layout, 's,1 "quoted"', 1))
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    for name in ("segment_flow", "flow_summary", "answers"):
        out = export_table(path, name, fmt)
        assert out == tmp_path / f"run.{name}.{fmt}"
        with open_run(path) as run:
            want = run.table(name)
        got = read(out)
        assert list(got.columns) == list(want.columns) and len(got) == len(want)
        for column in want.columns:
            if want[column].dtype.kind == "f":
                np.testing.assert_allclose(
                    got[column].to_numpy(float), want[column].to_numpy(float), rtol=1e-6
                )
            else:
                assert (
                    got[column].astype(object).where(got[column].notna(), None).tolist()
                    == want[column].astype(object).where(want[column].notna(), None).tolist()
                ), column
    folder = tmp_path / "exports"
    folder.mkdir()
    assert export_table(path, "frame_flow", fmt, out=folder) == folder / f"run.frame_flow.{fmt}"
    with pytest.raises(FlowlensError, match="formats: csv, parquet"):
        export_table(path, "answers", "xlsx")
