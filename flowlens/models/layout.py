"""`TokenLayout`: which input position is which frame, spatial cell and prompt part.

Built by the adapters from processor outputs and config arithmetic only (see `flowlens.models.base`).
Group names are the vocabulary of the CLI, knockout specs and tables (see docs/layout.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowlens.errors import LayoutError

FRAME_PREFIX = "frame"


def frame_group_name(index: int) -> str:
    """Name of the `index`-th frame group: frame0, frame1, ..."""
    return f"{FRAME_PREFIX}{index}"


def is_frame_group(name: str) -> bool:
    return name.startswith(FRAME_PREFIX) and name[len(FRAME_PREFIX) :].isdigit()


@dataclass
class TokenLayout:
    """Named groups of sorted input positions plus per-video-token spatial cells.

    - `groups`: name -> sorted int64 positions (`prefix`, `video`, `video_features`, `frame0..`,
      `frame0_markup..`, `video_markup`, `question`, `question_only`, `option_A..`, `true_option`,
      `false_options`, `last`, ...). `video` is the whole video span (feature tokens and the markup
      between them); each frame group owns its feature tokens and the markup that introduces it.
    - `partition`: group names, in sequence order, that together cover every position exactly once.
    - `video_cells`: (n_video, 3) rows of (frame group, row, col) aligned with `groups["video_features"]`;
      row = col = -1 marks a separator token that belongs to a frame group but to no spatial cell.
    - `frame_sources`: for each frame group, the indices of the sampled frames it was built from.
    """

    groups: dict[str, np.ndarray]
    partition: list[str]
    video_cells: np.ndarray
    frame_sources: list[list[int]]
    frame_grid: list[tuple[int, int]]
    seq_len: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    option_letters: list[str] = field(default_factory=list)
    option_token_ids: list[int] = field(default_factory=list)
    answer_letter: str | None = None
    tokens: list[str] = field(default_factory=list)
    family: str = ""

    # ------------------------------------------------------------------ views
    @property
    def n_frames(self) -> int:
        """Number of frame groups (temporal groups as the model sees them)."""
        return len(self.frame_sources)

    @property
    def frame_groups(self) -> list[str]:
        return [frame_group_name(i) for i in range(self.n_frames)]

    @property
    def n_video(self) -> int:
        """Number of video feature tokens (the rows of `video_cells` and of per-video-token arrays)."""
        return int(self.groups["video_features"].size)

    def frame_features(self, index: int) -> np.ndarray:
        """Feature-token positions of frame group `index` (its markup left out)."""
        return np.intersect1d(self.groups[frame_group_name(index)], self.groups["video_features"])

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.groups[name]
        except KeyError:
            raise KeyError(f"no group {name!r}; groups: {', '.join(self.groups)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.groups

    def tokens_per_frame(self) -> list[int]:
        """Feature tokens per frame group (markup not counted)."""
        return [int(self.frame_features(f).size) for f in range(self.n_frames)]

    def summary(self) -> dict[str, Any]:
        """Group sizes, tokens per frame and model shape, as `flowlens inspect` prints them."""
        return {
            "family": self.family,
            "seq_len": self.seq_len,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "n_frame_groups": self.n_frames,
            "tokens_per_frame": self.tokens_per_frame(),
            "frame_grid": [list(g) for g in self.frame_grid],
            "frame_sources": self.frame_sources,
            "groups": {name: int(pos.size) for name, pos in self.groups.items()},
            "partition": self.partition,
            "option_letters": self.option_letters,
            "answer_letter": self.answer_letter,
        }

    # ------------------------------------------------------------ validation
    def validate(self) -> None:
        """Check the invariants every analysis relies on; raise `LayoutError` if one fails."""
        for name, pos in self.groups.items():
            if pos.size and (pos.min() < 0 or pos.max() >= self.seq_len):
                raise LayoutError(f"group {name} has positions outside [0, {self.seq_len})")
            if pos.size > 1 and not np.all(np.diff(pos) > 0):
                raise LayoutError(f"group {name} is not strictly sorted")
        covered = np.concatenate([self.groups[name] for name in self.partition])
        if covered.size != self.seq_len or not np.array_equal(np.sort(covered), np.arange(self.seq_len)):
            raise LayoutError("partition groups do not cover every position exactly once")
        video, features = self.groups["video"], self.groups["video_features"]
        frames = np.concatenate([self.groups[g] for g in self.frame_groups]) if self.n_frames else video[:0]
        if not np.array_equal(np.sort(frames), video):
            raise LayoutError("frame groups do not partition the video span")
        if not np.all(np.isin(features, video)):
            raise LayoutError("video feature tokens lie outside the video span")
        if self.video_cells.shape != (features.size, 3):
            raise LayoutError("video_cells must have one (frame, row, col) row per video feature token")
        video = features
        for f, name in enumerate(self.frame_groups):
            in_group = np.isin(video, self.groups[name])
            if not np.all(self.video_cells[in_group, 0] == f):
                raise LayoutError(f"video_cells disagree with group {name}")
        if self.groups["last"].size != 1 or self.groups["last"][0] != self.seq_len - 1:
            raise LayoutError("`last` must be the final position")

    # --------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": {k: v.tolist() for k, v in self.groups.items()},
            "partition": list(self.partition),
            "video_cells": self.video_cells.tolist(),
            "frame_sources": self.frame_sources,
            "frame_grid": [list(g) for g in self.frame_grid],
            "seq_len": self.seq_len,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "d_model": self.d_model,
            "option_letters": self.option_letters,
            "option_token_ids": self.option_token_ids,
            "answer_letter": self.answer_letter,
            "tokens": self.tokens,
            "family": self.family,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenLayout:
        data = dict(data)
        data["groups"] = {k: np.asarray(v, dtype=np.int64) for k, v in data["groups"].items()}
        if (
            "video_features" not in data["groups"]
        ):  # written before markup joined the frames: video = features
            data["groups"]["video_features"] = data["groups"]["video"]
        data["video_cells"] = np.asarray(data["video_cells"], dtype=np.int64).reshape(-1, 3)
        data["frame_grid"] = [tuple(g) for g in data["frame_grid"]]
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> TokenLayout:
        return cls.from_dict(json.loads(text))
