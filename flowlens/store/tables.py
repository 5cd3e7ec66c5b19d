"""Tidy tables built from a `Run`: flows and summary edges (traced samples), answers, failures, row tables.

Label columns of the large flow tables (`sample`, `target`, `source`, `edge`) are pandas categoricals
and index columns (`layer`, `head`, frames) int16, so a table of many samples stays small in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from flowlens.errors import FlowlensError
from flowlens.store import schema
from flowlens.store.edges import EDGES, edge_flows

if TYPE_CHECKING:
    from flowlens.store.run import Run

INDEX = np.int16


def frame_flow(run: Run) -> pd.DataFrame:
    """sample, layer, head, target_frame, source_frame, value: `frame_flow` of every sample."""
    columns = ["layer", "head", "target_frame", "source_frame"]
    parts = [_long(run.array(sample, "frame_flow"), columns) for sample in run.traced]
    return _with_sample(run, parts, columns)


def segment_flow(run: Run) -> pd.DataFrame:
    """sample, layer, head, target, source, value: `segment_flow` with segment names from each layout."""
    names: dict[str, int] = {}
    parts = []
    for sample in run.traced:
        part = _long(run.array(sample, "segment_flow"), ["layer", "head", "target", "source"])
        codes = np.asarray(
            [names.setdefault(n, len(names)) for n in run.layout(sample).partition], dtype=np.int32
        )
        part["target"], part["source"] = codes[part["target"]], codes[part["source"]]
        parts.append(part)
    table = _with_sample(run, parts, ["layer", "head", "target", "source"])
    for column in ("target", "source"):
        table[column] = pd.Categorical.from_codes(table[column].to_numpy(np.int32), categories=list(names))
    return table


def flow_summary(run: Run) -> pd.DataFrame:
    """sample, layer, edge, value: head-mean flow along each summary edge (`flowlens.store.edges`)."""
    parts = []
    for sample in run.traced:
        flows = edge_flows(run.array(sample, "segment_flow"), run.layout(sample))
        n_layers = run.layout(sample).n_layers
        parts.append(
            {
                "layer": np.tile(np.arange(n_layers, dtype=INDEX), len(flows)),
                "edge": np.repeat(np.asarray([EDGES.index(e) for e in flows], dtype=np.int32), n_layers),
                "value": np.concatenate(list(flows.values())) if flows else np.zeros(0),
            }
        )
    table = _with_sample(run, parts, ["layer", "edge"])
    table["edge"] = pd.Categorical.from_codes(table["edge"].to_numpy(np.int32), categories=list(EDGES))
    return table


def answers(run: Run) -> pd.DataFrame:
    """sample, task, answer, predicted, correct, predicted_letter, correct_letter, p_<letter>...: the clean
    answer per sample (`predicted`: argmax over the vocabulary, as the paper; `_letter`: over the options)."""
    rows, letters = [], set()
    for sample in run.samples:
        readout = run.answer(sample)
        letters.update(readout.letters)
        row = {
            "sample": sample,
            "task": run.metadata(sample).get("task"),
            "answer": readout.answer,
            "predicted": readout.predicted,
            "correct": readout.correct,
            "predicted_letter": readout.predicted_letter,
            "correct_letter": readout.correct_letter,
        }
        row.update({f"p_{x}": float(p) for x, p in zip(readout.letters, readout.probs, strict=True)})
        rows.append(row)
    probs = [f"p_{x}" for x in sorted(letters)]
    columns = [
        "sample",
        "task",
        "answer",
        "predicted",
        "correct",
        "predicted_letter",
        "correct_letter",
        *probs,
    ]
    table = pd.DataFrame(rows, columns=columns)
    table["correct"] = table["correct"].astype("boolean")
    table["correct_letter"] = table["correct_letter"].astype("boolean")
    for column in probs:
        table[column] = table[column].astype(np.float64)
    return table


def failures(run: Run) -> pd.DataFrame:
    """sample, kind, reason, source, line: every recorded failure (source: the annotation file of a record
    that never became a sample, or the sample's video; line: the record's line in that file)."""
    from flowlens.data.failures import failure_kind

    rows = []
    for sample, reason in run.failures.items():
        meta = run.failure_metadata(sample)
        line = meta.get("line")
        rows.append(
            {
                "sample": sample,
                "kind": failure_kind(reason),
                "reason": reason,
                "source": meta.get("source"),
                "line": int(line) if isinstance(line, int) else pd.NA,
            }
        )
    table = pd.DataFrame(rows, columns=["sample", "kind", "reason", "source", "line"])
    table["line"] = table["line"].astype("Int64")
    return table


def row_table(run: Run, name: str) -> pd.DataFrame:
    """sample, task, then the stored columns: a row table (e.g. `knockout`) of every sample that holds it."""
    parts = []
    for sample in run.row_tables[name]:
        part = run.rows(sample, name)
        part.insert(0, "task", run.metadata(sample).get("task"))
        part.insert(0, "sample", sample)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)  # columns a sample lacks are missing values


# Tables computed from other tables of a run (e.g. lens keyword statistics from `video_lens` rows), registered
# by the analysis that owns them: name -> (the row table they need, builder).
DERIVED: dict[str, tuple[str, Callable[[Run], pd.DataFrame]]] = {}


def register_table(name: str, needs: str, builder: Callable[[Run], pd.DataFrame]) -> None:
    """Make `run.table(name)` build a table from the run's `needs` row table (for analyses' summaries)."""
    DERIVED[name] = (needs, builder)


def derived_tables(run: Run) -> list[str]:
    """Derived tables this run can build (their source table is present)."""
    from flowlens.analyses.registry import analyses

    analyses()  # the built-in analyses register their derived tables on import
    return [name for name, (needs, _) in DERIVED.items() if needs in run.row_tables]


def run_table(run: Run, name: str) -> pd.DataFrame:
    """A table stored for the whole run (`RunWriter.write_run_table`)."""
    from flowlens.store.rows import read_table

    return read_table(run._file[schema.RUN_TABLES_GROUP][name])


TABLES: dict[str, Callable[[Run], pd.DataFrame]] = {
    "frame_flow": frame_flow,
    "segment_flow": segment_flow,
    "flow_summary": flow_summary,
    "answers": answers,
    "failures": failures,
}


def build_table(run: Run, name: str) -> pd.DataFrame:
    """The table called `name` if this run has it (`run.tables()`); otherwise a FlowlensError saying why."""
    if name in run.run_tables:
        return run_table(run, name)
    if name in run.row_tables:
        return row_table(run, name)
    if name in derived_tables(run):
        return DERIVED[name][1](run)
    if name in schema.TRACE_TABLES and name not in run.tables():
        raise FlowlensError(
            f"{run.path} has no traced samples, so no {name!r} table (its samples hold row tables); "
            f"tables: {', '.join(run.tables())}"
        )
    if name not in TABLES:
        raise FlowlensError(f"no table {name!r}; tables: {', '.join(run.tables())}")
    return TABLES[name](run)


def _long(array: np.ndarray, columns: list[str]) -> dict[str, np.ndarray]:
    """Index columns and a `value` column for every element of `array`, in C order."""
    index = np.indices(array.shape, dtype=INDEX).reshape(array.ndim, -1)
    return {**dict(zip(columns, index, strict=True)), "value": array.reshape(-1)}


def _with_sample(run: Run, parts: list[dict[str, np.ndarray]], columns: list[str]) -> pd.DataFrame:
    """Concatenate the parts (one per traced sample, in write order) behind a categorical `sample` column."""
    lengths = np.asarray([len(part["value"]) for part in parts], dtype=np.int64)
    codes = np.repeat(np.arange(len(parts), dtype=np.int32), lengths)
    data: dict[str, object] = {"sample": pd.Categorical.from_codes(codes, categories=run.traced)}
    for column in [*columns, "value"]:
        data[column] = np.concatenate([part[column] for part in parts]) if parts else np.zeros(0, INDEX)
    table = pd.DataFrame(data)
    if not parts:
        table["value"] = table["value"].astype(np.float32)
    return table
