"""Size of what a trace stores per sample, so users see it before a big run (and why no full maps).

The reductions follow the tracing design: per layer and head a segment x segment and frame x frame
flow (float32), the `last` row over video tokens (float32), the question rows over video tokens
averaged over heads (float32), and float16 residuals at `last` and per frame group.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from flowlens.models.layout import TokenLayout

F32, F16 = 4, 2


@dataclass
class TraceSize:
    """Bytes per stored quantity for one sample, and the full attention tensor it replaces."""

    segment_flow: int
    frame_flow: int
    last_to_video: int
    question_to_video: int
    resid_last: int
    resid_frame_mean: int
    resid_video: int
    full_attention_fp16: int
    received_attention: int = 0
    rollout: int = 0
    value_norm: int = 0
    pixel_novelty: int = 0

    @property
    def total(self) -> int:
        return (
            self.segment_flow
            + self.frame_flow
            + self.last_to_video
            + self.question_to_video
            + self.resid_last
            + self.resid_frame_mean
            + self.resid_video
            + self.received_attention
            + self.rollout
            + self.value_norm
            + self.pixel_novelty
        )

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def estimate_trace_size(
    layout: TokenLayout,
    video_layers: int = 0,
    received_attention: bool = False,
    rollout: bool = False,
    value_norms: bool = False,
    pixel_novelty: bool = False,
) -> TraceSize:
    """Bytes one traced sample takes on disk (before compression) for `layout`, names as in the run file
    (the optional arrays count only when asked for)."""
    layers, heads = layout.n_layers, layout.n_heads
    segments, frames = len(layout.partition), layout.n_frames
    n_video, n_question = layout.n_video, int(layout["question"].size)
    return TraceSize(
        segment_flow=layers * heads * segments * segments * F32,
        frame_flow=layers * heads * frames * frames * F32,
        last_to_video=layers * heads * n_video * F32,
        question_to_video=layers * n_question * n_video * F32,
        resid_last=layers * layout.d_model * F16,
        resid_frame_mean=layers * frames * layout.d_model * F16,
        resid_video=video_layers * n_video * layout.d_model * F16,
        full_attention_fp16=layers * heads * layout.seq_len * layout.seq_len * F16,
        received_attention=layers * heads * 3 * n_video * F32 if received_attention else 0,
        rollout=layers * 4 * n_video * F32 if rollout else 0,
        value_norm=layers * n_video * F32 if value_norms else 0,
        pixel_novelty=n_video * F32 if pixel_novelty else 0,
    )


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
