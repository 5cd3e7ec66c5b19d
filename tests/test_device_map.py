"""`--device-map` (accelerate's device_map): one model spread over devices traces and knocks out exactly as
loaded whole (issue 16). On CPU the map sends two language layers to `disk`: accelerate then attaches its
hooks and moves their weights in at each forward, the same dispatch path a GPU + CPU-offload map takes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_distributed import assert_same_run

import flowlens
from flowlens.analyses.knockout import SweepOptions, sweep_sample
from flowlens.analyses.trace import trace_sample
from flowlens.cli import main, parse_device_map
from flowlens.data import load as load_data
from flowlens.engine.spec import PRESETS
from flowlens.errors import UsageError

pytest.importorskip("accelerate")

# every module of the toy (LLaVA-NeXT-Video) placed; language layers 1 and 3 offloaded to disk
TOY_MAP = {
    "model.image_newline": "cpu",
    "model.vision_tower": "cpu",
    "model.multi_modal_projector": "cpu",
    "model.vision_resampler": "cpu",
    "model.language_model.embed_tokens": "cpu",
    "model.language_model.layers.0": "cpu",
    "model.language_model.layers.1": "disk",
    "model.language_model.layers.2": "cpu",
    "model.language_model.layers.3": "disk",
    "model.language_model.norm": "cpu",
    "model.language_model.rotary_emb": "cpu",
    "lm_head": "cpu",
}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    plain = flowlens.load("toy")
    mapped = flowlens.load("toy", device_map=TOY_MAP, offload_folder=tmp_path_factory.mktemp("offload"))
    return plain, mapped


def test_the_map_goes_through_accelerate_hooks(models):
    _, mapped = models
    layers = mapped.adapter.language_layers()
    assert type(layers[1]._hf_hook).__name__ == "AlignDevicesHook"
    assert layers[1].self_attn.q_proj.weight.device.type == "meta"  # on disk until its forward
    assert mapped.device.type == "cpu"  # inputs go where the embeddings are


def test_trace_and_knockout_equal_the_plain_load(models):
    plain, mapped = models
    sample = load_data("synthetic", split="test", limit=1)[0]
    a, b = trace_sample(plain, sample), trace_sample(mapped, sample)
    for name in (
        "segment_flow",
        "frame_flow",
        "last_to_video",
        "question_to_video",
        "resid_last",
        "resid_frame_mean",
    ):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name), err_msg=name)
    options = SweepOptions(window=1, centres=[0, 2])
    x = sweep_sample(plain, sample, PRESETS["vql-to-ql"], options)
    y = sweep_sample(mapped, sample, PRESETS["vql-to-ql"], options)
    pd.testing.assert_frame_equal(pd.DataFrame(y.rows), pd.DataFrame(x.rows), check_exact=True)
    assert (
        len(x.rows["kl"]) == 8 and max(x.rows["kl"]) > 0
    )  # four curves x two centres, and they do something


def test_pruning_in_both_modes_equals_the_plain_load(models):
    """Compact mask mode and drop mode re-enter mid-model on offloaded layers: same rows as the plain load."""
    from flowlens.pruning.run import PruneRunOptions, prune_sample
    from flowlens.pruning.spec import load_spec

    plain, mapped = models
    sample = load_data("synthetic", split="test", limit=1)[0]
    spec = load_spec("fastv").to_dict() | {"budgets": [0.5, 0.1], "layers": [1, 2]}
    spec = load_spec(spec)
    x = prune_sample(plain, sample, spec, PruneRunOptions())
    y = prune_sample(mapped, sample, spec, PruneRunOptions())
    pd.testing.assert_frame_equal(pd.DataFrame(y.rows), pd.DataFrame(x.rows), check_exact=True)
    assert max(x.rows["kl"]) > 0


def test_cli_device_map_from_a_json_file_equals_the_plain_run(tmp_path):
    (tmp_path / "map.json").write_text(json.dumps(TOY_MAP))
    data = ["--dataset", "synthetic", "--split", "test", "--limit", "2"]
    assert main(["trace", "toy", *data, "--out", str(tmp_path / "plain")]) == 0
    assert (
        main(
            ["trace", "toy", *data, "--device-map", str(tmp_path / "map.json"), "--out", str(tmp_path / "m")]
        )
        == 0
    )
    assert_same_run(tmp_path / "plain" / "trace.h5", tmp_path / "m" / "trace.h5")


def test_device_map_arguments_are_checked(tmp_path, capsys):
    assert parse_device_map("auto") == "auto" and parse_device_map(None) is None
    assert parse_device_map('{"lm_head": 0}') == {"lm_head": 0}
    with pytest.raises(UsageError, match="not valid JSON"):
        parse_device_map("{lm_head: 0}")
    with pytest.raises(UsageError, match="module name -> device"):
        parse_device_map('{"lm_head": [0]}')
    with pytest.raises(UsageError, match="use one of auto, balanced"):
        flowlens.load("toy", device_map="everywhere")
    with pytest.raises(UsageError, match="needs an offload folder"):
        flowlens.load("toy", device_map=TOY_MAP)
    data = ["--dataset", "synthetic", "--split", "test", "--limit", "1", "--out", str(tmp_path / "x")]
    assert main(["trace", "toy", *data, "--device", "cpu", "--device-map", "auto"]) == 2
    assert "give --device or --device-map, not both" in capsys.readouterr().err
