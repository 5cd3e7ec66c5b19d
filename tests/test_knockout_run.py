"""Knockout and pathway runs end to end: run files, tables, summaries, --auto rule derivation."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from conftest import make_sample, random_video, tiny

import flowlens
from flowlens.analyses.pathways import derive_rules
from flowlens.cli import main
from flowlens.engine.spec import PRESETS, Block, BlockSet, Knockout, window
from flowlens.store.knockout_summary import summarize_knockout


def samples(n: int) -> list[flowlens.Sample]:
    out = []
    for i in range(n):
        s = make_sample(random_video(seed=i, frames=8), answer="ABCD"[i % 4])
        s.id, s.metadata = f"s{i}", {"task": "t"}
        out.append(s)
    return out


def test_knockout_run_tables_and_resume(tmp_path):
    lm = tiny("llava_next_video")
    run = lm.knockout(samples(2), "vql-to-ql", window=3, out=tmp_path, frames=8)
    table = run.table("knockout")
    n_layers = lm.n_layers
    assert len(table) == 2 * 4 * n_layers and set(table["curve"]) == {
        c for c, _ in PRESETS["vql-to-ql"].curves
    }
    row = table.iloc[0]
    assert row["rel_pred"] == pytest.approx(
        100 * (row["p_new_pred"] - row["p_base_pred"]) / row["p_base_pred"]
    )
    assert table.loc[table.layer == 0, "layers"].iloc[0] == ",".join(map(str, window(0, n_layers, 3)))
    summary = summarize_knockout(table)
    assert set(summary.columns) >= {
        "curve",
        "layer",
        "mean_rel_pred",
        "ci_low",
        "ci_high",
        "knockout_accuracy",
    }
    assert (tmp_path / "knockout.html").read_text().count("Attention knockout") >= 1
    run.close()
    again = lm.knockout(samples(3), "vql-to-ql", window=3, out=tmp_path, frames=8, resume=True)
    assert again.samples == ["s0", "s1", "s2"]


def test_knockout_cli_with_yaml_spec(tmp_path, capsys):
    spec = BlockSet("mine", [("video->last", (Block("video", "last"),))])
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec.to_dict()))
    code = main(
        [
            "knockout",
            "tiny:qwen2_vl",
            "--dataset",
            "synthetic",
            "--limit",
            "2",
            "--preset",
            str(tmp_path / "spec.yaml"),
            "--window",
            "3",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    assert code == 0
    assert set(flowlens.open_run(tmp_path / "run").table("knockout")["curve"]) == {"video->last"}
    assert "knockout: 2 samples" in capsys.readouterr().out


def test_specs_round_trip_yaml():
    knockout = Knockout((Block.cross_frame(), Block("video", "question")), [3, 1, 2], heads=(0,), name="x")
    assert Knockout.from_json(knockout.to_json()) == knockout
    assert knockout.layers == (1, 2, 3)
    assert BlockSet.from_dict(PRESETS["map-the-flow"].to_dict()).curves == PRESETS["map-the-flow"].curves


def test_derive_rules_keeps_only_hurting_windows():
    summary = pd.DataFrame(
        {
            "curve": ["video->question"] * 4 + ["video->last"] * 4,
            "layer": [0, 1, 2, 3] * 2,
            "mean_rel_pred": [-1.0, -30.0, -2.0, 0.0, -0.5, -0.2, 0.1, 0.0],
        }
    )
    block_set = BlockSet(
        "b", [("video->question", (Block("video", "question"),)), ("video->last", (Block("video", "last"),))]
    )
    rules = {r.block.label: r.keep for r in derive_rules(summary, block_set, 8, 3, threshold=1.5).rules}
    assert rules == {"video->question": (0, 1, 2, 3), "video->last": ()}


def test_auto_pathways_cli(tmp_path, capsys):
    code = main(
        [
            "pathways",
            "tiny:llava_next_video",
            "--dataset",
            "synthetic",
            "--limit",
            "2",
            "--auto",
            "--thresholds",
            "0",
            "50",
            "--window",
            "3",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    table = flowlens.open_run(tmp_path).table("pathways")
    assert set(table["condition"]) == {
        "full",
        *(f"{name}@{t}" for t in (0, 50) for name in ("pathways", "random", "random_per_layer")),
    }
    kept = table.groupby("condition")["kept_fraction"].mean()
    assert kept["full"] == 1.0 and kept["pathways@0"] == pytest.approx(kept["random@0"], abs=1e-3)
    assert "edges kept" in capsys.readouterr().out
