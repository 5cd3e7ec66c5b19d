"""InternVL, HF-native (`OpenGVLab/InternVL3-1B-hf`): InternViT per frame, pixel-shuffle 2x downsampling.

The `<video>` placeholder expands to `Frame{i}: <img><IMG_CONTEXT>*image_seq_length</img>` joined by
"\\n" (`replace_video_token` in processing_internvl.py); the video features are the image-context
tokens. Each frame gives (image_size / patch_size * downsample_ratio)^2 tokens (16 x 16 = 256 for
448 / 14 * 0.5), row-major after `pixel_shuffle`; the `Frame{i}: <img>`, `</img>` text is markup.
"""

from __future__ import annotations

from typing import Any

from flowlens.data.video import Frames
from flowlens.models.base import FrameGroupCells, VideoAdapter, VideoTokenPlan
from flowlens.models.registry import register_adapter
from flowlens.models.tiny_tokenizer import build_byte_level_tokenizer

# Mimics the InternVL-hf template (convert_internvl_weights_to_hf.py): contents in order, media + "\n".
INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif c['type'] == 'video' %}{{ '<video>\\n' }}"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@register_adapter
class InternVLAdapter(VideoAdapter):
    architectures = ("InternVLForConditionalGeneration",)
    family = "internvl"
    model_class_name = "InternVLForConditionalGeneration"

    def placeholder_token_id(self) -> int:
        """The `<video>` token of the chat template (the processor exposes only its text)."""
        return int(self.processor.tokenizer.convert_tokens_to_ids(self.processor.video_token))

    def video_plan(self, inputs: Any, frames: Frames) -> VideoTokenPlan:
        """Per frame a row-major pixel-shuffled grid of image-context tokens; <img>, </img>, Frame{i}: are markup."""
        config = self.model.config
        vision = config.vision_config
        n_frames, _, height, width = inputs["pixel_values"].shape
        if (height, width) != tuple(vision.image_size):
            raise ValueError(
                f"video frames are {height}x{width}, the vision tower expects {vision.image_size}"
            )
        rows = int(vision.image_size[0] // vision.patch_size[0] * config.downsample_ratio)
        cols = int(vision.image_size[1] // vision.patch_size[1] * config.downsample_ratio)
        groups = [FrameGroupCells.full_grid(rows, cols, [f]) for f in range(n_frames)]
        return VideoTokenPlan({int(config.image_token_id)}, groups)

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import (
            GotOcr2ImageProcessor,
            InternVLConfig,
            InternVLProcessor,
            InternVLVideoProcessor,
            InternVLVisionConfig,
            Qwen2Config,
        )

        # 56 / 7 = 8 patches a side, pixel-shuffled by 0.5 to 4 x 4 = 16 tokens a frame.
        image_size, patch, ratio = 56, 7, 0.5
        image_seq_length = int((image_size // patch * ratio) ** 2)
        special = [
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<img>",
            "</img>",
            "<IMG_CONTEXT>",
            "<video>",
        ]
        named = {
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        }
        # Qwen2.5's byte-level BPE, as InternVL3's language model
        tokenizer = build_byte_level_tokenizer(special, INTERNVL_TEMPLATE, named_tokens=named)
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
            tie_word_embeddings=True,
        )
        vision = InternVLVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=patch,
        )
        config = InternVLConfig(
            vision_config=vision,
            text_config=text,
            image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
            image_seq_length=image_seq_length,
            downsample_ratio=ratio,
            vision_feature_layer=-1,
            vision_feature_select_strategy="default",
            tie_word_embeddings=True,
        )
        config.architectures = [cls.model_class_name]
        size = {"height": image_size, "width": image_size}
        processor = InternVLProcessor(
            image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
            video_processor=InternVLVideoProcessor(size=size),
            tokenizer=tokenizer,
            image_seq_length=image_seq_length,
            chat_template=INTERNVL_TEMPLATE,
        )
        return config, processor
