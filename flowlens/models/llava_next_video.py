"""LLaVA-NeXT-Video (`llava-hf/LLaVA-NeXT-Video-7B-hf`): CLIP per frame, 2x2 spatial pooling, frame-major tokens.

Each frame gives (image_size / patch_size / stride)^2 tokens in row-major order (12 x 12 = 144 for
the 7B model); frames follow one another with no separators.
"""

from __future__ import annotations

from typing import Any

from flowlens.data.video import Frames
from flowlens.models.base import FrameGroupCells, VideoAdapter, VideoTokenPlan
from flowlens.models.registry import register_adapter
from flowlens.models.tiny_tokenizer import build_word_tokenizer

VICUNA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% for c in message['content'] %}{{ c['text'] }}{% endfor %}{{ ' ' }}"
    "{% else %}{{ message['role'].upper() + ': ' }}"
    "{% for c in message['content'] %}{% if c['type'] == 'image' %}{{ '<image>\\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'video' %}{{ '<video>\\n' }}{% endif %}{% endfor %}"
    "{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] + ' ' }}{% endif %}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


@register_adapter
class LlavaNextVideoAdapter(VideoAdapter):
    architectures = ("LlavaNextVideoForConditionalGeneration",)
    family = "llava_next_video"
    model_class_name = "LlavaNextVideoForConditionalGeneration"

    def video_plan(self, inputs: Any, frames: Frames) -> VideoTokenPlan:
        config = self.model.config
        vision = config.vision_config
        n_frames, _, height, width = inputs["pixel_values_videos"].shape[1:]
        if height != vision.image_size or width != vision.image_size:
            raise ValueError(
                f"video frames are {height}x{width}, the vision tower expects {vision.image_size}"
            )
        side = vision.image_size // vision.patch_size // config.spatial_pool_stride
        groups = [FrameGroupCells.full_grid(side, side, [f]) for f in range(n_frames)]
        return VideoTokenPlan({int(config.video_token_id)}, groups)

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import CLIPVisionConfig, LlamaConfig

        image_size, patch = 56, 7
        tokenizer = build_word_tokenizer(
            ["<image>", "<video>"],
            VICUNA_TEMPLATE,
            named_tokens={"image_token": "<image>", "video_token": "<video>"},
            add_bos=True,
        )
        text = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=32768,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
            projection_dim=32,
        )
        return llava_next_video_components(tokenizer, text, vision, vision_feature_layer=-2)


def llava_next_video_components(
    tokenizer: Any, text: Any, vision: Any, vision_feature_layer: int
) -> tuple[Any, Any]:
    """(config, processor) of a small LLaVA-NeXT-Video from its tokenizer and text/vision configs.

    Shared by the tiny test model and the trained toy: square frames of the vision tower's size,
    2x2 average pooling, the Vicuna chat template and the real processor classes.
    """
    from transformers import (
        LlavaNextImageProcessor,
        LlavaNextVideoConfig,
        LlavaNextVideoProcessor,
        LlavaNextVideoVideoProcessor,
    )

    image_size = vision.image_size
    config = LlavaNextVideoConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[image_size, image_size], [image_size, 2 * image_size]],
        vision_feature_layer=vision_feature_layer,
        spatial_pool_stride=2,
        spatial_pool_mode="average",
        tie_word_embeddings=False,
    )
    config.architectures = [LlavaNextVideoAdapter.model_class_name]
    size = {"shortest_edge": image_size}
    crop = {"height": image_size, "width": image_size}
    processor = LlavaNextVideoProcessor(
        video_processor=LlavaNextVideoVideoProcessor(size=size, crop_size=crop),
        image_processor=LlavaNextImageProcessor(
            size=size, crop_size=crop, image_grid_pinpoints=config.image_grid_pinpoints
        ),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        chat_template=VICUNA_TEMPLATE,
        num_additional_image_tokens=1,
    )
    return config, processor
