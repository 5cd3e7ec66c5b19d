"""Report section of a patching run: mean normalised logit difference per layer x group, per direction and hook."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from markupsafe import Markup, escape

from flowlens.report.figures import TEMPLATE
from flowlens.report.knockout import plotly_text
from flowlens.report.sections import Section
from flowlens.store.run import Run

DIRECTION_TEXT = {
    "denoise": "clean activations patched into the corrupted run (1 = the clean answer restored)",
    "noise": "corrupted activations patched into the clean run (0 = the answer fully broken)",
}


def effect_figure(effects, direction: str, hook: str) -> go.Figure:
    """Heatmap: layer (rows) x group (columns) of the mean normalised logit difference."""
    figure = go.Figure(
        go.Heatmap(
            z=effects.to_numpy(dtype=np.float64),
            x=[plotly_text(str(g)) for g in effects.columns],
            y=[int(layer) for layer in effects.index],
            colorscale="RdBu",
            zmid=0.5,
            zmin=min(0.0, float(np.nanmin(effects.to_numpy()))),
            zmax=max(1.0, float(np.nanmax(effects.to_numpy()))),
            colorbar={"title": {"text": "norm. LD"}},
            hovertemplate="layer %{y}<br>group %{x}<br>normalised LD %{z:.3f}<extra></extra>",
        )
    )
    figure.update_layout(
        template=TEMPLATE,
        title={"text": plotly_text(f"{direction}: {hook}")},
        xaxis={"title": {"text": "patched group"}},
        yaxis={"title": {"text": "layer (0-based)"}, "dtick": 1},
        height=360,
    )
    return figure


def patch_section(run: Run) -> Section | None:
    """The patching section, or None when the run holds no `patching` table."""
    from flowlens.analyses.patch import TABLE, mean_effects

    if TABLE not in run.row_tables:
        return None
    settings = run.config.get("settings", {})
    figures = {}
    for direction in settings.get("directions", []):
        for hook in settings.get("hooks", []):
            effects = mean_effects(run, direction, hook)
            if effects is not None and not np.isnan(effects.to_numpy(dtype=np.float64)).all():
                figures[f"patch-{direction}-{hook}"] = effect_figure(effects, direction, hook)
    table = run.table(TABLE)
    caption = (
        f"Activation patching between each sample's clean video and its corruption "
        f"{settings.get('corruption', '?')} over {table['sample'].nunique()} samples. Colour: mean normalised "
        "logit difference (LD - LD_corrupted) / (LD_clean - LD_corrupted), LD = logit(answer) - "
        "logit(corrupted answer). " + " ".join(f"{d}: {t}." for d, t in DIRECTION_TEXT.items())
    )
    return Section("patch", "Activation patching", caption, figures, top_cells_table(run, settings))


def top_cells_table(run: Run, settings: dict, top: int = 5) -> Markup:
    """HTML table: per direction and hook, the cells that restore (denoise) or break (noise) the answer most."""
    from flowlens.analyses.patch import mean_effects

    rows = []
    for direction in settings.get("directions", []):
        for hook in settings.get("hooks", []):
            effects = mean_effects(run, direction, hook)
            if effects is None:
                continue
            cells = effects.stack().dropna()
            cells = cells.sort_values(ascending=direction == "noise").head(top)
            listed = ", ".join(f"{group}@{layer} ({value:.2f})" for (layer, group), value in cells.items())
            rows.append(
                f"<tr><td>{escape(direction)}</td><td>{escape(hook)}</td><td>{escape(listed)}</td></tr>"
            )
    if not rows:
        return Markup("")
    head = (
        "<tr><th>direction</th><th>hook</th><th>strongest cells: group@layer (mean normalised LD)</th></tr>"
    )
    return Markup(f"<table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>")
