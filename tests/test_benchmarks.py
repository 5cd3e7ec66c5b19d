"""Benchmark loaders on tiny trees in each published format: answers, option order, path rules, tasks, failures."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest
from benchmark_fixtures import (
    frame_index,
    mvbench,
    nextqa,
    tempcompass,
    tomato,
    tvbench,
    video,
    videomme,
)

import flowlens
from flowlens.cli import main
from flowlens.data import load, read_frames, templates
from flowlens.data.benchmarks import hf
from flowlens.data.failures import count_kinds, failure_kind
from flowlens.errors import FlowlensError


def reasons(samples) -> dict[int, str]:
    return {f.line: f.reason for f in samples.failures}


def test_tvbench_records_paths_bounds_and_skipped_tasks(tmp_path, caplog):
    root = tvbench(tmp_path)
    samples = load("tvbench", data_dir=root)
    assert [s.id for s in samples] == [
        "action_count/0",
        "action_count/1",
        "action_sequence/0",
        "action_sequence/1",
    ]  # benchmark task order, records in file order
    count, _, first, second = samples
    assert count.options == ["2", "3", "5", "4"] and count.answer == "C"  # "5" is the third candidate
    assert count.video == str(root / "video" / "action_count" / "video_2126.mp4")
    assert "start" not in count.metadata and count.metadata["task"] == "action_count"
    assert first.answer == "A" and second.answer == "B"
    assert second.video == str(root / "video" / "action_sequence" / "OY3LS.mp4")
    assert (second.metadata["start"], second.metadata["end"]) == (0.5, 2.0)
    assert second.metadata["question_id"] == "Sequence_T3_50" and second.metadata["template"] == "mvbench"
    (note,) = samples.notes
    assert note.startswith(f"tvbench: skipped 8 tasks whose file is not in {root / 'json'}: object_count, ")
    assert note in caplog.text  # logged as a warning too
    # the bounds reach the decoder: frames come from [1.0, 2.5) s of the 3 s clip
    out = read_frames(first, 4)
    np.testing.assert_array_equal(out.indices, [9, 12, 15, 18])
    np.testing.assert_array_equal(frame_index(out.frames), [9, 12, 15, 18])


def test_task_filter_split_slice_and_limit(tmp_path):
    root = tvbench(tmp_path)
    only = load("tvbench", data_dir=root, task=["Action Sequence"])
    assert [s.id for s in only] == ["action_sequence/0", "action_sequence/1"]
    assert [s.id for s in load("tvbench", data_dir=root, split="test[1:3]")] == [
        "action_count/1",
        "action_sequence/0",
    ]
    assert len(load("tvbench", data_dir=root, limit=1)) == 1
    with pytest.raises(FlowlensError, match="has no task 'dance'; its tasks: action_count"):
        load("tvbench", data_dir=root, task="dance")
    with pytest.raises(FlowlensError, match="none of the task files"):
        load("tvbench", data_dir=root, task="object_count")
    with pytest.raises(FlowlensError, match="needs --data-dir"):
        load("tvbench")
    with pytest.raises(FlowlensError, match="no split 'val'"):
        load("tvbench", data_dir=root, split="val")


def test_mvbench_prefixes_and_frame_folders(tmp_path):
    root = mvbench(tmp_path)
    samples = load("mvbench", data_dir=root)
    antonym, episodic = samples
    assert antonym.video == str(root / "video" / "ssv2_video" / "166583.webm")
    assert antonym.answer == "B" and antonym.metadata["task_label"] == "Action Antonym"
    assert episodic.answer == "B" and len(episodic.options) == 5
    assert episodic.metadata["fps"] == 3.0 and episodic.metadata["end"] == 3.0
    assert "skipped 18 tasks" in samples.notes[0]
    out = read_frames(episodic, 3)  # frame images at 3 fps, bounds [1, 3) s -> images 3..8
    np.testing.assert_array_equal(frame_index(out.frames), [4, 6, 8])


def test_tempcompass_options_come_from_the_question(tmp_path):
    root = tempcompass(tmp_path)
    samples = load("tempcompass", data_dir=root)
    action, direction = samples
    assert action.question == "What is the man doing in the video?"
    assert action.options == ["dunking a basketball", "dribbling a basketball", "passing a basketball"]
    assert action.answer == "A" and direction.answer == "C"
    assert direction.id == "1034419625/direction/0" and direction.metadata["template"] == "tempcompass"
    assert action.video == str(root / "videos" / "1034419625.mp4")
    assert "no `A. ...` option lines" in samples.failures[0].reason
    assert [s.id for s in load("tempcompass", data_dir=root, task="action")] == ["1034419625/action/0"]


def test_nextqa_index_answers_and_vidor_paths(tmp_path):
    root = nextqa(tmp_path)
    samples = load("nextqa", data_dir=root)
    first, second = samples
    assert first.id == "4010069381_6" and first.answer == "A" and first.metadata["task"] == "CH"
    assert first.options[2] == "strum the string"
    assert first.video == str(root / "NExTVideo" / "1164" / "4010069381.mp4")  # by map_vid_vidorID.json
    assert second.answer == "C" and second.video == str(root / "NExTVideo" / "4882821564.mp4")  # flat
    assert reasons(samples) == {4: "malformed annotation: answer index 7 is not one of the 5 options"}
    assert [s.id for s in load("nextqa", data_dir=root, task=["cw"])] == ["4882821564_1"]
    assert [s.id for s in load("nextqa", data_dir=root, split="val[1:]")] == ["4882821564_1"]
    with pytest.raises(FlowlensError, match="no test.csv"):
        load("nextqa", data_dir=root, split="test")


@pytest.mark.parametrize("as_json", [False, True])
def test_videomme_parquet_and_official_json(tmp_path, as_json):
    root = videomme(tmp_path, as_json=as_json)
    samples = load("videomme", data_dir=root)
    (sample,) = samples
    assert sample.id == "001-2" and sample.answer == "D"
    assert sample.options == ["Black shirts.", "Blue shirts.", "Red skirts.", "Brown hat."]
    assert sample.video == str(root / "data" / "fFjv93ACGo8.mkv")  # .mp4 absent, .mkv found
    assert sample.metadata["task"] == "attribute_perception" and sample.metadata["duration"] == "short"
    assert sample.metadata["template"] == "videomme"
    if not as_json:
        assert "not `A. ...`" in samples.failures[0].reason
    prompt = templates.get("videomme")
    assert prompt.option_format == "{letter}. {text}" and prompt.answer_prefix == "Best option:"


def test_tomato_index_answer_and_path(tmp_path):
    root = tomato(tmp_path)
    samples = load("tomato", data_dir=root)
    (sample,) = samples
    assert sample.id == "rotation/0" and sample.answer == "D"
    assert sample.options[3] == "Clockwise throughout."
    assert sample.video == str(root / "videos" / "human" / "0215-06.mp4")
    assert sample.metadata["variation"]["zoom"] == 1
    assert "record 1: malformed annotation: answer index 9" in samples.failures[0].reason
    assert samples.notes == [
        f"tomato: skipped 5 tasks whose file is not in {root / 'data'}: "
        "count, direction, shape&trend, velocity&frequency, visual_cues"
    ]


def test_csv_and_jsonl_with_a_column_mapping(tmp_path):
    video(tmp_path / "clips" / "c1.mp4", 8)
    (tmp_path / "qa.csv").write_text(
        "qid,clip,q,o1,o2,o3,label,kind,s,e\n"
        "x1,c1.mp4,Where does it go?,left,right,up,right,motion,0.5,1.0\n"
        "x2,c1.mp4,,left,right,up,A,motion,,\n"
    )
    columns = "id=qid,video=clip,question=q,options=o1+o2+o3,answer=label,task=kind,start=s,end=e"
    samples = load(tmp_path / "qa.csv", columns=columns, data_dir=tmp_path / "clips")
    (sample,) = samples
    assert sample.id == "x1" and sample.options == ["left", "right", "up"] and sample.answer_letter == "B"
    assert sample.video == str(tmp_path / "clips" / "c1.mp4") and sample.metadata["task"] == "motion"
    assert (sample.metadata["start"], sample.metadata["end"]) == (0.5, 1.0)
    assert reasons(samples) == {3: "missing field: question (column 'q')"}
    rows = [
        {"clip": "clips/c1.mp4", "q": "What moves?", "choices": ["a ball", "a box"], "gold": 1},
        {"clip": "clips/c1.mp4", "q": "Describe it."},
    ]
    (tmp_path / "qa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{oops\n")
    mapped = load(tmp_path / "qa.jsonl", columns="video=clip,question=q,options=choices,answer_index=gold")
    assert [s.answer for s in mapped] == ["B", None] and mapped[0].video == str(tmp_path / "clips" / "c1.mp4")
    assert mapped[1].metadata["template"] == "open-ended" and "invalid JSON" in mapped.failures[0].reason
    with pytest.raises(FlowlensError, match="unknown field 'label'"):
        load(tmp_path / "qa.csv", columns="label=x")


def test_hf_rows_use_the_benchmark_parser_and_slice_after_filtering(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return datasets.Dataset.from_list([{**json.loads(json.dumps(r))} for r in _videomme_rows()])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    samples = load("hf:lmms-lab/Video-MME:videomme", split="test[:50]", data_dir=tmp_path)
    assert calls == [("lmms-lab/Video-MME", "videomme", "test")]  # sliced here, after the task filter
    assert [s.answer for s in samples] == ["D"] and samples[0].video == str(
        tmp_path / "data" / "fFjv93ACGo8.mp4"
    )

    def offline(repo, config, split):
        raise ConnectionError("Couldn't reach 'lmms-lab/Video-MME' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FlowlensError, match="cannot load Hugging Face dataset.*offline\\?") as caught:
        load("hf:lmms-lab/Video-MME", data_dir=tmp_path)
    assert "\n" not in str(caught.value)
    assert hf.detect("someone/mvbench-copy", ["video", "candidates"], False) == "candidates"


def test_hf_local_parquet_slices_for_real(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "videomme").mkdir()
    pd.DataFrame(_videomme_rows() * 3).assign(question_id=["a", "b", "c"]).to_parquet(
        tmp_path / "videomme" / "test-00000-of-00001.parquet"
    )
    samples = load(f"hf:{tmp_path}", split="test[1:]", data_dir=tmp_path)
    assert [s.id for s in samples] == ["b", "c"]
    import datasets

    for split in ("test[:67%]", "test[1:-1]", "test[-2:]", "test[10%:70%]", "test[:34%]", "test[50%:]"):
        ours = [s.id for s in load(f"hf:{tmp_path}", split=split, data_dir=tmp_path)]
        theirs = datasets.load_dataset(str(tmp_path), split=split)["question_id"]
        assert ours == list(theirs), split  # slices select the rows `datasets` selects


def _videomme_rows() -> list[dict]:
    from benchmark_fixtures import VIDEOMME_ROW

    return [dict(VIDEOMME_ROW)]


def test_failure_kinds_of_loader_and_decoder_reasons():
    assert failure_kind("missing field: candidates") == "malformed annotation"
    assert failure_kind("invalid JSON: Expecting value (column 1)") == "malformed annotation"
    assert failure_kind("input has 9000 tokens, more than the model's context of 4096") == "input too long"
    assert failure_kind("something else entirely") == "other"
    assert count_kinds(["video not found: a", "video not found: b", "x"]) == [
        ("video not found", 2),
        ("other", 1),
    ]


def test_cli_trace_on_tvbench_records_every_bad_input(tmp_path, capsys):
    root = tvbench(tmp_path / "TVBench", bad=True)
    out = tmp_path / "run"
    args = ["trace", "tiny:llava_next_video", "--dataset", "tvbench", "--data-dir", str(root)]
    code = main([*args, "--frames", "4", "--out", str(out)])
    run = flowlens.open_run(out)
    assert run.samples == ["action_count/0", "action_count/1", "action_sequence/0"]
    kinds = {key: failure_kind(reason) for key, reason in run.failures.items()}
    assert kinds == {
        "action_count.json:7": "malformed annotation",  # the record without candidates
        "action_count/2": "cannot decode",  # garbage bytes
        "action_count/3": "empty video",  # 0 bytes
        "action_count/4": "too few frames",  # 2 frames, 4 asked for
        "action_count/5": "cannot decode",  # truncated
        "action_sequence/1": "video not found",
    }
    assert code == 1  # some samples failed, the others are written
    assert "missing field: candidates" in run.failures["action_count.json:7"]
    assert "truncated" in run.failures["action_count/5"]
    assert run.failure_metadata("action_sequence/1")["start"] == 0.5
    assert (
        run.config["dataset"]["prompt_preset"] == "mvbench"
        and run.config["template"]["answer_prefix"] == "Best option:("
    )
    captured = capsys.readouterr()
    assert (
        "failures by kind: cannot decode 2, video not found 1, empty video 1, too few frames 1, "
        "malformed annotation 1" in captured.out
    )
    assert captured.err.count("note: tvbench: skipped 8 tasks") == 1


def test_cli_eval_takes_the_same_dataset_options(tmp_path, capsys, monkeypatch):
    root = tvbench(tmp_path)
    args = ["eval", "tiny:llava_next_video", "--dataset", "tvbench", "--data-dir", str(root), "--frames", "4"]
    out = ["--out", str(tmp_path / "eval")]
    assert main([*args, *out, "--task", "action_sequence", "--template", "videomme", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert (
        report["dataset"]["task"] == ["action_sequence"] and report["dataset"]["prompt_preset"] == "videomme"
    )
    assert [row["task"] for row in report["summary"]] == ["action_sequence", "all"]
    assert report["failures"] == [
        {
            "sample": "action_sequence/1",
            "reason": f"video not found: {root / 'video/action_sequence/OY3LS.mp4'}",
            "task": "action_sequence",
        }
    ]
    assert report["failed"] == 1 and report["exit_code"] == 1
    assert main([*args, "--template", "chatty"]) == 2
    assert "unknown prompt template 'chatty'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # as if not installed
    assert main([*args, "--video-backend", "torchcodec"]) == 2
    assert "video backend 'torchcodec' is not installed" in capsys.readouterr().err


def test_split_slices_and_data_dir_apply_to_synthetic_and_jsonl(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWLENS_CACHE", str(tmp_path / "cache"))
    every = load("synthetic", seed=3, limit=4)
    assert [s.id for s in load("synthetic", seed=3, limit=4, split="[1:3]")] == [s.id for s in every[1:3]]
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"id": "a", "video": "v.mp4", "question": "Which?", "options": ["x", "y"], "answer": "B"})
    )
    (sample,) = load(tmp_path / "d.jsonl", data_dir=tmp_path / "videos")
    assert sample.video == str(tmp_path / "videos" / "v.mp4")
    with pytest.raises(FlowlensError, match="one file with no splits"):
        load(tmp_path / "d.jsonl", split="test")
