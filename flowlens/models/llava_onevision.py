"""LLaVA-OneVision (`llava-hf/llava-onevision-qwen2-7b-ov-hf`): SigLIP per frame, bilinear 2x pooling, one newline.

Each frame gives a (image_size / patch_size) grid (27 x 27 for SigLIP-384/14) bilinearly pooled to
ceil(h / 2) x ceil(w / 2) tokens (14 x 14 = 196), row-major, frame after frame; a single
`image_newline` token follows the last frame (`apply_pooling` and `get_video_features` in
modeling_llava_onevision.py).
"""

from __future__ import annotations

import math
from typing import Any

from flowlens.data.video import Frames
from flowlens.models.base import FrameGroupCells, VideoAdapter, VideoTokenPlan
from flowlens.models.registry import register_adapter
from flowlens.models.tiny_tokenizer import build_byte_level_tokenizer

# Mimics the llava-hf OneVision template: "<|im_start|>role " + media tokens + "\n" + each text.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}{{ '<video>' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ '\\n' + c['text'] }}{% endif %}{% endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@register_adapter
class LlavaOnevisionAdapter(VideoAdapter):
    architectures = ("LlavaOnevisionForConditionalGeneration",)
    family = "llava_onevision"
    model_class_name = "LlavaOnevisionForConditionalGeneration"

    def video_plan(self, inputs: Any, frames: Frames) -> VideoTokenPlan:
        """Per frame a pooled ceil(h/2) x ceil(w/2) grid, then one trailing newline token (no cell)."""
        config = self.model.config
        vision = config.vision_config
        n_frames, _, height, width = inputs["pixel_values_videos"].shape[1:]
        if height != vision.image_size or width != vision.image_size:
            raise ValueError(
                f"video frames are {height}x{width}, the vision tower expects {vision.image_size}"
            )
        side = math.ceil((vision.image_size // vision.patch_size) / 2)
        groups = [FrameGroupCells.full_grid(side, side, [f]) for f in range(n_frames)]
        return VideoTokenPlan({int(config.video_token_id)}, groups, trailing_separators=1)

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import (
            LlavaOnevisionConfig,
            LlavaOnevisionImageProcessor,
            LlavaOnevisionProcessor,
            LlavaOnevisionVideoProcessor,
            Qwen2Config,
            SiglipVisionConfig,
        )

        # 56 / 8 = 7 patches a side (odd, like 384 / 14 = 27), pooled to ceil(7 / 2) = 4.
        image_size, patch = 56, 8
        special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
        tokenizer = build_byte_level_tokenizer(  # Qwen2's byte-level BPE, as the real checkpoints
            special, ONEVISION_TEMPLATE, named_tokens={"image_token": "<image>", "video_token": "<video>"}
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
        vision = SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
        )
        pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
        config = LlavaOnevisionConfig(
            vision_config=vision,
            text_config=text,
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
            image_grid_pinpoints=pinpoints,
            vision_feature_layer=-1,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
            tie_word_embeddings=False,
        )
        config.architectures = [cls.model_class_name]
        size = {"height": image_size, "width": image_size}
        processor = LlavaOnevisionProcessor(
            image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
            video_processor=LlavaOnevisionVideoProcessor(size=size),
            tokenizer=tokenizer,
            num_image_tokens=(image_size // patch) ** 2,
            vision_feature_select_strategy="full",
            vision_aspect_ratio="anyres_max_9",
            chat_template=ONEVISION_TEMPLATE,
        )
        return config, processor
