"""Plotly figures as plain dicts, for figures built many times (per-sample pages): no validation, arrays as
plotly.js typed arrays (base64), the house template added by reference once per page."""

from __future__ import annotations

import base64
import json
from functools import cache
from typing import Any

import numpy as np


def typed(values: Any, dtype: str = "f4") -> dict[str, str]:
    """A numeric array as plotly.js's typed-array JSON ({dtype, bdata, shape}); float32 unless told."""
    array = np.ascontiguousarray(np.asarray(values, dtype=np.dtype(dtype)))
    out = {"dtype": dtype, "bdata": base64.b64encode(array.tobytes()).decode("ascii")}
    if array.ndim > 1:
        out["shape"] = ", ".join(str(n) for n in array.shape)
    return out


@cache
def template(name: str) -> dict[str, Any]:
    """A plotly template's layout JSON (e.g. plotly_white), computed once."""
    import plotly.io as pio

    return json.loads(json.dumps(pio.templates[name].to_plotly_json()))


def figure_json(figure: Any) -> str:
    """JSON of a `go.Figure` or of a plain {data, layout} dict (which gets its named template filled in)."""
    if isinstance(figure, dict):
        layout = dict(figure.get("layout", {}))
        if isinstance(layout.get("template"), str):
            layout["template"] = template(layout["template"])
        return json.dumps({"data": figure["data"], "layout": layout})
    return figure.to_json()


def to_figure(figure: Any) -> Any:
    """A `go.Figure` from either form (for static export)."""
    import plotly.graph_objects as go

    return go.Figure(json.loads(figure_json(figure)))
