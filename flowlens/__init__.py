"""flowlens: how information flows between frames and from video to text in video LLMs."""

from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError
from flowlens.models import (
    Prepared,
    PromptTemplate,
    TokenLayout,
    VideoAdapter,
    VideoLM,
    load,
    register_adapter,
    supported_architectures,
    supported_families,
)
from flowlens.store.run import open_run

__version__ = "0.1.0"

__all__ = [
    "FlowlensError",
    "Prepared",
    "PromptTemplate",
    "Sample",
    "TokenLayout",
    "VideoAdapter",
    "VideoLM",
    "__version__",
    "load",
    "open_run",
    "register_adapter",
    "supported_architectures",
    "supported_families",
]
