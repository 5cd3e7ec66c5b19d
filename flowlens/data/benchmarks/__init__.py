"""Loaders of published VideoQA benchmarks, by name: each reads the benchmark's own files under `--data-dir`."""

from __future__ import annotations

from collections.abc import Callable

from flowlens.data.benchmarks.mvbench import load_mvbench, load_tvbench
from flowlens.data.benchmarks.nextqa import load_nextqa
from flowlens.data.benchmarks.tempcompass import load_tempcompass
from flowlens.data.benchmarks.tomato import load_tomato
from flowlens.data.benchmarks.videomme import load_videomme
from flowlens.data.jsonl import SampleList

Loader = Callable[..., SampleList]

BENCHMARKS: dict[str, Loader] = {
    "tvbench": load_tvbench,
    "mvbench": load_mvbench,
    "tempcompass": load_tempcompass,
    "nextqa": load_nextqa,
    "videomme": load_videomme,
    "tomato": load_tomato,
}

__all__ = ["BENCHMARKS", "Loader"]
