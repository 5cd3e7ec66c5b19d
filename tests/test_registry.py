"""Adapter registry: built-in families, plugins through the entry-point group, clear errors."""

from __future__ import annotations

import pytest
from conftest import FAMILIES

from flowlens.errors import UnsupportedArchitectureError
from flowlens.models import registry
from flowlens.models.base import VideoAdapter


def test_builtin_families_and_architectures():
    assert set(FAMILIES) <= set(registry.supported_families())
    for arch in [
        "LlavaNextVideoForConditionalGeneration",
        "LlavaOnevisionForConditionalGeneration",
        "Qwen2VLForConditionalGeneration",
        "Qwen2_5_VLForConditionalGeneration",
        "Qwen3VLForConditionalGeneration",
        "VideoLlama3ForConditionalGeneration",
        "InternVLForConditionalGeneration",
    ]:
        assert registry.adapter_for_architecture(arch).architectures[0] == arch


def test_unsupported_architecture_message():
    with pytest.raises(UnsupportedArchitectureError, match="flowlens.adapters"):
        registry.adapter_for_architecture("GPT2LMHeadModel")


def test_entry_point_plugin(monkeypatch):
    class PluginAdapter(VideoAdapter):
        architectures = ()
        family = "plugin_family"

    class FakeEntryPoint:
        name = "PluginForConditionalGeneration"

        def load(self):
            return PluginAdapter

    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    monkeypatch.setattr(registry, "_loaded", False)
    monkeypatch.setattr(
        registry, "entry_points", lambda group: [FakeEntryPoint()] if group == "flowlens.adapters" else []
    )
    assert registry.adapter_for_architecture("PluginForConditionalGeneration") is PluginAdapter
    assert registry.adapter_for_family("plugin_family") is PluginAdapter


def test_register_twice_needs_override(monkeypatch):
    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))

    class Other(VideoAdapter):
        architectures = ("LlavaNextVideoForConditionalGeneration",)

    with pytest.raises(ValueError, match="already registered"):
        registry.register_adapter(Other)
    assert registry.register_adapter(Other, override=True) is Other
