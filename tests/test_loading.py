"""Loading: tiny models through from_pretrained, Hub ids from a local cache, and one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import flowlens
from flowlens.models.tiny import tiny_path

HUB_ID = "llava-hf/LLaVA-NeXT-Video-7B-hf"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowlens.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("flowlens: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_tiny_weights_are_the_same_at_every_build(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWLENS_CACHE", str(tmp_path / "a"))
    a = flowlens.load("tiny:llava_next_video")
    monkeypatch.setenv("FLOWLENS_CACHE", str(tmp_path / "b"))
    b = flowlens.load("tiny:llava_next_video")
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name


def test_tiny_depth_can_be_chosen():
    lm = flowlens.load("tiny:llava_next_video", layers=32)
    assert lm.n_layers == 32 and len(lm.adapter.language_layers()) == 32


def test_hub_id_loads_from_local_cache_offline(tmp_path):
    """The exact path that loads llava-hf/LLaVA-NeXT-Video-7B-hf, fed from a Hub cache holding a tiny copy."""
    repo = tmp_path / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    commit = "0" * 40
    shutil.copytree(tiny_path("llava_next_video"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    result = run_cli(
        "inspect", HUB_ID, "--json", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["architecture"] == "LlavaNextVideoForConditionalGeneration"
    assert report["layout"]["n_frame_groups"] == 8


def test_unknown_model_name():
    assert_one_line_error(run_cli("inspect", "nonsense"), "unknown model 'nonsense'", "tiny:<family>")


def test_unknown_tiny_family():
    assert_one_line_error(run_cli("inspect", "tiny:gpt2"), "tiny:llava_next_video")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    assert_one_line_error(run_cli("inspect", str(tmp_path)), "GPT2LMHeadModel", "not a supported video LLM")


def test_offline_hub_id_without_local_copy(tmp_path):
    result = run_cli("inspect", HUB_ID, env={"HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert_one_line_error(result, "not in the local Hugging Face cache", "hf download")


@pytest.mark.parametrize("family", ["llava_next_video", "qwen2_vl"])
def test_inspect_json_and_table(family, capsys, tmp_path):
    from flowlens.cli import main

    out = tmp_path / "inspect.json"
    assert main(["inspect", f"tiny:{family}", "--frames", "8", "--json", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == report
    layout = report["layout"]
    assert sum(layout["tokens_per_frame"]) == layout["groups"]["video_features"]
    assert report["trace_bytes_per_sample"]["total"] < report["trace_bytes_per_sample"]["full_attention_fp16"]
    assert main(["inspect", f"tiny:{family}"]) == 0
    table = capsys.readouterr().out
    assert "frame groups:" in table and "trace size per sample" in table


def test_toy_without_weights_says_what_to_do():
    from flowlens.zoo import TOY_DIR

    if (TOY_DIR / "config.json").exists():
        pytest.skip("toy weights are installed")
    assert_one_line_error(run_cli("inspect", "toy"), "train_toy")
