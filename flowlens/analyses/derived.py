"""Run files derived from another run (no forward): the source's identity inside theirs, its failures carried over."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from flowlens.analyses.options import all_settings, results_settings
from flowlens.store.hdf5 import RunWriter
from flowlens.store.run import Run


def write_derived_run(
    name: str,
    source: Run,
    options: Any,
    path: Path,
    tables: dict[str, pd.DataFrame],
    *,
    resume: bool,
    overwrite: bool,
    settings: dict[str, Any] | None = None,
) -> None:
    """Write `tables` as run tables of `path`, with an identity naming `source` (a resume checks it), and
    `source`'s failures; `settings` adds to the recorded (not the identity) settings."""
    config = {
        "analysis": name,
        "model": source.config.get("model"),
        "revision": source.config.get("revision"),
        "source": str(source.path),
        "settings": {**all_settings(options), **(settings or {})},
        "dataset": source.config.get("dataset", {}),
        "identity": {
            "analysis": name,
            "model": source.config.get("model"),
            "revision": source.config.get("revision"),
            "settings": results_settings(options),
            "source": source.config.get("identity", {}),
            "samples": list(source.traced),
        },
    }
    with RunWriter(path, config, source.model_info, resume=resume, overwrite=overwrite) as out:
        for sample, reason in source.failures.items():
            if sample not in out.failed():
                out.write_failure(sample, reason, source.failure_metadata(sample))
        for table_name, table in tables.items():
            out.write_run_table(table_name, {column: table[column].tolist() for column in table.columns})
