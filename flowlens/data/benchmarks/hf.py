"""`hf:<repo>[:<config>]`: rows of a Hugging Face dataset (any split slice, e.g. `test[:50]`), videos from `--data-dir`.

Rows in a known benchmark's columns are read by that benchmark's parser (Video-MME, MVBench/TVBench
`candidates`, NExT-QA `a0`..`a4`, TempCompass `dim`), so the same path rules apply under `--data-dir`;
other rows go through the column mapping (`--columns`). The `datasets` package is imported only
here; without it, or without network and cache, the error is one line.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flowlens.data.benchmarks import mvbench, nextqa, table, tempcompass, videomme
from flowlens.data.benchmarks.common import Collected, TaskFile, norm, parse_split, read_json
from flowlens.data.jsonl import SampleList
from flowlens.data.sample import Sample
from flowlens.errors import FlowlensError, SampleError

PREFIX = "hf:"
DEFAULT_SPLIT = "test"
REPOS = {"FunAILab/TVBench": "tvbench", "OpenGVLab/MVBench": "mvbench"}
_OFFLINE_HINTS = ("connect", "offline", "resolve", "network", "timed out", "couldn't reach", "max retries")


def parse_name(name: str) -> tuple[str, str | None]:
    """`hf:lmms-lab/Video-MME:videomme` -> ("lmms-lab/Video-MME", "videomme")."""
    spec = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    repo, _, config = spec.partition(":")
    if not repo.strip():
        raise FlowlensError(f"{name!r}: write hf:<owner>/<dataset>[:<config>]")
    return repo.strip(), config.strip() or None


def fetch_rows(repo: str, config: str | None, split: str) -> Any:
    """The split (slices such as `test[:50]` included) as a `datasets.Dataset`, or a one-line error."""
    try:
        import datasets
    except ImportError as exc:
        raise FlowlensError(
            "hf: datasets need the `datasets` package: pip install 'flowlens[hf]' (or pip install datasets)"
        ) from exc
    if not Path(repo).expanduser().exists():
        _offline_unless_reachable(datasets)
    try:
        return datasets.load_dataset(repo, config, split=split)
    # datasets raises many types (network, missing config, bad split): all become one line
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = ""
        if isinstance(exc, (ConnectionError, TimeoutError)) or any(
            h in first.lower() for h in _OFFLINE_HINTS
        ):
            hint = (
                "; offline? download it while online (it is then cached) or use a local copy with --data-dir"
            )
        raise FlowlensError(
            f"cannot load Hugging Face dataset {repo!r} split {split!r}: {first}{hint}"
        ) from exc


def _offline_unless_reachable(datasets: Any) -> None:
    """When the Hub does not answer (one 3 s TCP check), switch `datasets` and the Hub client to offline mode,
    so a dataset that is not cached fails at once instead of after ~30 s of HTTP retries."""
    import os

    from flowlens.models.loading import hub_reachable

    if hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    import huggingface_hub.constants

    huggingface_hub.constants.HF_HUB_OFFLINE = True
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if hasattr(datasets.config, name):
            setattr(datasets.config, name, True)


def detect(repo: str, columns: Sequence[str], mapped: bool) -> str:
    """Which parser reads these rows: a benchmark's by repo or columns, else `table` (column mapping)."""
    if mapped:
        return "table"
    if repo in REPOS:
        return REPOS[repo]
    cols = set(columns)
    if {"videoID", "options", "question_id"} <= cols:
        return "videomme"
    if "candidates" in cols:
        return "candidates"
    if {"a0", "a4", "qid", "type"} <= cols:
        return "nextqa"
    if {"video_id", "dim", "question", "answer"} <= cols:
        return "tempcompass"
    return "table"


def task_file(kind: str, config: str | None) -> TaskFile:
    """The MVBench/TVBench task of a config (its video prefix), or a task reading videos from the root."""
    for task in mvbench.BENCHMARK_TASKS.get(kind, ()):
        if config and norm(task.name) == norm(config):
            return task
    return TaskFile(config or "default", f"{config or 'default'}.json", "")


def parse_rows(
    rows: Any, kind: str, config: str | None, root: Path, columns: Any, source: str
) -> Iterator[Any]:
    """Each row as a `Sample` or the `SampleError` saying why it is unusable."""
    mapping = table.parse_columns(columns) if kind == "table" else None
    vidor: dict[str, str] = {}
    if kind == "nextqa" and (root / "nextqa" / nextqa.MAP_FILE).is_file():
        vidor = {str(k): str(v) for k, v in read_json(root / "nextqa" / nextqa.MAP_FILE).items()}
    seen: Counter[tuple[str, str]] = Counter()
    for number, row in enumerate(rows):
        try:
            if kind in ("mvbench", "tvbench", "candidates"):
                video_root = root / "video" if kind != "candidates" else root
                yield mvbench.record_to_sample(row, task_file(kind, config), number, video_root, kind)
            elif kind == "videomme":
                yield videomme.row_to_sample(row, root)
            elif kind == "nextqa":
                yield nextqa.row_to_sample(row, root, vidor)
            elif kind == "tempcompass":
                key = (str(row.get("video_id")), str(row.get("dim")))
                seen[key] += 1
                yield tempcompass.item_to_sample(*key, seen[key] - 1, row, root / "videos")
            else:
                yield table.row_to_sample(row, mapping, root, f"{source}-{number}")
        except SampleError as exc:
            yield exc


def load_hf(
    name: str,
    data_dir: str | Path | None = None,
    task: Sequence[str] | None = None,
    split: str | None = None,
    limit: int | None = None,
    columns: Any = None,
) -> SampleList:
    """Samples from a Hub dataset's split; video paths resolve under `data_dir` (default: current folder)."""
    repo, config = parse_name(name)
    split_name, part = parse_split(split or DEFAULT_SPLIT)
    split = split_name or DEFAULT_SPLIT
    rows = fetch_rows(repo, config, split)
    kind = detect(repo, list(getattr(rows, "column_names", None) or []), columns is not None)
    root = Path(data_dir).expanduser() if data_dir is not None else Path.cwd()
    keep = {norm(t) for t in task or []}
    out = Collected(name)
    for line, parsed in enumerate(parse_rows(rows, kind, config, root, columns, repo), start=1):
        if isinstance(parsed, SampleError):
            out.fail(f"{repo}:{split}", line, str(parsed))
        elif isinstance(parsed, Sample) and (not keep or norm(parsed.metadata.get("task", "")) in keep):
            out.add(parsed, f"{repo}:{split}", line)
    return out.finish(part, limit)  # task filter, then the slice, then the limit, as for every dataset
