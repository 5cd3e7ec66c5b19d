"""Trace: one clean forward per sample with attention reductions, residual summaries and the answer read-out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
    max_gb: float | None = option(
        None,
        "refuse a run whose stored arrays would exceed this many GB (before compression)",
        affects_results=False,
    )

    def __post_init__(self) -> None:
        positive("frames", self.frames)
        positive("max_gb", self.max_gb)
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
            layout, len(self.video_layers), self.received_attention, self.rollout, self.value_norms
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
def trace_sample(lm: VideoLM, sample: Sample, options: TraceOptions | None = None) -> SampleTrace:
    """Run one sample with the flowlens backend and return everything the trace keeps."""
    options = options or TraceOptions()
    sample.validate(require_options=True)
    inputs, layout = lm.prepare(sample, frames=options.frames)
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
        activations=chosen.result(),
        received_attention=capture.received_attention() if options.received_attention else None,
        rollout=capture.rollout() if options.rollout else None,
        value_norm=capture.value_norm() if options.value_norms else None,
    )


def _jsonable(metadata: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool, type(None), list, dict))
    }
