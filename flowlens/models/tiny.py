"""`tiny:<family>` models: random weights from a config, the family's real processor, a tiny tokenizer.

The model and processor are saved once to a local cache folder and then loaded with the same
`from_pretrained` path as a Hub checkpoint, so tests exercise the real loading code. Weights come
from a fixed seed, so every load (and every machine) sees the same model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
import transformers

from flowlens.models.registry import adapter_for_family

TINY_SEED = 0


def cache_root() -> Path:
    """Where generated tiny models live: $FLOWLENS_CACHE or ~/.cache/flowlens."""
    return Path(os.environ.get("FLOWLENS_CACHE", Path.home() / ".cache" / "flowlens"))


def tiny_path(family: str, layers: int | None = None) -> Path:
    """Build (once) and return the local folder of the tiny model of `family`."""
    adapter = adapter_for_family(family)
    layers = layers or adapter.tiny_default_layers
    config, processor = adapter.tiny_components(layers)
    target = cache_root() / "tiny" / f"{family}-L{layers}-{_fingerprint(config, processor)}"
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        with torch.random.fork_rng():
            torch.manual_seed(TINY_SEED)
            model = adapter.model_class()(config)
        model.eval()
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _fingerprint(config: object, processor: object) -> str:
    """Short hash of everything that defines a tiny model, so a changed config never reuses a stale cache."""
    text = "\n".join(
        [config.to_json_string(), processor.to_json_string(), transformers.__version__, torch.__version__]
    )
    return hashlib.sha1(text.encode()).hexdigest()[:12]
