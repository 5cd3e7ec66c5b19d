"""Trace: one clean forward per sample with attention reductions, residual summaries and the answer read-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from flowlens.analyses.options import check_layers, option, positive
from flowlens.analyses.readout import answer_readout, final_hidden, head_logits_fp32
from flowlens.data.sample import Sample
from flowlens.engine.backend import active_handler, language_attention
from flowlens.engine.capture import CaptureOptions, FlowCapture
from flowlens.engine.residuals import ResidualCapture
from flowlens.errors import FlowlensError
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

    def __post_init__(self) -> None:
        positive("frames", self.frames)
        self.video_layers = sorted({int(x) for x in self.video_layers})

    def check(self, n_layers: int) -> None:
        """Refuse layers the model does not have."""
        check_layers("video_layers", self.video_layers, n_layers)


def check_context(lm: VideoLM, layout: TokenLayout) -> None:
    """Refuse inputs longer than the model's context, with the token count and the limit."""
    limit = getattr(lm.adapter.text_config, "max_position_embeddings", None)
    if limit is not None and layout.seq_len > limit:
        raise FlowlensError(f"input has {layout.seq_len} tokens, more than the model's context of {limit}")


@torch.no_grad()
def trace_sample(lm: VideoLM, sample: Sample, options: TraceOptions | None = None) -> SampleTrace:
    """Run one sample with the flowlens backend and return everything the trace keeps."""
    options = options or TraceOptions()
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
    check_context(lm, layout)
    capture = FlowCapture(layout, lm.device, CaptureOptions())
    residuals = ResidualCapture(layout, lm.device, options.video_layers)
    with (
        language_attention(lm.model),
        active_handler(capture, expected_calls=layout.n_layers),
        residuals.attached(lm.adapter.language_layers()),
        final_hidden(lm) as grab,
    ):
        lm.model(**inputs, logits_to_keep=1)
    logits = head_logits_fp32(lm.adapter.output_head(), grab["last"])[0]
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
        metadata=_jsonable(sample.metadata),
    )


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))
    }
