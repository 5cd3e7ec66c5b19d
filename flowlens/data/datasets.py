"""`flowlens.data.load`: a dataset name, `hf:` id or file -> samples (with the entries that failed, and notes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from flowlens.data.benchmarks import BENCHMARKS
from flowlens.data.benchmarks.common import SplitPart, norm, parse_split
from flowlens.data.jsonl import SampleList, expand_user, read_jsonl
from flowlens.errors import FlowlensError

DATASETS = ("synthetic", *BENCHMARKS)


def load(
    name_or_path: str | Path,
    split: str | None = None,
    seed: int | None = None,
    limit: int | None = None,
    progress: bool = False,
    data_dir: str | Path | None = None,
    task: str | Sequence[str] | None = None,
    columns: str | Mapping[str, str] | None = None,
) -> SampleList:
    """Samples of `synthetic`, a benchmark (`tvbench`, `mvbench`, ...), `hf:<repo>[:<config>]`, or a file.

    Benchmarks read their published files under `data_dir` (their root folder); `task` keeps only
    the named tasks; `split` picks a split and may slice it (`test[:50]`, `test[10:20]`, `test[:10%]`,
    rows as `datasets` counts them); `limit` keeps the first samples. Filters apply first, then the
    slice, then the limit, for every kind of dataset. A `.jsonl` file is flowlens' own format unless `columns` maps its fields (as for `.csv`
    and `.json`). Unusable records are in the result's `.failures`, skipped tasks in `.notes`.
    For `synthetic`, `seed` generates a fresh set and `limit` also sets how many are generated.
    """
    if limit is not None and limit < 1:
        raise FlowlensError(f"--limit must be positive, got {limit}")
    tasks = [task] if isinstance(task, str) else list(task or [])
    name = str(name_or_path)
    if seed is not None and name != "synthetic":
        raise FlowlensError("--seed applies to the generated synthetic dataset only")
    if name == "synthetic":
        _refuse(data_dir=data_dir, columns=columns, dataset=name)
        from flowlens.data.synthetic import cached

        split_name, part = parse_split(split)
        first_only = part.whole and not tasks  # then the first `limit` clips are all that is needed
        path = cached(split=split_name, seed=seed, n=limit if first_only else None, progress=progress)
        return _select(read_jsonl(path), tasks, part, limit)
    if name.lower() in BENCHMARKS:
        _refuse(columns=columns, dataset=name)
        return BENCHMARKS[name.lower()](data_dir, tasks, split, limit)
    if name.startswith("hf:"):
        from flowlens.data.benchmarks.hf import load_hf

        return load_hf(name, data_dir, tasks, split, limit, columns)
    return _load_file(expand_user(name), split, limit, data_dir, tasks, columns)


def _load_file(
    path: Path,
    split: str | None,
    limit: int | None,
    data_dir: str | Path | None,
    tasks: list[str],
    columns: str | Mapping[str, str] | None,
) -> SampleList:
    """A flowlens JSONL file, or any CSV / JSONL / JSON file through the column mapping."""
    if path.is_dir() or path.suffix not in (".jsonl", ".csv", ".json"):
        raise FlowlensError(
            f"unknown dataset {str(path)!r}; use one of {', '.join(DATASETS)}, hf:<repo>, or a .jsonl/.csv/.json file"
        )
    if not path.exists():
        raise FlowlensError(f"dataset file not found: {path}")
    if path.suffix != ".jsonl" or columns is not None:
        from flowlens.data.benchmarks.table import load_table

        return load_table(path, columns, data_dir, tasks, split, limit)
    name, part = parse_split(split)
    if name is not None:
        raise FlowlensError(
            f"{path.name} is one file with no splits; slice it with --split '[:50]' or --limit"
        )
    return _select(read_jsonl(path, root=data_dir), tasks, part, limit)


def _select(samples: SampleList, tasks: list[str], part: SplitPart, limit: int | None) -> SampleList:
    """Filters first (`tasks`), then the split slice, then `limit`: the order every loader follows."""
    kept = _keep_tasks(samples, tasks)
    return SampleList(part.apply(kept)[:limit], kept.failures, kept.notes)


def _keep_tasks(samples: SampleList, tasks: list[str]) -> SampleList:
    """Only the samples whose `metadata["task"]` is one of `tasks` (all when empty)."""
    if not tasks:
        return samples
    keep = {norm(t) for t in tasks}
    kept = [s for s in samples if norm(s.metadata.get("task", "")) in keep]
    if not kept and samples:
        present = sorted({str(s.metadata.get("task")) for s in samples})
        raise FlowlensError(f"no sample has task {', '.join(tasks)}; tasks here: {', '.join(present)}")
    return SampleList(kept, samples.failures, samples.notes)


def _refuse(dataset: str, **options: object) -> None:
    """A one-line error for options that mean nothing for this dataset."""
    given = [k.replace("_", "-") for k, v in options.items() if v is not None]
    if given:
        raise FlowlensError(f"--{given[0]} does not apply to {dataset}")
