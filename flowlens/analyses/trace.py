"""Trace: one clean forward per sample with attention reductions, residual summaries and the answer read-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flowlens.analyses.options import check_layers, option, positive
from flowlens.analyses.readout import answer_readout, final_hidden, head_logits_fp32
from flowlens.data.sample import Sample
from flowlens.engine.activations import ActivationCapture
from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.capture import CaptureOptions, FlowCapture
from flowlens.engine.residuals import ResidualCapture
from flowlens.engine.sizing import estimate_trace_size
from flowlens.errors import FlowlensError
from flowlens.hooks import DTYPES, ActivationSpec, estimate_bytes
from flowlens.pruning.pixels import pixel_novelty
from flowlens.store.records import SampleTrace

if TYPE_CHECKING:
    from flowlens.models.base import VideoLM
    from flowlens.models.layout import TokenLayout


@dataclass
class TraceOptions:
    """What a trace computes for each sample (round-trips to the run file's config)."""

    frames: int = option(8, "frames sampled from each video")
    video_layers: list[int] = option(
        [], "also store every video token's residual at these layers (0-based)", metavar="LAYER"
    )
    activations: list[str] = option(
        [],
        "also store these activations: HOOKS@GROUPS, e.g. 'blocks.*.hook_resid_post@last,video' "
        "(hooks: blocks.<l>.hook_resid_pre|mid|post, hook_attn_out, hook_mlp_out; groups: layout groups, frame_mean)",
        metavar="SPEC",
    )
    activations_dtype: str = option("float16", "dtype of stored activations", choices=tuple(DTYPES))
    received_attention: bool = option(
        False,
        "also store, per layer and head, the attention each video token receives summed over all, text and "
        "question queries (received_attention, L x H x 3 x V; scorer attn_received, sink detection)",
        added_later=True,
    )
    rollout: bool = option(
        False,
        "also store attention rollout over the video tokens after each layer (rollout, L x 4 x V; scorer "
        "rollout): one extra fused attention call per layer with the running T x V rollout as values",
        added_later=True,
    )
    value_norms: bool = option(
        False,
        "also store the L1 norm of each video token's value vector per layer, mean over heads "
        "(value_norm, L x V; scorer value_norm)",
        added_later=True,
    )
    pixel_novelty: bool = option(
        False,
        "also store each video token's pixel change since the previous frame group: mean absolute RGB "
        "difference in [0, 1] over the token's block of the frame (pixel_novelty, V; scorer temporal_novelty "
        "mode pixels)",
        added_later=True,
    )
    thumbnails: int = option(
        96,
        "store each sampled frame as a thumbnail of at most this many pixels a side, for the report (0: none)",
        affects_results=False,
    )
    max_gb: float | None = option(
        None,
        "refuse a run whose stored arrays would exceed this many GB (before compression)",
        affects_results=False,
    )

    def __post_init__(self) -> None:
        positive("frames", self.frames)
        positive("max_gb", self.max_gb)
        if self.thumbnails < 0:
            raise FlowlensError(f"--thumbnails {self.thumbnails}: use 0 (none) or a size in pixels")
        self.video_layers = sorted({int(x) for x in self.video_layers})
        self.activations = [str(ActivationSpec.parse(text)) for text in self.activations]
        if self.activations_dtype not in DTYPES:
            raise FlowlensError(
                f"--activations-dtype {self.activations_dtype!r}: use one of {', '.join(DTYPES)}"
            )

    def check(self, n_layers: int) -> None:
        """Refuse layers the model does not have."""
        check_layers("video_layers", self.video_layers, n_layers)
        for text in self.activations:
            ActivationSpec.parse(text).hooks(n_layers)

    def bytes_per_sample(self, layout: TokenLayout) -> int:
        """What one sample stores (trace arrays and activations) before compression."""
        size = estimate_trace_size(
            layout,
            len(self.video_layers),
            self.received_attention,
            self.rollout,
            self.value_norms,
            self.pixel_novelty,
        ).total
        return size + estimate_bytes(self.activations, layout, self.activations_dtype)

    def capture_options(self) -> CaptureOptions:
        """What the attention capture computes for these options."""
        return CaptureOptions(
            received_attention=self.received_attention, rollout=self.rollout, value_norms=self.value_norms
        )


def check_context(lm: VideoLM, layout: TokenLayout) -> None:
    """Refuse inputs longer than the model's context, with the token count and the limit."""
    limit = getattr(lm.adapter.text_config, "max_position_embeddings", None)
    if limit is not None and layout.seq_len > limit:
        raise FlowlensError(f"input has {layout.seq_len} tokens, more than the model's context of {limit}")


@torch.no_grad()
def trace_sample(
    lm: VideoLM, sample: Sample, options: TraceOptions | None = None, prepared: Any = None
) -> SampleTrace:
    """Run one sample with the flowlens backend and return everything the trace keeps.

    `prepared`: the `(inputs, layout)` `lm.prepare(sample, frames=options.frames)` already gave (not redone).
    """
    options = options or TraceOptions()
    sample.validate(require_options=True)
    inputs, layout = prepared if prepared is not None else lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    capture = FlowCapture(layout, lm.device, options.capture_options())
    residuals = ResidualCapture(layout, lm.device, options.video_layers)
    chosen = ActivationCapture(layout, options.activations, options.activations_dtype)
    with (
        language_attention(lm.model),
        active_handler(capture, expected_calls=layout.n_layers),
        residuals.attached(lm.adapter.language_layers()),
        chosen.attached(lm.adapter.language_layers(), lm.adapter.block_parts),
        final_hidden(lm) as grab,
    ):
        lm.model(**inputs, logits_to_keep=1)
    logits = head_logits_fp32(lm.adapter.output_head(), grab["last"])[0]
    frames = sampled_frames(lm, sample, options) if options.thumbnails or options.pixel_novelty else None
    pixels = pixel_novelty(frames, layout) if frames is not None and options.pixel_novelty else None
    thumbs = thumbnails(frames, options.thumbnails) if frames is not None and options.thumbnails else None
    return SampleTrace(
        sample_id=str(sample.id),
        layout=layout,
        segment_flow=capture.segment_flow(),
        frame_flow=capture.frame_flow(),
        last_to_video=capture.last_to_video(),
        question_to_video=capture.question_to_video(),
        resid_last=residuals.resid_last(),
        resid_frame_mean=residuals.resid_frame_mean(),
        resid_video=residuals.resid_video(),
        answer=answer_readout(logits, layout, lm.tokenizer),
        metadata={**_jsonable(sample.metadata), **sample_text(sample)},
        activations=chosen.result(),
        received_attention=capture.received_attention() if options.received_attention else None,
        rollout=capture.rollout() if options.rollout else None,
        value_norm=capture.value_norm() if options.value_norms else None,
        pixel_novelty=pixels,
        thumbnails=thumbs,
    )


def sample_text(sample: Sample) -> dict[str, Any]:
    """The question and options as the sample gave them (the report's per-sample pages show them)."""
    return {"question": str(sample.question), "options": [str(o) for o in sample.options]}


def sampled_frames(lm: VideoLM, sample: Sample, options: TraceOptions) -> np.ndarray:
    """The sampled frames as the model saw them, (n, H, W, 3) uint8 (thumbnails and pixel novelty)."""
    return np.asarray(lm.adapter.sample_frames(sample, options.frames).frames)


def thumbnails(frames: np.ndarray, size: int) -> np.ndarray:
    """(n, h, w, 3) uint8 frames resized (area-averaged) so the longer side is at most `size`."""
    n, height, width = frames.shape[:3]
    scale = min(1.0, size / max(height, width, 1))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    pixels = torch.as_tensor(np.ascontiguousarray(frames, dtype=np.uint8)).permute(0, 3, 1, 2).float()
    if n and shape != (height, width):
        pixels = torch.nn.functional.interpolate(pixels, size=shape, mode="area")
    return pixels.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))
    }
