"""Adapter registry keyed by Hugging Face architecture name, extended by the entry-point group `flowlens.adapters`.

A plugin package declares, in its pyproject.toml::

    [project.entry-points."flowlens.adapters"]
    MyVideoLMForConditionalGeneration = "my_pkg.adapter:MyAdapter"

or calls `flowlens.register_adapter(MyAdapter)` at run time. Built-in adapters cannot be overridden
by entry points (as in TransformerLens), only by an explicit `register_adapter(..., override=True)`.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from flowlens.errors import UnsupportedArchitectureError
from flowlens.models.base import VideoAdapter

ENTRY_POINT_GROUP = "flowlens.adapters"

_BUILTIN_MODULES = [
    "flowlens.models.llava_next_video",
    "flowlens.models.llava_onevision",
    "flowlens.models.qwen_vl",
    "flowlens.models.video_llama_3",
    "flowlens.models.internvl",
]

_ADAPTERS: dict[str, type[VideoAdapter]] = {}
_FAMILIES: dict[str, type[VideoAdapter]] = {}
_loaded = False


def register_adapter(adapter: type[VideoAdapter], override: bool = False) -> type[VideoAdapter]:
    """Register `adapter` for each of its `architectures` (usable as a class decorator)."""
    for arch in adapter.architectures:
        if arch in _ADAPTERS and not override and _ADAPTERS[arch] is not adapter:
            raise ValueError(f"an adapter for {arch} is already registered ({_ADAPTERS[arch].__name__})")
        _ADAPTERS[arch] = adapter
    if adapter.family:
        _FAMILIES.setdefault(adapter.family, adapter)
    return adapter


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _ADAPTERS:
            continue
        adapter = ep.load()
        if ep.name not in adapter.architectures:
            adapter.architectures = (*adapter.architectures, ep.name)
        register_adapter(adapter)


def adapter_for_architecture(architecture: str) -> type[VideoAdapter]:
    """The adapter class for an HF architecture name (`config.architectures[0]`)."""
    _ensure_loaded()
    try:
        return _ADAPTERS[architecture]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"architecture {architecture} is not a supported video LLM; supported: "
            f"{', '.join(sorted(_ADAPTERS))} (plugins register through the '{ENTRY_POINT_GROUP}' entry point)"
        ) from None


def adapter_for_family(family: str) -> type[VideoAdapter]:
    """The adapter class for an HF `model_type` such as `llava_next_video`."""
    _ensure_loaded()
    try:
        return _FAMILIES[family]
    except KeyError:
        raise UnsupportedArchitectureError(
            f"unknown model family {family!r}; families: {', '.join(sorted(_FAMILIES))}"
        ) from None


def supported_architectures() -> list[str]:
    _ensure_loaded()
    return sorted(_ADAPTERS)


def supported_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)
