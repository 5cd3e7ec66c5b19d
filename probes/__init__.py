"""Linear probes over activations stored by flowlens runs (scikit-learn).

    import flowlens, probes
    run = flowlens.open_run("runs/toy/trace.h5")
    table = probes.probe_run(run, probes.ProbeOptions(target=["frame_index"]))

One probe per (target, layer): `LinearProbe` (StandardScaler + LogisticRegression, C chosen by inner
folds) scored by `cross_validate` with folds split by sample, next to a control task (Hewitt & Liang
2019, `probes.control`) on the same folds; selectivity = accuracy - control accuracy. `flowlens probe`
runs it from the command line (`probes.analysis`). See docs/probes.md.
"""

from __future__ import annotations

from typing import Any

from probes.control import control_labels, token_types
from probes.data import POOLS, ProbeData, probe_data
from probes.labels import BUILTIN, Target, resolve_target
from probes.options import C_GRID, ProbeOptions
from probes.sweep import COLUMNS, check_run, needed_activations, probe_run

_LAZY = {"LinearProbe", "CrossValidation", "cross_validate", "outer_folds"}  # scikit-learn, imported on use


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from probes import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'probes' has no attribute {name!r}")


__all__ = [
    "BUILTIN",
    "COLUMNS",
    "C_GRID",
    "POOLS",
    "CrossValidation",
    "LinearProbe",
    "ProbeData",
    "ProbeOptions",
    "Target",
    "check_run",
    "control_labels",
    "cross_validate",
    "needed_activations",
    "outer_folds",
    "probe_data",
    "probe_run",
    "resolve_target",
    "token_types",
]
