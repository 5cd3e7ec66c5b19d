"""Benchmark models: tiny LLaVA-NeXT-Video variants with a 7B model's attention proportions.

The unit-test tiny models have head_dim 16 and 16 tokens per frame, which makes attention
bookkeeping look far costlier than on a real model. Here frames give 144 tokens (336 px, patch 14,
2x2 pooling) as in LLaVA-NeXT-Video-7B, and heads have head_dim 64; width stays small so a
4096-token forward runs on a laptop CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

import flowlens
from flowlens.models.llava_next_video import LlavaNextVideoAdapter
from flowlens.models.tiny import cache_root


def bench_llava_next_video(layers: int, hidden: int = 512, heads: int = 8) -> flowlens.VideoLM:
    """A `layers`-deep LLaVA-NeXT-Video with 144 tokens per frame and head_dim hidden/heads (random weights)."""
    path = cache_root() / "bench" / f"llava_next_video-L{layers}-d{hidden}-h{heads}"
    if not (path / "config.json").exists():
        config, processor = LlavaNextVideoAdapter.tiny_components(layers)
        text = config.text_config
        text.hidden_size, text.intermediate_size = hidden, hidden * 8 // 3
        text.num_attention_heads = text.num_key_value_heads = heads
        text.head_dim = hidden // heads
        config.vision_config.image_size, config.vision_config.patch_size = 336, 14
        processor.patch_size = 14
        processor.video_processor.size = {"shortest_edge": 336}
        processor.video_processor.crop_size = {"height": 336, "width": 336}
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = LlavaNextVideoAdapter.model_class()(config)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return flowlens.load(str(Path(path)))
