"""VideoLLaMA3 (`lkhl/VideoLLaMA3-2B-Image-HF`): SigLIP-NaViT per frame, 2x2 merge, similarity-based token dropping.

Each frame is resized (aspect kept) to a multiple of patch_size * merge_size and gives a
(h / merge) x (w / merge) grid of tokens in row-major order (`pixel_unshuffle` in
modeling_video_llama_3.py). The processor's `video_compression_mask` drops the tokens of a frame that
barely differ from the previous frame, so each frame keeps only the True cells of its mask. Frames
are written as `Time {t:.1f}s:<tokens>` joined by "," (that text is markup: each frame group owns the
`Time ...:` and the "," before it, as `frameN_markup`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flowlens.data.video import Frames
from flowlens.models.base import FrameGroupCells, VideoAdapter, VideoTokenPlan
from flowlens.models.registry import register_adapter
from flowlens.models.tiny_tokenizer import build_byte_level_tokenizer

# Mimics the lkhl/VideoLLaMA3-*-HF template: "<|im_start|>role\n", contents in order, "<|im_end|>\n".
VIDEOLLAMA3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if add_system_prompt is defined and add_system_prompt and loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are VideoLLaMA3 created by Alibaba DAMO Academy, a helpful assistant to help people understand images and videos.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'text' %}{{ c['text'] }}"
    "{% elif c['type'] == 'image' %}{{ '<|image_pad|>\\n' }}"
    "{% elif c['type'] == 'video' %}{{ '<|video_pad|>\\n' }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@register_adapter
class VideoLlama3Adapter(VideoAdapter):
    architectures = ("VideoLlama3ForConditionalGeneration",)
    family = "video_llama_3"
    model_class_name = "VideoLlama3ForConditionalGeneration"

    def processor_kwargs(self, frames: Frames) -> dict[str, Any]:
        """Frame timestamps for the `Time {t}s:` prompt text; the frames are already sampled."""
        height, width = frames.frames.shape[1:3]
        metadata = {
            "total_num_frames": int(frames.total_frames),
            "fps": float(frames.fps),
            "frames_indices": [int(i) for i in frames.indices],
            "height": int(height),
            "width": int(width),
        }
        return {"video_metadata": [metadata], "do_sample_frames": False}

    def video_plan(self, inputs: Any, frames: Frames) -> VideoTokenPlan:
        """One group per frame holding only the cells its compression mask keeps, in row-major order."""
        if len(inputs["video_grid_thw"]) != 1:
            raise ValueError("expected exactly one video in the processor output")
        (t, h, w), merge = inputs["video_grid_thw"][0].tolist(), int(inputs["video_merge_sizes"][0])
        rows, cols = h // merge, w // merge
        mask = inputs.get("video_compression_mask")
        keep = np.ones(t * rows * cols, bool) if mask is None else mask.cpu().numpy().astype(bool)
        if t != len(frames.frames) or keep.size != t * rows * cols:
            raise ValueError(
                f"expected {len(frames.frames)} frames of {rows} x {cols} tokens, got {t} and {keep.size}"
            )
        groups = []
        for f, frame_keep in enumerate(keep.reshape(t, rows * cols)):
            r, c = np.divmod(np.flatnonzero(frame_keep), cols)
            groups.append(FrameGroupCells(r, c, [f], (rows, cols)))
        return VideoTokenPlan({int(self.model.config.video_token_id)}, groups)

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import (
            Qwen2Config,
            VideoLlama3Config,
            VideoLlama3ImageProcessor,
            VideoLlama3Processor,
            VideoLlama3VideoProcessor,
            VideoLlama3VisionConfig,
        )

        # patch 7, merge 2: a 64 x 80 frame resizes to 70 x 84 -> 10 x 12 patches -> 5 x 6 tokens.
        patch, merge = 7, 2
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>"]
        tokenizer = build_byte_level_tokenizer(  # Qwen2.5's byte-level BPE, as the real checkpoints
            special,
            VIDEOLLAMA3_TEMPLATE,
            named_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
        )
        text = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=False,
        )
        vision = VideoLlama3VisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            patch_size=patch,
        )
        config = VideoLlama3Config(
            text_config=text,
            vision_config=vision,
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            tie_word_embeddings=False,
        )
        config.architectures = [cls.model_class_name]
        pixels = {"min_pixels": 28 * 28, "max_pixels": 112 * 112}
        processor = VideoLlama3Processor(
            image_processor=VideoLlama3ImageProcessor(patch_size=patch, merge_size=1, **pixels),
            # The video budget (max_pixels) is shared by all frames: 16 frames of at most 112 x 112.
            video_processor=VideoLlama3VideoProcessor(
                patch_size=patch,
                merge_size=merge,
                min_pixels=28 * 28,
                max_pixels=16 * 112 * 112,
                use_token_compression=True,
            ),
            tokenizer=tokenizer,
            chat_template=VIDEOLLAMA3_TEMPLATE,
        )
        return config, processor
