"""The shipped toy model: loads as `toy`, knows every benchmark word, and solves fresh synthetic samples."""

from __future__ import annotations

import functools
import json

import pytest

import flowlens
import flowlens.data
from flowlens.analyses.evaluate import evaluate
from flowlens.data import synthetic
from flowlens.zoo import TOY_DIR

FRESH_SEED = 424242  # not a training, validation or test split seed
pytestmark = pytest.mark.skipif(not (TOY_DIR / "config.json").exists(), reason="toy weights not built")


@functools.cache
def toy() -> flowlens.VideoLM:
    return flowlens.load("toy")


def test_toy_loads_with_its_prompt_and_architecture():
    lm = toy()
    assert lm.family == "llava_next_video"
    assert type(lm.model).__name__ == "LlavaNextVideoForConditionalGeneration"
    assert lm.n_layers >= 4 and lm.adapter.text_config.num_attention_heads >= 4
    assert lm.template.system is None  # the shorter template shipped in flowlens_prompt.json
    assert (TOY_DIR / "model.safetensors").stat().st_size < 20_000_000
    assert FRESH_SEED not in synthetic.SPLIT_SEEDS.values()
    log = json.loads((TOY_DIR / "train_log.json").read_text())  # the training log ships beside the weights
    assert min(log["final_val_accuracy"].values()) >= 0.95 and log["config"]["seed"] == 0


def test_prompts_have_no_unknown_words():
    lm = toy()
    unk = lm.tokenizer.unk_token_id
    for sample in flowlens.data.load("synthetic", seed=FRESH_SEED, limit=200)[:25]:
        inputs, layout = lm.prepare(sample)
        assert unk not in inputs["input_ids"][0].tolist(), layout.tokens
        assert layout.n_frames == 8 and layout.answer_letter == sample.answer


def test_accuracy_on_fresh_samples_is_at_least_90_percent_per_task():
    samples = flowlens.data.load("synthetic", seed=FRESH_SEED, limit=200)
    result = evaluate(toy(), samples, progress=False)
    assert not result.failures
    summary = result.summary.set_index("task")
    assert set(synthetic.TASKS) <= set(summary.index)
    for task in synthetic.TASKS:
        assert summary.loc[task, "n"] == 40
        assert summary.loc[task, "accuracy"] >= 0.90, (task, summary)
