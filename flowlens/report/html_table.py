"""One escaped HTML table of a data frame's columns, for the report sections that show a results table."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
from markupsafe import Markup, escape


def html_table(
    table: pd.DataFrame, columns: Sequence[str], formats: Mapping[str, str | None] | None = None
) -> Markup:
    """`columns` of `table`, every cell escaped; a float goes in a numeric cell as `formats.get(column, ".3f")`
    (a format of None shows the column's floats as plain text)."""
    formats = formats or {}
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for record in table[list(columns)].to_dict("records"):
        cells = []
        for column in columns:
            value, spec = record[column], formats.get(column, ".3f")
            if isinstance(value, float) and spec is not None:
                cells.append(f'<td class="num">{escape(format(value, spec))}</td>')
            else:
                cells.append(f"<td>{escape(str(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return Markup(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
