"""Model adapters, token layouts and loading."""

from flowlens.models.base import Prepared, VideoAdapter, VideoLM
from flowlens.models.layout import TokenLayout
from flowlens.models.loading import load
from flowlens.models.prompt import PromptTemplate
from flowlens.models.registry import register_adapter, supported_architectures, supported_families

__all__ = [
    "Prepared",
    "PromptTemplate",
    "TokenLayout",
    "VideoAdapter",
    "VideoLM",
    "load",
    "register_adapter",
    "supported_architectures",
    "supported_families",
]
