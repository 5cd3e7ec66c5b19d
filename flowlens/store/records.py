"""What one traced sample produces: the record the HDF5 writer stores and the reader returns.

Shapes use L = language layers, H = attention heads, S = segments (`layout.partition`),
F = frame groups, V = video feature tokens (`layout["video_features"]`, the rows of `layout.video_cells`),
Q = question tokens, D = d_model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flowlens.models.layout import TokenLayout


@dataclass
class AnswerReadout:
    """The answer at `last`: the prediction as Map the Flow reads it, and option-letter probabilities.

    `predicted` is the argmax over the whole vocabulary, decoded (an option letter, or whatever else the
    model would say, which then counts as wrong); `predicted_letter` is the most probable option letter
    (the letter-restricted answer). Probabilities are softmax over the whole vocabulary.
    """

    letters: list[str]
    probs: np.ndarray  # (n_options,) float32, softmax over the vocabulary at `last`
    predicted: str  # decoded argmax token over the whole vocabulary (the paper's answer)
    answer: str | None  # ground-truth letter, if known
    correct: bool | None  # predicted == answer
    predicted_letter: str = ""  # option letter with the highest probability (letter-restricted answer)
    correct_letter: bool | None = None  # predicted_letter == answer

    def __post_init__(self) -> None:
        if not self.predicted_letter and self.letters:  # records from before the vocabulary-wide answer
            self.predicted_letter = self.predicted
            self.correct_letter = self.correct


@dataclass
class SampleTrace:
    """Everything `trace` keeps for one sample (reductions of attention, residual summaries, answer).

    Attention quantities (float32):
    - `segment_flow` (L, H, S, S): [l, h, t, s] = mean over query tokens of segment t of the attention
      mass they put on the keys of segment s.
    - `frame_flow` (L, H, F, F): the same over frame groups.
    - `last_to_video` (L, H, V): the `last` query's attention on every video token.
    - `question_to_video` (L, Q, V): each question token's attention on every video token, head mean.
    Residual stream (float16), TransformerLens names `blocks.{l}.hook_resid_post`:
    - `resid_last` (L, D) at `last`; `resid_frame_mean` (L, F, D) mean over each frame group's feature tokens;
    - `resid_video` {layer: (V, D)} every video token at the chosen layers (optional).
    - `activations` {hook name: {group: (rows, D)}}: what `--activations` selected (optional; rows are the
      group's positions in order, or one per frame group for `frame_mean`).
    Stored only when the trace option of the same name asks for them (None otherwise; float32):
    - `received_attention` (L, H, 3, V): attention each video token receives, summed over the queries of
      each set of `flowlens.engine.capture.RECEIVED_QUERIES` (`all`, `text`, `question`);
    - `rollout` (L, 4, V): attention rollout after each layer, video columns, mean over the rows of each set
      of `ROLLOUT_QUERIES` (`last`, `question`, `text`, `all`);
    - `value_norm` (L, V): L1 norm of each video token's value vector, mean over heads.
    - `pixel_novelty` (V,): mean absolute RGB difference in [0, 1] between each video token's block of its
      frame group and the same block of the previous group; 1.0 for group 0 and separator tokens
      (`flowlens.pruning.pixels`).
    - `thumbnails` (n_sampled, h, w, 3) uint8: the sampled frames, shrunk, for the report (optional).
    """

    sample_id: str
    layout: TokenLayout
    segment_flow: np.ndarray
    frame_flow: np.ndarray
    last_to_video: np.ndarray
    question_to_video: np.ndarray
    resid_last: np.ndarray
    resid_frame_mean: np.ndarray
    answer: AnswerReadout
    resid_video: dict[int, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    activations: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    received_attention: np.ndarray | None = None
    rollout: np.ndarray | None = None
    value_norm: np.ndarray | None = None
    pixel_novelty: np.ndarray | None = None
    thumbnails: np.ndarray | None = None

    @property
    def segments(self) -> list[str]:
        return list(self.layout.partition)
