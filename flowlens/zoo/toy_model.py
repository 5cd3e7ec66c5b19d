"""Architecture of the toy model: a small LLaVA-NeXT-Video with its real processor and a word tokenizer."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from flowlens.data.synthetic import FRAME_SIZE, vocabulary
from flowlens.models.llava_next_video import VICUNA_TEMPLATE, llava_next_video_components
from flowlens.models.prompt import PromptTemplate
from flowlens.models.tiny_tokenizer import build_word_tokenizer

# Map the Flow's prompt without the 46-token system prompt: a shorter sequence makes CPU training
# about 20% cheaper. Saved as flowlens_prompt.json beside the weights; `flowlens.load` applies it.
TOY_TEMPLATE = PromptTemplate(system=None)


@dataclass
class ToyArchitecture:
    """Sizes of the toy model; 64 px frames in 8 px patches pool 2x2 to 4x4 = 16 tokens per frame."""

    image_size: int = FRAME_SIZE
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    hidden_size: int = 64
    intermediate_size: int = 256
    layers: int = 4
    heads: int = 4
    # Vision position embeddings start at 15x the default std (0.02), about the scale of a patch's
    # colour embedding, so each video token's features say where in the frame it is; with the default
    # the pre-LayerNorm all but erases position and moving_direction stays at chance for a long time.
    vision_position_std: float = 0.3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def initialise(model: Any, arch: ToyArchitecture) -> None:
    """Toy-specific initialisation on top of the transformers default (uses the global torch RNG)."""
    import torch

    with torch.no_grad():
        model.model.vision_tower.embeddings.position_embedding.weight.normal_(0.0, arch.vision_position_std)


def toy_components(arch: ToyArchitecture) -> tuple[Any, Any]:
    """(config, processor) of an untrained toy model; every word of the synthetic benchmark is in the vocabulary."""
    from transformers import CLIPVisionConfig, LlamaConfig

    if (arch.image_size // arch.patch_size) % 2:
        raise ValueError("image_size / patch_size must be even (the video pooler halves the patch grid)")
    tokenizer = build_word_tokenizer(
        ["<image>", "<video>"],
        VICUNA_TEMPLATE,
        extra_words=vocabulary(),
        named_tokens={"image_token": "<image>", "video_token": "<video>"},
        add_bos=True,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.layers,
        num_attention_heads=arch.heads,
        num_key_value_heads=arch.heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=arch.vision_hidden,
        intermediate_size=2 * arch.vision_hidden,
        num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads,
        image_size=arch.image_size,
        patch_size=arch.patch_size,
        projection_dim=arch.vision_hidden,
    )
    return llava_next_video_components(tokenizer, text, vision, vision_feature_layer=-1)
