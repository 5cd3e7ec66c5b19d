"""`flowlens.data.load`: a dataset name or a JSONL path -> samples (with the entries that failed)."""

from __future__ import annotations

from pathlib import Path

from flowlens.data.jsonl import SampleList, read_jsonl
from flowlens.errors import FlowlensError

DATASETS = ("synthetic",)


def load(
    name_or_path: str | Path,
    split: str | None = None,
    seed: int | None = None,
    limit: int | None = None,
    progress: bool = False,
) -> SampleList:
    """Samples of `synthetic` (a shipped split, or any `seed`; generated once into the cache) or a JSONL file.

    `limit` keeps the first samples. For `synthetic` it also sets how many are generated (sample i
    of a seed never depends on the set size). Unusable lines are in the result's `.failures`.
    """
    if limit is not None and limit < 1:
        raise FlowlensError(f"--limit must be positive, got {limit}")
    if str(name_or_path) == "synthetic":
        from flowlens.data.synthetic import cached

        return read_jsonl(cached(split=split, seed=seed, n=limit, progress=progress), limit=limit)
    path = Path(name_or_path).expanduser()
    if path.is_dir() or path.suffix != ".jsonl":
        raise FlowlensError(f"unknown dataset {str(name_or_path)!r}; use one of {', '.join(DATASETS)} or a .jsonl file")
    if split is not None or seed is not None:
        raise FlowlensError("--split and --seed apply to generated datasets (synthetic), not to a JSONL file")
    if not path.exists():
        raise FlowlensError(f"dataset file not found: {path}")
    return read_jsonl(path, limit=limit)
