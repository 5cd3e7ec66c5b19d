"""`export_table`: write one of a run's tidy tables to CSV or Parquet (what `flowlens export` calls)."""

from __future__ import annotations

import os
from pathlib import Path

from flowlens.errors import FlowlensError
from flowlens.store.run import Run, open_run

FORMATS = ("csv", "parquet")


def export_table(
    run_path: str | os.PathLike[str] | Run,
    name: str,
    fmt: str = "csv",
    out: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write table `name` as `fmt` and return the file.

    `out`: a file, or a folder (one that exists, or a path ending in `/`, created if needed) that gets
    `<run stem>.<name>.<fmt>`; default beside the run. An existing file is replaced only with `overwrite`.
    """
    if fmt not in FORMATS:
        raise FlowlensError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    run = run_path if isinstance(run_path, Run) else open_run(run_path)
    try:
        table = run.table(name)
        target = _target(run.path, name, fmt, out)
    finally:
        if run is not run_path:
            run.close()
    if target.exists() and not overwrite:
        raise FlowlensError(f"{target} already exists; pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        table.to_csv(target, index=False)
    else:
        try:
            table.to_parquet(target, index=False)
        except ImportError as exc:
            raise FlowlensError("parquet export needs pyarrow: pip install pyarrow") from exc
    return target


def _target(run_path: Path, name: str, fmt: str, out: str | os.PathLike[str] | None) -> Path:
    default = f"{run_path.stem}.{name}.{fmt}"
    if out is None:
        return run_path.with_name(default)
    folder = str(out).endswith(("/", os.sep)) or Path(out).is_dir()
    return Path(out) / default if folder else Path(out)
