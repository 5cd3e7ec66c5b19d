"""Row tables of a sample (knockout sweeps, pathway runs): checked 1-D columns of str, int, float or bool in HDF5.

A table is a group `tables/<table>` with one dataset per column, named by `schema.escape_id(column)`;
the group's `columns` attribute (JSON) keeps the column names in order. Strings are variable-length
UTF-8; numbers and booleans keep their numpy dtype. Every column is one chunk of at most 1 MiB rows,
gzip-compressed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import pandas as pd

from flowlens.errors import FlowlensError
from flowlens.store import schema

STRING = h5py.string_dtype("utf-8")
_VLEN_ITEMSIZE = 16  # bytes HDF5 keeps per variable-length string in a chunk (the strings live in the heap)


def check_table_name(table: str) -> None:
    """Raise unless `table` is a usable row-table name: `[A-Za-z0-9_-]+`, not a built-in table's name."""
    if not isinstance(table, str) or not table or schema.escape_id(table) != table:
        raise FlowlensError(f"a row table name is letters, digits, '_' and '-', got {table!r}")
    if table in (*schema.RUN_TABLES, *schema.TRACE_TABLES):
        raise FlowlensError(f"{table!r} is a built-in table; name the row table something else")


def checked_columns(table: str, columns: Mapping[str, np.ndarray | Sequence[Any]]) -> dict[str, np.ndarray]:
    """The columns as 1-D arrays (strings as object arrays of `str`), after checking names, types and lengths."""
    check_table_name(table)
    if not columns:
        raise FlowlensError(f"row table {table!r} needs at least one column")
    arrays: dict[str, np.ndarray] = {}
    for name, values in columns.items():
        if not isinstance(name, str) or not name:
            raise FlowlensError(f"row table {table!r}: column names are non-empty strings, got {name!r}")
        if name in schema.ROW_KEY_COLUMNS:
            raise FlowlensError(
                f"row table {table!r}: column {name!r} is reserved (Run.table adds sample and task)"
            )
        arrays[name] = _column(table, name, values)
    lengths = {name: len(array) for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise FlowlensError(f"row table {table!r}: columns must have equal lengths, got {shown}")
    return arrays


def write_table(tables: h5py.Group, table: str, columns: Mapping[str, np.ndarray]) -> None:
    """Store checked columns (from `checked_columns`) as `tables/<table>/<escaped column>` datasets."""
    group = tables.create_group(table)
    group.attrs["columns"] = json.dumps(list(columns))
    for name, array in columns.items():
        text = array.dtype == object
        itemsize = _VLEN_ITEMSIZE if text else array.dtype.itemsize
        chunks = schema.chunk_shape(array.shape, itemsize, lead=max(len(array), 1))
        options = {"chunks": chunks, **schema.COMPRESSION} if chunks else {}
        group.create_dataset(
            schema.escape_id(name), data=array, dtype=STRING if text else array.dtype, **options
        )


def read_table(group: h5py.Group) -> pd.DataFrame:
    """One stored row table as a DataFrame, columns in write order (strings as Python `str`)."""
    data: dict[str, np.ndarray] = {}
    for name in json.loads(group.attrs["columns"]):
        dataset = group[schema.escape_id(name)]
        if h5py.check_string_dtype(dataset.dtype) is not None:
            data[name] = np.asarray(dataset.asstr()[()], dtype=object)
        else:
            data[name] = dataset[()]
    return pd.DataFrame(data)


def _column(table: str, name: str, values: np.ndarray | Sequence[Any]) -> np.ndarray:
    """One column as a 1-D array of bool, integer, float or `str` (object) values."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise FlowlensError(f"row table {table!r}: column {name!r} must be 1-D, got shape {array.shape}")
    if array.dtype.kind in "biuf":
        return np.ascontiguousarray(array)
    if array.dtype.kind == "U":
        if not isinstance(values, np.ndarray) and not all(isinstance(value, str) for value in values):
            raise FlowlensError(  # numpy would have turned the other values into text
                f"row table {table!r}: column {name!r} mixes str with other values"
            )
        return np.asarray([str(value) for value in array], dtype=object)
    if array.dtype.kind == "O":
        bad = [value for value in array if not isinstance(value, str)][:1]
        if not bad:
            return np.asarray([str(value) for value in array], dtype=object)
        what = f"values like {bad[0]!r}"
    else:
        what = f"dtype {array.dtype}"
    raise FlowlensError(
        f"row table {table!r}: column {name!r} must hold str, int, float or bool values, got {what}"
    )
