"""Shared fixtures: tiny models of every family (built once per test process) and a test sample."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import flowlens

FAMILIES = [
    "llava_next_video",
    "llava_onevision",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "video_llama_3",
    "internvl",
]


@functools.cache
def tiny(family: str) -> flowlens.VideoLM:
    """The tiny model of `family`, loaded once per process through the real from_pretrained path."""
    return flowlens.load(f"tiny:{family}")


def random_video(seed: int = 0, frames: int = 16, height: int = 64, width: int = 80) -> np.ndarray:
    """Noise frames: every frame differs, so no family compresses tokens away."""
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def make_sample(video: np.ndarray | None = None, answer: str = "B") -> flowlens.Sample:
    return flowlens.Sample(
        id="t0",
        video=random_video() if video is None else video,
        question="Which object appeared first?",
        options=["red ball", "blue box", "green star", "yellow circle"],
        answer=answer,
    )


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param
