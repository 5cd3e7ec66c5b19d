"""Qwen2-VL, Qwen2.5-VL and Qwen3-VL: 3D patches of `temporal_patch_size` frames, 2x2 spatial merging.

The vision tower embeds `temporal_patch_size` (2) consecutive frames as one temporal group and
attends only within a group (`cu_seqlens` per group); each group gives (h / merge) x (w / merge)
tokens in row-major order over the merged grid (`video_grid_thw` counts patches before merging).
Qwen2/2.5-VL put all groups back to back between one `<|vision_start|>` and `<|vision_end|>`;
Qwen3-VL writes `<t seconds><|vision_start|>...<|vision_end|>` per group; the layout builder gives each
frame group the markup that introduces it (`frameN_markup`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from flowlens.data.video import Frames
from flowlens.errors import LayoutError
from flowlens.models.base import FrameGroupCells, VideoAdapter, VideoTokenPlan
from flowlens.models.registry import register_adapter
from flowlens.models.tiny_tokenizer import build_byte_level_tokenizer

QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_NAMED_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}


def chatml_template(default_system: str | None) -> str:
    """The family's ChatML template (video/image pads inside vision markers), trimmed to what flowlens sends."""
    default = ""
    if default_system:
        default = (
            "{% if loop.first and message['role'] != 'system' %}"
            "{{ '<|im_start|>system\\n" + default_system + "<|im_end|>\\n' }}{% endif %}"
        )
    return (
        "{% for message in messages %}" + default + "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for c in message['content'] %}"
        "{% if c['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
        "{% elif c['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
        "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )


class QwenVLAdapter(VideoAdapter):
    """What the three Qwen-VL generations share: temporal groups of 2 frames, merged row-major grids."""

    default_system: ClassVar[str | None] = "You are a helpful assistant."

    def processor_kwargs(self, frames: Frames) -> dict[str, Any]:
        """Pass the sampled frames as they are, with their source indices and fps (timestamps, mRoPE time)."""
        metadata = {
            "total_num_frames": int(frames.total_frames),
            "fps": float(frames.fps),
            "frames_indices": [int(i) for i in frames.indices],
            "height": int(frames.frames.shape[1]),
            "width": int(frames.frames.shape[2]),
        }
        return {"do_sample_frames": False, "video_metadata": [metadata]}

    def video_plan(self, inputs: Any, frames: Frames) -> VideoTokenPlan:
        """One frame group per temporal patch; its sources are the sampled frames it was built from."""
        vision = self.model.config.vision_config
        merge, temporal = int(vision.spatial_merge_size), int(vision.temporal_patch_size)
        grid_thw = inputs["video_grid_thw"]
        if len(grid_thw) != 1:
            raise LayoutError(f"expected one video, the processor produced {len(grid_thw)}")
        grid_t, grid_h, grid_w = (int(x) for x in grid_thw[0])
        n_frames = len(frames.frames)
        if grid_t != -(-n_frames // temporal):
            raise LayoutError(
                f"{n_frames} frames make {-(-n_frames // temporal)} temporal groups of {temporal}, but the "
                f"processor produced {grid_t}; did the video processor resample frames?"
            )
        rows, cols = grid_h // merge, grid_w // merge
        groups = [
            FrameGroupCells.full_grid(
                rows, cols, list(range(t * temporal, min((t + 1) * temporal, n_frames)))
            )
            for t in range(grid_t)
        ]
        notes = []
        if n_frames % temporal:
            notes.append(
                f"the last frame group repeats frame {n_frames - 1} ({n_frames} frames, groups of {temporal})"
            )
        return VideoTokenPlan({int(self.model.config.video_token_id)}, groups, notes=notes)

    # -- tiny models ------------------------------------------------------------
    @classmethod
    def tiny_tokenizer(cls) -> Any:
        """Qwen2's byte-level BPE (shipped merges) with the Qwen special tokens and chat template."""
        return build_byte_level_tokenizer(
            QWEN_SPECIAL_TOKENS, chatml_template(cls.default_system), named_tokens=QWEN_NAMED_TOKENS
        )

    @staticmethod
    def tiny_text_kwargs(
        tokenizer: Any, n_layers: int, mrope_section: list[int], theta: float
    ) -> dict[str, Any]:
        """Language-model settings shared by the tiny configs (head_dim 16, so mrope_section sums to 8)."""
        return dict(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=n_layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": theta, "mrope_section": mrope_section},
            bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=tokenizer.pad_token_id,
        )

    @staticmethod
    def tiny_token_ids(tokenizer: Any) -> dict[str, int]:
        """The special-token ids the top-level config carries."""
        ids = tokenizer.convert_tokens_to_ids
        return dict(
            image_token_id=ids("<|image_pad|>"),
            video_token_id=ids("<|video_pad|>"),
            vision_start_token_id=ids("<|vision_start|>"),
            vision_end_token_id=ids("<|vision_end|>"),
        )


# Frames resize (aspect kept, sides multiples of 28) to 84 x 112 px for 4:3 to 5:4 video: 3 x 4 tokens per group.
QWEN2_PIXELS = {"shortest_edge": 84 * 84, "longest_edge": 112 * 112}


def qwen2_processor(processor_class: type, tokenizer: Any, default_system: str | None) -> Any:
    """A Qwen2-VL-style processor (Qwen2VL image and video processors, 14 px patches) with tiny frames."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    return processor_class(
        image_processor=Qwen2VLImageProcessor(size=dict(QWEN2_PIXELS), patch_size=14, merge_size=2),
        video_processor=Qwen2VLVideoProcessor(
            size=dict(QWEN2_PIXELS),
            patch_size=14,
            temporal_patch_size=2,
            merge_size=2,
            cap_pixels_per_frame=False,
        ),
        tokenizer=tokenizer,
        chat_template=chatml_template(default_system),
    )


@register_adapter
class Qwen2VLAdapter(QwenVLAdapter):
    architectures = ("Qwen2VLForConditionalGeneration",)
    family = "qwen2_vl"
    model_class_name = "Qwen2VLForConditionalGeneration"

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import Qwen2VLConfig, Qwen2VLProcessor, Qwen2VLTextConfig, Qwen2VLVisionConfig

        tokenizer = cls.tiny_tokenizer()
        text = Qwen2VLTextConfig(**cls.tiny_text_kwargs(tokenizer, n_layers, [2, 3, 3], 1e6))
        vision = Qwen2VLVisionConfig(  # embed_dim: vision width; hidden_size: merger output (LM width)
            depth=2,
            embed_dim=32,
            hidden_size=64,
            mlp_ratio=2,
            num_heads=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config = Qwen2VLConfig(text_config=text, vision_config=vision, **cls.tiny_token_ids(tokenizer))
        config.architectures = [cls.model_class_name]
        return config, qwen2_processor(Qwen2VLProcessor, tokenizer, cls.default_system)


@register_adapter
class Qwen2_5_VLAdapter(QwenVLAdapter):
    architectures = ("Qwen2_5_VLForConditionalGeneration",)
    family = "qwen2_5_vl"
    model_class_name = "Qwen2_5_VLForConditionalGeneration"

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import (
            Qwen2_5_VLConfig,
            Qwen2_5_VLProcessor,
            Qwen2_5_VLTextConfig,
            Qwen2_5_VLVisionConfig,
        )

        tokenizer = cls.tiny_tokenizer()
        text = Qwen2_5_VLTextConfig(**cls.tiny_text_kwargs(tokenizer, n_layers, [2, 3, 3], 1e6))
        vision = Qwen2_5_VLVisionConfig(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            tokens_per_second=2,
            window_size=56,
            fullatt_block_indexes=[1],  # layer 0: windows of 2 x 2 merged tokens; layer 1: whole group
        )
        config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, **cls.tiny_token_ids(tokenizer))
        config.architectures = [cls.model_class_name]
        return config, qwen2_processor(Qwen2_5_VLProcessor, tokenizer, cls.default_system)


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    architectures = ("Qwen3VLForConditionalGeneration",)
    family = "qwen3_vl"
    model_class_name = "Qwen3VLForConditionalGeneration"
    default_system = None

    @classmethod
    def tiny_components(cls, n_layers: int) -> tuple[Any, Any]:
        from transformers import (
            Qwen2VLImageProcessor,
            Qwen3VLConfig,
            Qwen3VLProcessor,
            Qwen3VLTextConfig,
            Qwen3VLVideoProcessor,
            Qwen3VLVisionConfig,
        )

        tokenizer = cls.tiny_tokenizer()
        text_kwargs = cls.tiny_text_kwargs(tokenizer, n_layers, [4, 2, 2], 5e6)
        text_kwargs["rope_parameters"]["mrope_interleaved"] = True
        text = Qwen3VLTextConfig(head_dim=16, **text_kwargs)
        vision = Qwen3VLVisionConfig(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=16,
            spatial_merge_size=2,
            temporal_patch_size=2,
            num_position_embeddings=64,
            deepstack_visual_indexes=[0, 1],
        )
        config = Qwen3VLConfig(text_config=text, vision_config=vision, **cls.tiny_token_ids(tokenizer))
        config.architectures = [cls.model_class_name]
        # Qwen3-VL's size bounds count pixels over all frames: 8 frames of 4:3 to 5:4 video become 96 x 128 px.
        video_size = {"shortest_edge": 8 * 96 * 96, "longest_edge": 8 * 128 * 128}
        processor = Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(
                size={"shortest_edge": 96 * 96, "longest_edge": 128 * 128},
                patch_size=16,
                merge_size=2,
            ),
            video_processor=Qwen3VLVideoProcessor(
                size=video_size,
                patch_size=16,
                temporal_patch_size=2,
                merge_size=2,
                do_sample_frames=False,
                cap_pixels_per_frame=False,
            ),
            tokenizer=tokenizer,
            chat_template=chatml_template(cls.default_system),
        )
        return config, processor
