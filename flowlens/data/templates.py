"""Prompt presets per benchmark, by name: what a loader puts in `metadata["template"]` and `--template` takes.

`mvbench` is MVBench's evaluation prompt (VideoChat2's notebook, also TVBench's): system prompt,
`Question: ...`, `(A) ...` options, `Only give the best option.` and the answer opened with
`Best option:(`. `videomme` is Video-MME's published instruction with `A. ...` options, answered
after `Best option:`. `tempcompass` is TempCompass's multi-choice suffix. `open-ended` has no options.
Each is applied through the model's own chat template by `VideoLM.prepare`.
"""

from __future__ import annotations

from dataclasses import replace

from flowlens.errors import FlowlensError
from flowlens.models.prompt import PromptTemplate

VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)

PRESETS: dict[str, PromptTemplate] = {
    "mvbench": PromptTemplate(),
    "videomme": PromptTemplate(
        system=None,
        question_prefix=VIDEOMME_INSTRUCTION + "\n",
        options_header="\n",
        option_format="{letter}. {text}",
        instruction="",
        answer_prefix="Best option:",
    ),
    "tempcompass": PromptTemplate(
        system=None,
        question_prefix="",
        options_header="\n",
        option_format="{letter}. {text}",
        instruction="\nPlease directly give the best option:",
        answer_prefix="",
    ),
    "open-ended": PromptTemplate(
        system=None,
        question_prefix="",
        instruction="\nAnswer the question using a single word or phrase.",
        answer_prefix="",
    ),
}
ALIASES = {"map-the-flow": "mvbench", "tvbench": "mvbench", "video-mme": "videomme", "open": "open-ended"}


def names() -> list[str]:
    """Preset names (aliases not included)."""
    return list(PRESETS)


def get(name: str) -> PromptTemplate:
    """A fresh copy of the preset `name` (case-insensitive; aliases such as `tvbench` accepted)."""
    key = str(name).strip().lower()
    key = ALIASES.get(key, key)
    if key not in PRESETS:
        raise FlowlensError(f"unknown prompt template {name!r}; use one of {', '.join(names())}")
    return replace(PRESETS[key])
