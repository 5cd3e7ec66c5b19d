"""A run never lies and never loses work (issue 12): every item here failed on flowlens before it was fixed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from conftest import make_sample, random_video, tiny

import flowlens
from flowlens.analyses.registry import analyses
from flowlens.cli import main
from flowlens.engine.pathways import map_the_flow_rules
from flowlens.errors import FlowlensError

TINY = "tiny:llava_next_video"
SYNTHETIC = ["--dataset", "synthetic", "--split", "test[:2]", "--frames", "4"]


def run_cli(*args: str) -> int:
    return main([*args])


def labelled_samples(n: int) -> list[flowlens.Sample]:
    out = []
    for i in range(n):
        sample = make_sample(random_video(seed=i, frames=4), answer="ABCD"[i % 4])
        sample.id = f"s{i}"
        out.append(sample)
    return out


# ------------------------------------------------------------------ resume checks every setting
RESUME_CHANGES = {
    "trace": (
        ["--video-layers", "1"],
        ["--video-layers", "2"],
        "settings.video_layers: [1] in the file, [2] now",
    ),
    "knockout": (["--window", "3"], ["--window", "1"], "settings.window: 3 in the file, 1 now"),
    "eval": ([], ["--blind"], "settings.blind: False in the file, True now"),
}


@pytest.mark.parametrize("name", sorted(RESUME_CHANGES))
def test_resume_refuses_any_setting_that_changes_a_number(name, tmp_path, capsys):
    first, changed, message = RESUME_CHANGES[name]
    out = ["--out", str(tmp_path / "run")]
    assert run_cli(name, TINY, *SYNTHETIC, *first, *out) == 0
    capsys.readouterr()
    assert run_cli(name, TINY, *SYNTHETIC, *changed, *out, "--resume") == 2
    assert message in capsys.readouterr().err
    assert run_cli(name, TINY, *SYNTHETIC, *first, *out, "--resume") == 0  # the same settings resume


def test_resume_refuses_another_rule_table_and_allows_another_batch_size(tmp_path, capsys):
    for name, rules in (
        ("a", map_the_flow_rules(4, (0, 1), (0, 2), (1, 2))),
        ("b", map_the_flow_rules(4, (1, 2), (0, 2), (1, 3))),
    ):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(rules.to_dict()))
    out = ["--out", str(tmp_path / "pw")]
    assert run_cli("pathways", TINY, *SYNTHETIC, "--rules", str(tmp_path / "a.yaml"), *out) == 0
    capsys.readouterr()
    assert run_cli("pathways", TINY, *SYNTHETIC, "--rules", str(tmp_path / "b.yaml"), *out, "--resume") == 2
    assert "settings.rules..rules" in capsys.readouterr().err
    ko = ["--out", str(tmp_path / "ko"), "--window", "3"]
    assert run_cli("knockout", TINY, *SYNTHETIC, *ko, "--batch-size", "8") == 0
    assert (
        run_cli("knockout", TINY, *SYNTHETIC, *ko, "--batch-size", "2", "--resume") == 0
    )  # changes no number


def test_every_registered_analysis_records_its_identity(tmp_path):
    """The identity a resume compares is derived from each options dataclass: every field but the
    ones marked as not changing a number."""
    from dataclasses import fields, replace

    from flowlens.analyses.options import results_settings

    for analysis in analyses().values():
        options = analysis.Options()
        names = {f.name for f in fields(options) if f.metadata.get("affects_results", True)}
        # a field added after runs were written stays out while at its default (old runs still resume)
        later = {f.name for f in fields(options) if f.metadata.get("added_later")}
        assert set(results_settings(options)) == names - later
        for name in later:
            changed = replace(options, **{name: not getattr(options, name)})
            assert name in results_settings(changed)


# ------------------------------------------------------------------ selection order, slices, empty runs
def test_task_filter_comes_before_limit_and_slices(tmp_path):
    picked = flowlens.data.load("synthetic", split="test", task="event_order", limit=4)
    assert len(picked) == 4 and {s.metadata["task"] for s in picked} == {"event_order"}
    every = flowlens.data.load("synthetic", split="test")
    ordered = [s.id for s in every if s.metadata["task"] == "event_order"]
    assert [s.id for s in picked] == ordered[:4]
    sliced = flowlens.data.load("synthetic", split="test[10:20]", task="event_order", limit=3)
    assert [s.id for s in sliced] == ordered[10:13]
    rows = [
        json.dumps(
            {
                "id": f"r{i}",
                "video": "v.mp4",
                "question": "Q?",
                "options": ["a", "b"],
                "answer": "A",
                "task": "x" if i % 3 else "y",
            }
        )
        for i in range(12)
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(rows) + "\n")
    jsonl = flowlens.data.load(tmp_path / "d.jsonl", task="y", limit=3)
    assert [s.id for s in jsonl] == ["r0", "r3", "r6"]


def test_synthetic_split_slices_are_rows_of_the_whole_split():
    every = flowlens.data.load("synthetic", split="test")
    assert [s.id for s in flowlens.data.load("synthetic", split="test[10:20]", limit=3)] == [
        s.id for s in every[10:13]
    ]
    assert [s.id for s in flowlens.data.load("synthetic", split="test[-2:]")] == [s.id for s in every[-2:]]
    assert len(flowlens.data.load("synthetic", split="test[:1%]")) == 10


def test_a_run_with_no_sample_is_an_error_not_a_nan(tmp_path, capsys):
    code = run_cli(
        "eval", TINY, "--dataset", "synthetic", "--split", "test[5:5]", "--out", str(tmp_path / "e")
    )
    assert code == 3
    assert "holds no sample" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


# ------------------------------------------------------------------ unlabelled samples
def test_unlabelled_samples_are_traced_shown_and_left_out_of_accuracy(tmp_path):
    lm = tiny("llava_next_video")
    unlabelled = flowlens.Sample("u", random_video(frames=4), "Which?", ["x", "y"], None)
    run = lm.trace([*labelled_samples(1), unlabelled], out=tmp_path / "t", frames=4, progress=False)
    assert run.samples == ["s0", "u"] and not run.failures
    html = (tmp_path / "t" / "trace.html").read_text()
    assert "1 labelled; 1 unlabelled left out" in html and ">unlabelled</span>" in html
    for fn in (
        lambda: lm.knockout(
            [unlabelled], "vql-to-ql", window=1, out=tmp_path / "k", frames=4, progress=False
        ),
        lambda: lm.pathways([unlabelled], auto=True, out=tmp_path / "p", frames=4, progress=False),
    ):
        assert fn().samples == ["u"]
    from flowlens.store.knockout_summary import summarize_knockout

    summary = summarize_knockout(flowlens.open_run(tmp_path / "k").table("knockout"))
    assert (summary["n_unlabelled"] == 1).all() and summary["knockout_accuracy"].isna().all()


# ------------------------------------------------------------------ degenerate windows, deep rules
def test_a_window_covering_the_whole_depth_is_warned_and_computed_once(tmp_path, capsys, monkeypatch):
    from flowlens.engine.resume import CleanRun

    calls = []
    original = CleanRun.run_from
    monkeypatch.setattr(CleanRun, "run_from", lambda self, *a: calls.append(a) or original(self, *a))
    out = ["--out", str(tmp_path / "k"), "--preset", "cross-frame"]
    assert run_cli("knockout", TINY, *SYNTHETIC, "--split", "test[:1]", "--window", "9", *out) == 0
    assert "--window 9 covers all 4 layers at every centre" in capsys.readouterr().err
    assert len(calls) == 1 and len(calls[0][1]) == 1  # 4 identical conditions: one forward, one condition


def test_rules_deeper_than_the_model_are_refused_before_any_work(tmp_path, capsys):
    rules = map_the_flow_rules(32, (5, 14), (5, 19), (15, 24))  # the paper's 7B rules
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(rules.to_dict()))
    assert (
        run_cli(
            "pathways", TINY, *SYNTHETIC, "--rules", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "p")
        )
        == 2
    )
    assert "keeps edges up to layer 24, but the model has 4 layers" in capsys.readouterr().err
    assert not (tmp_path / "p" / "pathways.h5").exists()


# ------------------------------------------------------------------ exit codes
def test_exit_codes_mean_one_thing(tmp_path, capsys, monkeypatch):
    good = {"id": "a", "video": "missing.mp4", "question": "Q?", "options": ["a", "b"], "answer": "A"}
    (tmp_path / "bad.jsonl").write_text(json.dumps(good) + "\n")
    assert run_cli("eval", TINY, "--dataset", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "e")) == 3
    assert "no sample succeeded" in capsys.readouterr().err
    assert run_cli("eval", TINY, *SYNTHETIC, "--frames", "0") == 2  # usage
    from flowlens.analyses import trace_run

    def boom(*args, **kwargs):
        raise RuntimeError("an unexpected bug")

    monkeypatch.setattr(trace_run, "trace_sample", boom)
    assert run_cli("trace", TINY, *SYNTHETIC, "--out", str(tmp_path / "t")) == 4
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: an unexpected bug" in err and "Traceback" in err


# ------------------------------------------------------------------ outputs never collide or get lost
def test_export_to_a_folder_and_never_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("trace", TINY, *SYNTHETIC, "--out", str(out)) == 0
    capsys.readouterr()
    folder = tmp_path / "exports"
    assert run_cli("export", str(out), "--table", "answers", "--out", f"{folder}/") == 0
    assert (folder / "trace.answers.csv").is_file()
    assert run_cli("export", str(out), "--table", "answers", "--out", f"{folder}/") == 2
    assert "already exists" in capsys.readouterr().err
    assert run_cli("export", str(out), "--table", "answers", "--out", f"{folder}/", "--overwrite") == 0
    assert run_cli("export", str(out)) == 0
    assert "tables of" in capsys.readouterr().out


def test_two_analyses_share_a_folder_without_clobbering(tmp_path, capsys):
    out = ["--out", str(tmp_path)]
    assert run_cli("trace", TINY, *SYNTHETIC, *out) == 0
    assert run_cli("knockout", TINY, *SYNTHETIC, "--window", "1", *out) == 0
    assert (tmp_path / "trace.html").is_file() and (tmp_path / "knockout.html").is_file()
    with pytest.raises(FlowlensError, match="run files there: knockout.h5, trace.h5"):
        flowlens.open_run(tmp_path)
    assert flowlens.open_run(tmp_path, analysis="knockout").path.name == "knockout.h5"
    capsys.readouterr()
    assert run_cli("trace", TINY, *SYNTHETIC, *out, "--resume", "--overwrite") == 2
    assert "contradict" in capsys.readouterr().err


def test_default_output_folders_never_collide(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lm = tiny("llava_next_video")
    paths = {
        lm.knockout(labelled_samples(1), "cross-frame", window=1, frames=4, progress=False).path
        for _ in range(3)
    }
    assert len(paths) == 3 and all(p.parent.parent == Path("artifacts") for p in paths)


# ------------------------------------------------------------------ validation up front
@pytest.mark.parametrize(
    "args, message",
    [
        (["knockout", "no/such-model", "--window", "0"], "--window must be positive"),
        (["knockout", "no/such-model", "--batch-size", "-1"], "--batch-size must be positive"),
        (["trace", "no/such-model", "--frames", "0"], "--frames must be positive"),
        (["trace", "no/such-model", "--device", "cuda:7"], "no CUDA device"),
        (["trace", "no/such-model", "--out", "/nonexistent/x", "--resume"], "nothing to resume"),
    ],
)
def test_bad_arguments_fail_before_the_model_or_data_load(args, message, capsys):
    assert run_cli(*args, "--dataset", "synthetic") == 2
    assert message in capsys.readouterr().err


def test_layers_outside_the_model_and_existing_outputs(tmp_path, capsys):
    assert run_cli("trace", TINY, *SYNTHETIC, "--video-layers", "9", "--out", str(tmp_path / "t")) == 2
    assert "--video-layers 9: the model has 4 layers" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "trace.h5").write_text("")
    assert run_cli("trace", "no/such-model", *SYNTHETIC, "--out", str(tmp_path / "x")) == 2
    assert "already exists" in capsys.readouterr().err  # refused before the (unknown) model is looked up
    assert run_cli("trace", TINY, *SYNTHETIC, "--device", "auto", "--out", str(tmp_path / "auto")) == 0


def test_inspect_sizes_any_frame_count_and_warns_past_the_context(capsys, monkeypatch):
    assert run_cli("inspect", TINY, "--frames", "32", "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["frames"] == 32 and report["layout"]["n_frame_groups"] == 32
    import flowlens.cli as cli

    lm = tiny("llava_next_video")
    monkeypatch.setattr(cli, "_load", lambda args: lm)
    monkeypatch.setattr(lm.adapter.text_config, "max_position_embeddings", 100)
    assert run_cli("inspect", TINY, "--frames", "8") == 0
    assert "exceed the model's context of 100" in capsys.readouterr().err


def test_hf_datasets_fail_fast_offline(monkeypatch):
    datasets = pytest.importorskip("datasets")
    import flowlens.models.loading as loading

    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    seen = {}

    def fake(repo, config, split):
        seen["offline"] = os.environ.get("HF_HUB_OFFLINE")
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", fake)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "0")
    with pytest.raises(FlowlensError, match="offline"):
        flowlens.data.load("hf:someone/some-videos")
    assert seen["offline"] == "1"


def test_training_the_toy_never_writes_into_the_package_unless_asked():
    import argparse

    from flowlens.zoo import train_toy

    parsed = {}
    monkey = argparse.ArgumentParser.parse_args

    def capture(self, args=None, namespace=None):
        parsed.update(vars(monkey(self, args, namespace)))
        raise SystemExit(0)

    argparse.ArgumentParser.parse_args = capture
    try:
        with pytest.raises(SystemExit):
            train_toy.main([])
    finally:
        argparse.ArgumentParser.parse_args = monkey
    assert parsed["out"] == Path("artifacts/toy") and parsed["install"] is False
