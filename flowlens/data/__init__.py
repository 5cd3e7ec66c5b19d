"""Samples, video decoding and datasets."""

from flowlens.data.datasets import load
from flowlens.data.jsonl import LoadFailure, SampleList, read_jsonl
from flowlens.data.sample import Sample
from flowlens.data.video import read_frames

__all__ = ["LoadFailure", "Sample", "SampleList", "load", "read_frames", "read_jsonl"]
