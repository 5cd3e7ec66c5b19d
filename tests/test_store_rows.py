"""Row samples (knockout sweeps, pathway runs): round trip, tables, crash safety, resume, summary and report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
from conftest import make_sample, tiny
from tracegen import random_trace

from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout
from flowlens.report import knockout as report_knockout
from flowlens.report import write_report
from flowlens.report.html import report_context
from flowlens.report.knockout import plotly_text
from flowlens.store import RunWriter, export_table, open_run, rows, schema, tables
from flowlens.store.knockout_summary import summarize_knockout
from flowlens.store.records import AnswerReadout

CONFIG = {
    "model": "tiny:llava_next_video",
    "analysis": "knockout",
    "frames": 8,
    "identity": {"analysis": "knockout", "model": "tiny:llava_next_video", "settings": {"frames": 8}},
}
MODEL = {"model": "tiny:llava_next_video", "revision": None}
CURVES = ("video->question", "question->last")
EVIL_CURVE = "<img src=x onerror=alert(1)>&co"


@pytest.fixture(scope="module")
def layout() -> TokenLayout:
    return tiny("llava_next_video").prepare(make_sample(), frames=8)[1]


def decode(value: Any) -> np.ndarray:
    """A plotly JSON array: a plain list or a base64 typed array ({dtype, bdata, shape})."""
    if isinstance(value, dict):
        return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return np.asarray(value, dtype=np.float64)


def answer(predicted: str = "B", truth: str | None = "B") -> AnswerReadout:
    probs = np.asarray([0.1, 0.6, 0.2, 0.05], np.float32) if predicted == "B" else np.full(4, 0.2, np.float32)
    correct = None if truth is None else predicted == truth
    return AnswerReadout(["A", "B", "C", "D"], probs, predicted, truth, correct)


def knockout_columns(
    seed: int, n_layers: int = 4, curves: tuple[str, ...] = CURVES, base_correct: bool = True
) -> dict[str, Any]:
    """A Map-the-Flow knockout sweep of one sample: one row per (curve, centre layer), every documented column."""
    rng = np.random.default_rng(seed)
    n = len(curves) * n_layers
    p_base, p_new = rng.uniform(0.2, 0.9, n), rng.uniform(0.01, 0.9, n)
    p_base_gt, p_new_gt = rng.uniform(0.1, 0.9, n), rng.uniform(0.01, 0.9, n)
    layers = np.tile(np.arange(n_layers), len(curves))
    new_answer = rng.choice(list("ABCD"), n)
    return {
        "curve": [c for c in curves for _ in range(n_layers)],
        "layer": layers,
        "layers": [",".join(str(x) for x in range(max(0, c - 1), min(n_layers, c + 2))) for c in layers],
        "p_base_pred": p_base,
        "p_new_pred": p_new,
        "rel_pred": 100 * (p_new - p_base) / p_base,
        "p_base_gt": p_base_gt,
        "p_new_gt": p_new_gt,
        "rel_gt": 100 * (p_new_gt - p_base_gt) / p_base_gt,
        "new_answer": new_answer.tolist(),
        "new_correct": new_answer == "B",
        "kl": rng.exponential(0.1, n),
        "logit_diff_base": rng.normal(2, 1, n),
        "logit_diff_new": rng.normal(0, 1, n),
        "base_correct": np.full(n, base_correct),
    }


# ------------------------------------------------------------------ round trip
def test_round_trip_of_every_column_type(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    columns = {
        "text": ["video->question", "ünïcödé ✓", "", "<x> & y"],
        "letters": np.asarray(["A", "B", "C", "D"]),  # numpy unicode works like a list of str
        "i64": [1, -2, 3, 2**40],
        "i32": np.asarray([7, 8, 9, 10], np.int32),
        "u8": np.asarray([0, 1, 254, 255], np.uint8),
        "f64": [0.5, np.nan, -1e300, 1 / 3],
        "f32": np.asarray([1.5, 2.5, -0.0, np.inf], np.float32),
        "flag": [True, False, True, True],
        "p(gt) %/x": np.asarray([0.1, 0.2, 0.3, 0.4]),  # any column name: stored escaped
    }
    meta = {"task": "order", "question": "Which?", "n": np.int64(3)}
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("a/b.c", layout, answer(), "pathways", columns, meta)
        writer.write_rows("empty", layout, answer("C", None), "pathways", {"text": [], "flag": []})
        assert writer.completed_ids() == ["a/b.c", "empty"]
    with open_run(path) as run:
        assert run.samples == ["a/b.c", "empty"] and run.traced == []
        assert run.kind("a/b.c") == "rows" and run.row_tables == {"pathways": ["a/b.c", "empty"]}
        got = run.rows("a/b.c", "pathways")
        assert list(got.columns) == list(columns)  # write order, not alphabetical
        assert got["text"].tolist() == columns["text"] and got["letters"].tolist() == list("ABCD")
        assert got["i64"].dtype == np.int64 and got["i64"].tolist() == columns["i64"]
        assert got["i32"].dtype == np.int32 and got["u8"].dtype == np.uint8
        assert got["u8"].tolist() == [0, 1, 254, 255]
        np.testing.assert_array_equal(got["f64"].to_numpy(), np.asarray(columns["f64"]))  # NaN == NaN here
        assert got["f32"].dtype == np.float32
        np.testing.assert_array_equal(got["f32"].to_numpy(), columns["f32"])
        assert got["flag"].dtype == bool and got["flag"].tolist() == columns["flag"]
        np.testing.assert_array_equal(got["p(gt) %/x"].to_numpy(), columns["p(gt) %/x"])
        assert len(run.rows("empty", "pathways")) == 0
        assert list(run.rows("empty", "pathways").columns) == ["text", "flag"]
        assert run.metadata("a/b.c") == {"task": "order", "question": "Which?", "n": 3}
        assert run.layout("a/b.c").to_dict() == layout.to_dict()
        got_answer = run.answer("a/b.c")
        np.testing.assert_array_equal(got_answer.probs, answer().probs)
        assert (got_answer.predicted, got_answer.answer, got_answer.correct) == ("B", "B", True)
        assert run.answer("empty").correct is None and run.answer("empty").predicted == "C"
    with h5py.File(path, "r") as file:  # the documented layout, readable without flowlens
        assert file.attrs["format_version"] == schema.FORMAT_VERSION == 2
        group = file["samples"][schema.escape_id("a/b.c")]
        assert group.attrs["kind"] == "rows" and group.attrs["complete"]
        assert "segment_flow" not in group and "probs" in group and "layout" in group
        table = group["tables/pathways"]
        assert json.loads(table.attrs["columns"]) == list(columns)
        assert "p%28gt%29%20%25%2Fx" in table
        assert h5py.check_string_dtype(table["text"].dtype).encoding == "utf-8"
        assert table["text"].compression == "gzip" and table["text"].chunks == (4,)
        assert table["i64"].chunks == (4,) and table["flag"].dtype == bool


def test_tables_concatenate_rows_with_sample_and_task(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    sweeps = {
        "s0": knockout_columns(0),
        "s1": knockout_columns(1, base_correct=False),
        "s2": knockout_columns(2),
    }
    tasks = {"s0": "order", "s1": None, "s2": "count"}
    with RunWriter(path, CONFIG, MODEL) as writer:
        for sample, columns in sweeps.items():
            meta = {"task": tasks[sample]} if tasks[sample] else {}
            writer.write_rows(sample, layout, answer(), "knockout", columns, meta)
        writer.write_failure("s3", "CUDA out of memory", {"task": "order"})
        writer.write_rows(
            "p0", layout, answer(), "pathways", {"condition": ["full", "random"], "correct": [1, 0]}
        )
    with open_run(path) as run:
        assert run.tables() == ["answers", "failures", "knockout", "pathways"]
        table = run.table("knockout")
        want = pd.concat(
            [pd.DataFrame(c).assign(sample=s, task=tasks[s]) for s, c in sweeps.items()], ignore_index=True
        )
        assert list(table.columns) == ["sample", "task", *sweeps["s0"]]
        assert len(table) == 3 * len(CURVES) * 4
        assert table["sample"].tolist() == want["sample"].tolist()
        assert table["task"].tolist() == want["task"].tolist()
        for column in sweeps["s0"]:
            if want[column].dtype.kind == "f":
                np.testing.assert_array_equal(table[column].to_numpy(float), want[column].to_numpy(float))
            else:
                assert table[column].tolist() == want[column].tolist(), column
        assert table["layer"].dtype == np.int64 and table["new_correct"].dtype == bool
        pathways = run.table("pathways")
        assert pathways.to_dict("list") == {
            "sample": ["p0", "p0"],
            "task": [None, None],
            "condition": ["full", "random"],
            "correct": [1, 0],
        }
        assert run.table("answers")["sample"].tolist() == ["s0", "s1", "s2", "p0"]  # every kind of sample
        assert run.table("failures")[["sample", "reason"]].to_dict("list") == {
            "sample": ["s3"],
            "reason": ["CUDA out of memory"],
        }
        with pytest.raises(FlowlensError, match="no traced samples, so no 'frame_flow' table"):
            run.table("frame_flow")
        with pytest.raises(FlowlensError, match="no table 'knockouts'; tables: answers, failures, knockout"):
            run.table("knockouts")
        with pytest.raises(FlowlensError, match="'s0' holds row tables \\(knockout\\), not a trace"):
            run.sample("s0")
        with pytest.raises(FlowlensError, match="not a trace"):
            run.array("s0", "frame_flow")
        with pytest.raises(FlowlensError, match="no row table 'pathways' \\(its row tables: knockout\\)"):
            run.rows("s0", "pathways")
        pd.testing.assert_frame_equal(
            run.rows("s1", "knockout"), pd.DataFrame(sweeps["s1"]), check_dtype=False
        )


def test_runs_mixing_traces_and_rows(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    trace = random_trace(layout, "t0", 0, metadata={"task": "order"})
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("k0", layout, answer(), "knockout", knockout_columns(0))
        writer.write_sample(trace)
    with open_run(path) as run:
        assert run.traced == ["t0"] and run.kind("t0") == "trace"
        assert run.tables() == [*schema.TRACE_TABLES, "answers", "failures", "knockout"]
        frames = run.table("frame_flow")  # trace tables cover the traced samples only
        assert set(frames["sample"]) == {"t0"} and list(frames["sample"].cat.categories) == ["t0"]
        assert set(run.table("flow_summary")["sample"]) == {"t0"}
        assert run.table("knockout")["sample"].unique().tolist() == ["k0"]
        with pytest.raises(
            FlowlensError, match="has no row table 'knockout' \\(its row tables: none: it is a trace\\)"
        ):
            run.rows("t0", "knockout")


def test_empty_runs_keep_their_trace_tables(tmp_path: Path) -> None:
    with RunWriter(tmp_path / "run.h5", CONFIG, MODEL) as writer:
        writer.write_failure("s0", "broken")
    with open_run(tmp_path / "run.h5") as run:  # no samples yet: nothing says it is not a trace run
        assert run.tables() == [*schema.TRACE_TABLES, "answers", "failures"]
        assert len(run.table("frame_flow")) == 0


def test_table_names_match_the_schema() -> None:
    assert tuple(tables.TABLES) == (*schema.TRACE_TABLES, *schema.RUN_TABLES)


# ----------------------------------------------------------- crash safety, resume
@pytest.mark.parametrize(
    ("table", "columns", "message"),
    [
        ("knockout", {"a": [1, 2, 3], "b": [1.0, 2.0]}, "equal lengths, got a=3, b=2"),
        ("knockout", {}, "at least one column"),
        ("knockout", {"a": [[1, 2], [3, 4]]}, "must be 1-D"),
        ("knockout", {"a": ["x", None]}, "values like None"),
        ("knockout", {"a": ["x", 1.5, "y"]}, "mixes str with other values"),
        ("knockout", {"a": np.asarray([b"x"])}, "dtype \\|S1"),
        ("knockout", {"sample": ["x"]}, "'sample' is reserved"),
        ("answers", {"a": [1]}, "'answers' is a built-in table"),
        ("knock out", {"a": [1]}, "letters, digits"),
    ],
)
def test_bad_rows_leave_nothing(
    tmp_path: Path, layout: TokenLayout, table: str, columns: dict[str, Any], message: str
) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("ok", layout, answer(), "knockout", {"a": [1]})
        with pytest.raises(FlowlensError, match=message):
            writer.write_rows("bad", layout, answer(), table, columns)
        assert writer.completed_ids() == ["ok"]
    with h5py.File(path, "r") as file:
        assert list(file["samples"]) == ["ok"]


def test_failed_rows_write_is_rolled_back(
    tmp_path: Path, layout: TokenLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "run.h5"
    written = rows.write_table

    def write_then_fail(group: h5py.Group, table: str, columns: dict[str, np.ndarray]) -> None:
        written(group, table, columns)  # the datasets are in the file when the disk "fills up"
        raise OSError("No space left on device")

    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("s0", layout, answer(), "knockout", knockout_columns(0))
        monkeypatch.setattr(rows, "write_table", write_then_fail)
        with pytest.raises(OSError, match="No space left"):
            writer.write_rows("s1", layout, answer(), "knockout", knockout_columns(1))
        with pytest.raises(ValueError, match="predicted letter 'E' is not in"):
            writer.write_rows("s2", layout, answer("E"), "knockout", knockout_columns(2))
        monkeypatch.undo()
        with pytest.raises(FlowlensError, match="already in"):
            writer.write_rows("s0", layout, answer(), "knockout", knockout_columns(0))
        writer.write_rows("s1", layout, answer(), "knockout", knockout_columns(1))  # the retry works
    with h5py.File(path, "r") as file:
        assert sorted(file["samples"]) == ["s0", "s1"]
    with open_run(path) as run:
        assert run.samples == ["s0", "s1"] and len(run.table("knockout")) == 2 * len(CURVES) * 4


def test_resume_skips_complete_row_samples(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("s0", layout, answer(), "knockout", knockout_columns(0))
        writer.write_rows("s1", layout, answer(), "knockout", knockout_columns(1))
    with h5py.File(path, "a") as file:  # what a crash in the middle of writing s2 leaves behind
        half = file["samples"].create_group("s2")
        half.attrs.update({"id": "s2", "seq": 2, "kind": "rows"})
        half.create_group("tables/knockout").create_dataset("layer", data=np.arange(3))
    with open_run(path) as run:
        assert run.samples == ["s0", "s1"] and run.row_tables == {"knockout": ["s0", "s1"]}
    with RunWriter(path, CONFIG, MODEL, resume=True) as writer:
        assert writer.completed_ids() == ["s0", "s1"]
        for i in range(4):
            if f"s{i}" not in writer.completed_ids():
                writer.write_rows(f"s{i}", layout, answer(), "knockout", knockout_columns(i))
    with open_run(path) as run:
        assert run.samples == ["s0", "s1", "s2", "s3"]
        np.testing.assert_array_equal(run.rows("s2", "knockout")["kl"], knockout_columns(2)["kl"])


def test_version_1_files_read_as_traces_and_resume_as_version_2(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_sample(random_trace(layout, "t0"))
    with h5py.File(path, "a") as file:  # what flowlens with format version 1 wrote: no `kind`
        file.attrs["format_version"] = 1
        del file["samples/t0"].attrs["kind"]
    with open_run(path) as run:
        assert run.traced == ["t0"] and run.kind("t0") == "trace"
        np.testing.assert_array_equal(run.sample("t0").frame_flow, random_trace(layout, "t0").frame_flow)
    with RunWriter(path, CONFIG, MODEL, resume=True) as writer:
        writer.write_rows("k0", layout, answer(), "knockout", knockout_columns(0))
    with h5py.File(path, "r") as file:
        assert file.attrs["format_version"] == 2  # older flowlens now refuses it instead of misreading k0


# ------------------------------------------------------------------ summary
def reference_summary(df: pd.DataFrame, seed: int, n_boot: int) -> dict[tuple[str, int], dict[str, float]]:
    """The documented statistics with plain loops: means, accuracy and the percentile bootstrap."""
    correct_samples = list(dict.fromkeys(df.loc[df["base_correct"], "sample"]))  # first appearance
    draws = np.random.default_rng(seed).integers(0, len(correct_samples), (n_boot, len(correct_samples)))
    out = {}
    for (curve, layer), part in df.groupby(["curve", "layer"], sort=False):
        used = part[part["base_correct"] & part["rel_pred"].notna()]
        value = dict(zip(used["sample"], used["rel_pred"], strict=True))
        replicates = []
        for draw in draws:
            picked = [value[correct_samples[i]] for i in draw if correct_samples[i] in value]
            replicates.append(sum(picked) / len(picked) if picked else np.nan)
        replicates = np.asarray(replicates)
        replicates = replicates[~np.isnan(replicates)]
        out[(curve, layer)] = {
            "n": len(part),
            "n_correct": int(part["base_correct"].sum()),
            "mean_rel_pred": float(np.mean(list(value.values()))) if value else np.nan,
            "ci_low": float(np.percentile(replicates, 2.5)) if len(replicates) else np.nan,
            "ci_high": float(np.percentile(replicates, 97.5)) if len(replicates) else np.nan,
            "knockout_accuracy": float((part["base_correct"] & part["new_correct"]).mean()),
            "knockout_accuracy_any": float(part["new_correct"].mean()),
        }
    return out


def synthetic_knockout(n_samples: int = 12, seed: int = 0) -> pd.DataFrame:
    """Knockout rows of samples with mixed baseline correctness, a NaN and a missing (curve, layer) row."""
    parts = []
    for i in range(n_samples):
        columns = knockout_columns(seed * 1000 + i, n_layers=5, base_correct=i % 3 != 1)
        parts.append(pd.DataFrame(columns).assign(sample=f"s{i:02d}"))
    df = pd.concat(parts, ignore_index=True)
    df.loc[3, "rel_pred"] = np.nan  # s00 video->question layer 3
    return df.drop(index=df.index[(df["sample"] == "s02") & (df["layer"] == 4)]).reset_index(drop=True)


def test_summarize_knockout_matches_an_independent_computation() -> None:
    df = synthetic_knockout().sample(frac=1.0, random_state=1)  # row order must not matter
    df = df.sort_values("sample", kind="stable")  # ... but samples keep a fixed first-appearance order
    summary = summarize_knockout(df, seed=7, n_boot=300)
    assert list(summary.columns) == [
        "curve",
        "layer",
        "n",
        "n_labelled",
        "n_unlabelled",
        "n_correct",
        "mean_rel_pred",
        "ci_low",
        "ci_high",
        "knockout_accuracy",
        "knockout_accuracy_any",
    ]
    assert summary["curve"].tolist() == [c for c in pd.unique(df["curve"]) for _ in range(5)]
    assert summary["layer"].tolist() == list(range(5)) * 2
    want = reference_summary(df, seed=7, n_boot=300)
    assert len(want) == len(summary)
    for row in summary.to_dict("records"):
        expected = want[(row["curve"], row["layer"])]
        for key, value in expected.items():
            assert row[key] == pytest.approx(value, rel=1e-9, nan_ok=True), (row["curve"], row["layer"], key)
    s02_missing = summary.query("layer == 4")
    assert s02_missing["n"].tolist() == [11, 11] and s02_missing["n_correct"].tolist() == [7, 7]
    first = summary.query("curve == 'video->question' and layer == 3")
    assert first["n_correct"].item() == 8  # the NaN row still counts as baseline-correct ...
    assert first["mean_rel_pred"].item() == pytest.approx(want[("video->question", 3)]["mean_rel_pred"])
    assert (
        (summary["ci_low"] <= summary["mean_rel_pred"]) & (summary["mean_rel_pred"] <= summary["ci_high"])
    ).all()
    again = summarize_knockout(df, seed=7, n_boot=300)
    pd.testing.assert_frame_equal(summary, again)  # seeded
    assert not np.allclose(summarize_knockout(df, seed=8, n_boot=300)["ci_low"], summary["ci_low"])


def test_bootstrap_ci_matches_the_normal_approximation() -> None:
    rng = np.random.default_rng(0)
    values = rng.normal(-20.0, 10.0, 400)
    df = pd.DataFrame(
        {
            "sample": [f"s{i}" for i in range(400)],
            "curve": "video->last",
            "layer": 3,
            "rel_pred": values,
            "base_correct": True,
            "new_correct": np.arange(400) % 4 == 0,
        }
    )
    row = summarize_knockout(df, seed=0, n_boot=4000).iloc[0]
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert row["mean_rel_pred"] == pytest.approx(values.mean())
    assert row["ci_low"] == pytest.approx(values.mean() - half, abs=0.1 * half)
    assert row["ci_high"] == pytest.approx(values.mean() + half, abs=0.1 * half)
    assert row["knockout_accuracy"] == 0.25 and row["n"] == row["n_correct"] == 400


def test_knockout_accuracy_is_the_papers_and_flips_are_a_named_alternative() -> None:
    """12 samples: 2 stay correct, 2 baseline-wrong ones flip to correct (paper: 2/12; flips counted: 4/12);
    2 more samples without a ground truth count in neither."""
    base = [True] * 4 + [False] * 8 + [False, True]
    new = [True, True, False, False, True, True] + [False] * 6 + [True, True]
    labelled = [True] * 12 + [False] * 2
    df = pd.DataFrame(
        {
            "sample": [f"s{i}" for i in range(14)],
            "curve": "video->last",
            "layer": 0,
            "rel_pred": -10.0,
            "labelled": labelled,
            "base_correct": np.asarray(base) & labelled,
            "new_correct": np.asarray(new) & labelled,
        }
    )
    row = summarize_knockout(df, n_boot=10).iloc[0]
    assert row["knockout_accuracy"] == pytest.approx(2 / 12)  # 16.7 %, the paper's
    assert row["knockout_accuracy_any"] == pytest.approx(4 / 12)  # 33.3 %, what flowlens reported before
    assert row["n"] == 14 and row["n_labelled"] == 12 and row["n_unlabelled"] == 2


def test_summarize_knockout_edge_cases() -> None:
    df = synthetic_knockout(n_samples=3)
    with pytest.raises(FlowlensError, match="needs columns base_correct"):
        summarize_knockout(df.drop(columns="base_correct"))
    with pytest.raises(FlowlensError, match="more than one row"):
        summarize_knockout(pd.concat([df, df.head(1)]))
    none_correct = summarize_knockout(df.assign(base_correct=False), n_boot=20)
    assert none_correct["n_correct"].eq(0).all() and none_correct["mean_rel_pred"].isna().all()
    assert none_correct["ci_low"].isna().all() and none_correct["knockout_accuracy"].notna().all()
    nullable = df.assign(
        base_correct=pd.array([True, None] * (len(df) // 2) + [True] * (len(df) % 2), "boolean")
    )
    assert summarize_knockout(nullable, n_boot=20)["n_correct"].sum() == int(nullable["base_correct"].sum())


# ------------------------------------------------------------------ report
def knockout_run(path: Path, layout: TokenLayout, traces: bool = False) -> None:
    curves = ("video->question", EVIL_CURVE)
    with RunWriter(path, CONFIG, MODEL) as writer:
        for i in range(6):
            meta = {"task": "order"}
            columns = knockout_columns(i, curves=curves, base_correct=i != 2)
            writer.write_rows(f"k{i}", layout, answer(), "knockout", columns, meta)
        for i, condition in enumerate(("full", "pathways", "random")):
            writer.write_rows(
                f"p{i}",
                layout,
                answer(),
                "pathways",
                {
                    "condition": ["full", "pathways", "random"],
                    "kept_fraction": [1.0, 0.4, 0.4],
                    "kept_edges": [100, 40, 40],
                    "total_edges": [100, 100, 100],
                    "predicted": ["B", "B", condition[0].upper()],
                    "correct": [True, i != 2, False],
                    "p_gt": [0.6, 0.5, 0.1 * i],
                },
            )
        if traces:
            writer.write_sample(random_trace(layout, "t0", 0))


def test_report_shows_knockout_and_pathways(tmp_path: Path, layout: TokenLayout) -> None:
    knockout_run(tmp_path / "run.h5", layout)
    html = write_report(tmp_path / "run.h5", tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h2>Attention knockout</h2>" in html and "<h2>Effective pathways</h2>" in html
    assert 'id="knockout-change"' in html and 'id="knockout-accuracy"' in html
    assert EVIL_CURVE not in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;&amp;co" in html  # the curve table, autoescaped
    assert 'id="frame-flow"' not in html and 'id="edge-flow"' not in html  # no traces: no flow sections
    assert "Frame × frame flow" not in html and "9</b><span>samples</span>" in html
    assert len(re.findall(r"<script>", html)) == 2


def test_report_knockout_figures_hold_the_summary(tmp_path: Path, layout: TokenLayout) -> None:
    knockout_run(tmp_path / "run.h5", layout, traces=True)
    with open_run(tmp_path / "run.h5") as run:
        context = report_context(run)
        summary = summarize_knockout(run.table("knockout"))
        table, pathway_table = run.table("knockout"), run.table("pathways")
    figures = json.loads(str(context["figures"]))
    assert {"frame-flow", "edge-flow", "knockout-change", "knockout-accuracy"} <= set(figures)
    change = figures["knockout-change"]
    for curve in ("video->question", EVIL_CURVE):
        rows = summary[summary["curve"] == curve]
        line = next(t for t in change["data"] if t.get("name") == plotly_text(curve))
        np.testing.assert_allclose(decode(line["y"]), rows["mean_rel_pred"])
        np.testing.assert_array_equal(decode(line["x"]), rows["layer"] + 1)  # 1-based centre, as the paper
        band = next(t for t in change["data"] if t.get("fill") and t["legendgroup"] == plotly_text(curve))
        np.testing.assert_allclose(decode(band["y"]), [*rows["ci_high"], *rows["ci_low"][::-1]])
        accuracy = next(t for t in figures["knockout-accuracy"]["data"] if t["name"] == plotly_text(curve))
        np.testing.assert_allclose(decode(accuracy["y"]), 100 * rows["knockout_accuracy"].to_numpy())
    assert [s["y0"] for s in change["layout"]["shapes"]] == [0.0]  # the zero line
    assert "1-based" in change["layout"]["xaxis"]["title"]["text"]
    assert figures["knockout-accuracy"]["layout"]["shapes"][0]["y0"] == pytest.approx(100 * 5 / 6)
    assert report_knockout.clean_accuracy(table) == pytest.approx(5 / 6)
    curves = {row["curve"]: row for row in report_knockout.curve_rows(summary)}
    evil = summary[summary["curve"] == EVIL_CURVE]
    assert curves[EVIL_CURVE]["n"] == 6 and curves[EVIL_CURVE]["n_correct"] == 5
    assert curves[EVIL_CURVE]["drop"] == pytest.approx(evil["mean_rel_pred"].min())
    assert curves[EVIL_CURVE]["drop_layer"] == int(evil.loc[evil["mean_rel_pred"].idxmin(), "layer"]) + 1
    pathways = {row["condition"]: row for row in report_knockout.pathway_rows(pathway_table)}
    assert list(pathways) == ["full", "pathways", "random"]
    assert pathways["pathways"]["accuracy"] == pytest.approx(2 / 3) and pathways["random"]["accuracy"] == 0
    assert pathways["random"]["p_gt"] == pytest.approx(0.1) and pathways["pathways"][
        "kept_fraction"
    ] == pytest.approx(0.4)
    assert pathways["full"]["kept_edges"] == 100 and pathways["full"]["n"] == 3
    assert context["samples_label"] == "samples"
    bars = {t["name"]: t for t in figures["pathways-bars"]["data"]}  # pathways beside its random control
    assert list(bars) == ["full", "pathways", "random"]
    assert (
        decode(bars["pathways"]["y"])[0] == pytest.approx(100 * 2 / 3) and decode(bars["random"]["y"])[0] == 0
    )
    panels = [t for t in figures["knockout-panels"]["data"] if t.get("mode") == "lines+markers"]
    video = next(
        t for t in panels if t["name"] == plotly_text("video->question")
    )  # one panel per blocked edge (Fig. 2/3)
    np.testing.assert_allclose(
        decode(video["y"]), summary[summary["curve"] == "video->question"]["mean_rel_pred"]
    )


def test_report_survives_a_malformed_knockout_table(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("k0", layout, answer(), "knockout", {"curve": ["<v>"], "layer": [0]})
    html = write_report(path, tmp_path / "report.html").read_text(encoding="utf-8")
    assert "cannot be summarised: a knockout table needs columns rel_pred, base_correct, new_correct" in html


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_row_tables(tmp_path: Path, layout: TokenLayout, fmt: str) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, CONFIG, MODEL) as writer:
        writer.write_rows("s0", layout, answer(), "knockout", knockout_columns(0), {"task": "order"})
        writer.write_rows("s1", layout, answer(), "knockout", knockout_columns(1))
    out = export_table(path, "knockout", fmt)
    assert out == tmp_path / f"run.knockout.{fmt}"
    got = pd.read_csv(out) if fmt == "csv" else pd.read_parquet(out)
    with open_run(path) as run:
        want = run.table("knockout")
    assert list(got.columns) == list(want.columns) and len(got) == len(want)
    np.testing.assert_allclose(got["rel_pred"].to_numpy(float), want["rel_pred"].to_numpy(float))
    assert got["curve"].tolist() == want["curve"].tolist() and got["layer"].tolist() == want["layer"].tolist()
    assert got["new_correct"].tolist() == want["new_correct"].tolist()
    assert [None if pd.isna(task) else task for task in got["task"]] == ["order"] * 8 + [None] * 8
