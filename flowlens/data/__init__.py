"""Samples, video decoding, benchmark loaders and datasets."""

from flowlens.data.datasets import DATASETS, load
from flowlens.data.jsonl import LoadFailure, SampleList, read_jsonl
from flowlens.data.sample import Sample
from flowlens.data.video import Frames, read_frames

__all__ = ["DATASETS", "Frames", "LoadFailure", "Sample", "SampleList", "load", "read_frames", "read_jsonl"]
