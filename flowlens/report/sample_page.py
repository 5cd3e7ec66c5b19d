"""Per-sample pages: the sample's frames under its `last` attention, its question, answer, probabilities and flows.

One small HTML file per traced sample in a folder beside the report; the pages share one `plotly.min.js`
there (written once), so a run of thousands of samples does not repeat plotly's 4 MB per page.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowlens.report.figures import FrameFlowMean, edge_figure, frame_flow_figure
from flowlens.report.plain import figure_json
from flowlens.report.trace_sections import sample_video_figure
from flowlens.store.run import Run
from flowlens.store.schema import escape_id

PLOTLY_FILE = "plotly.min.js"


def write_sample_pages(run: Run, folder: Path, report_name: str) -> list[Path]:
    """Write one page per traced sample (and the shared plotly.js) into `folder`; return the pages' paths."""
    from plotly.offline import get_plotlyjs

    from flowlens.report.html import templates

    folder.mkdir(parents=True, exist_ok=True)
    script = folder / PLOTLY_FILE
    plotly_js = get_plotlyjs()
    if not script.exists() or script.stat().st_size != len(plotly_js.encode()):
        partial = folder / f".{PLOTLY_FILE}.partial"
        partial.write_text(plotly_js, encoding="utf-8")
        os.replace(partial, script)
    summary = run.table("flow_summary")
    by_sample = dict(tuple(summary.groupby("sample", sort=False))) if len(summary) else {}
    template = templates().get_template("sample.html")
    paths = []
    for sample in run.traced:
        context = sample_context(run, sample, by_sample.get(sample))
        path = folder / f"{escape_id(sample)}.html"
        partial = folder / f".{path.name}.partial"  # a process killed half-way leaves the previous page
        partial.write_text(template.render(report=f"../{report_name}", **context), encoding="utf-8")
        os.replace(partial, path)
        paths.append(path)
    return paths


def sample_context(run: Run, sample: str, summary: pd.DataFrame | None) -> dict[str, Any]:
    """What a sample page shows: texts (escaped by the template), option probabilities and its figures."""
    from markupsafe import Markup

    from flowlens.report.html import _script_safe

    metadata = run.metadata(sample)
    answer = run.answer(sample)
    texts = [str(o) for o in metadata.get("options", [])]
    options = []
    for i, letter in enumerate(answer.letters):
        options.append(
            {
                "letter": letter,
                "text": texts[i] if i < len(texts) else "",
                "p": float(answer.probs[i]),
                "predicted": letter == answer.predicted_letter,
                "answer": letter == answer.answer,
            }
        )
    figures = {}
    video = sample_video_figure(run, sample)
    if video is not None:
        figures["sample-video"] = video
    flow = run.array(sample, "frame_flow").astype(np.float64).mean(axis=1)
    if flow.shape[1]:
        figures["sample-frames"] = frame_flow_figure(
            FrameFlowMean(flow, 1, 1), "this sample, mean over heads"
        )
    if summary is not None and len(summary):
        figures["sample-edges"] = edge_figure(
            summary, "Attention flow over layers (this sample, mean over heads)"
        )
    shown = {k: v for k, v in metadata.items() if k not in ("question", "options")}
    return {
        "sample": sample,
        "run_file": run.path.name,
        "model": run.model_info.get("model") or run.config.get("model") or "unknown",
        "question": metadata.get("question"),
        "options": options,
        "answer": answer.answer,
        "predicted": answer.predicted,
        "correct": answer.correct,
        "metadata": [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in sorted(shown.items())],
        "figure_ids": list(figures),
        "figures": Markup(
            _script_safe(json.dumps({k: json.loads(figure_json(f)) for k, f in figures.items()}))
        ),
    }
