"""Samples, video decoding and datasets."""

from flowlens.data.sample import Sample
from flowlens.data.video import read_frames

__all__ = ["Sample", "read_frames"]
