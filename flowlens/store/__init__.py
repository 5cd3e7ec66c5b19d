"""HDF5 run files: writer, reader (`Run`), tidy and row tables, and the knockout summary."""

from flowlens.store.export import export_table
from flowlens.store.hdf5 import RunWriter
from flowlens.store.knockout_summary import summarize_knockout
from flowlens.store.records import AnswerReadout, SampleTrace
from flowlens.store.run import Run, open_run

__all__ = [
    "AnswerReadout",
    "Run",
    "RunWriter",
    "SampleTrace",
    "export_table",
    "open_run",
    "summarize_knockout",
]
