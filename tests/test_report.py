"""HTML report: self-contained, every user string escaped, figures carry the run's means."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_sample, tiny
from tracegen import random_trace

from flowlens.models.layout import TokenLayout
from flowlens.report import write_report
from flowlens.report.html import report_context
from flowlens.store import RunWriter, open_run

EVIL_ID = "<script>alert(1)</script>"
EVIL_MODEL = 'tiny<img src=x onerror="alert(2)">'
EVIL_REASON = "SampleError: <b onmouseover=alert(3)>broken</b> & gone"
EVIL_TASK = "<i>order</i>"


@pytest.fixture(scope="module")
def layout() -> TokenLayout:
    return tiny("llava_next_video").prepare(make_sample(), frames=8)[1]


@pytest.fixture
def run_path(tmp_path: Path, layout: TokenLayout) -> Path:
    path = tmp_path / "run.h5"
    config = {"model": EVIL_MODEL, "frames": 8, "note": "</script><script>alert(4)</script>"}
    with RunWriter(path, config, {"model": EVIL_MODEL, "revision": "main"}) as writer:
        writer.write_sample(random_trace(layout, EVIL_ID, 0, metadata={"task": EVIL_TASK}))
        writer.write_sample(random_trace(layout, "s1", 1, metadata={"task": "count"}))
        writer.write_sample(random_trace(layout, "s2", 2, answer=None))
        writer.write_failure("bad<b>id</b>", EVIL_REASON)
    return path


def decode(value: Any) -> np.ndarray:
    """A plotly JSON array: a plain list or a base64 typed array ({dtype, bdata, shape})."""
    if isinstance(value, dict):
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return array.reshape([int(n) for n in str(value.get("shape", array.size)).split(",")])
    return np.asarray(value, dtype=np.float64)


def test_report_is_self_contained_and_escaped(run_path: Path, tmp_path: Path) -> None:
    out = write_report(run_path, tmp_path / "out" / "report.html")
    assert out == tmp_path / "out" / "report.html"
    html = out.read_text(encoding="utf-8")
    for raw in (EVIL_ID, EVIL_MODEL, EVIL_REASON, EVIL_TASK, "<b>id</b>", "<script>alert(4)"):
        assert raw not in html, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "tiny&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html
    assert "SampleError: &lt;b onmouseover=alert(3)&gt;broken&lt;/b&gt; &amp; gone" in html
    assert "&lt;i&gt;order&lt;/i&gt;" in html and "bad&lt;b&gt;id&lt;/b&gt;" in html
    assert not re.search(r"<script[^>]*\ssrc\s*=", html, re.IGNORECASE)  # plotly.js is inlined, no CDN
    assert not re.search(r"<link[^>]*href\s*=\s*[\"']?https?:", html, re.IGNORECASE)
    assert (
        len(re.findall(r"<script>", html)) == 2 and "plotly.js v" in html
    )  # the library once, then the figures
    assert 'id="frame-flow"' in html and 'id="edge-flow"' in html
    assert "3</b><span>samples traced" in html and "1</b><span>failed" in html


def test_report_figures_hold_the_means(run_path: Path, layout: TokenLayout) -> None:
    with open_run(run_path) as run:
        context = report_context(run)
        figures = json.loads(str(context["figures"]))
        flows = np.stack([run.array(s, "frame_flow").astype(np.float64).mean(axis=1) for s in run.samples])
        summary = run.table("flow_summary")
        n_layers = run.layout("s1").n_layers
    mean = flows.mean(axis=0)  # (L, F, F): mean over heads, then samples
    frame = figures["frame-flow"]
    steps = frame["layout"]["sliders"][0]["steps"]
    assert [step["label"] for step in steps] == [str(layer + 1) for layer in range(n_layers)]  # 1-based
    for layer, step in enumerate(steps):
        np.testing.assert_allclose(decode(step["args"][0]["z"][0]), mean[layer])
    np.testing.assert_allclose(decode(frame["data"][0]["z"]), mean[0])

    lines = {trace["name"]: trace for trace in figures["edge-flow"]["data"] if "name" in trace}
    assert {"video->question", "video->last", "question->last"} <= {
        n for n, t in lines.items() if t["visible"] is True
    }
    expected = summary[summary["edge"] == "video->last"].groupby("layer")["value"].agg(["mean", "std"])
    np.testing.assert_allclose(decode(lines["video->last"]["y"]), expected["mean"].to_numpy())
    band = [
        t for t in figures["edge-flow"]["data"] if t.get("legendgroup") == "video->last" and t.get("fill")
    ][0]
    upper = decode(band["y"])[:n_layers]
    np.testing.assert_allclose(upper, (expected["mean"] + expected["std"]).to_numpy())
    assert context["accuracy"] == pytest.approx(np.mean([r["correct"] for r in context["answer_rows"][:2]]))
    assert [row["sample"] for row in context["answer_rows"]] == [EVIL_ID, "s1", "s2"]
    want = random_trace(layout, "s1", 1).answer
    row = context["answer_rows"][1]
    assert row["mass"] == pytest.approx(float(want.probs.sum())) and row["p_answer"] == pytest.approx(
        want.probs[1]
    )
    assert sum(o["share"] for o in row["options"]) == pytest.approx(1.0)
    assert [o["letter"] for o in row["options"] if o["predicted"]] == [want.predicted]
    assert context["answer_rows"][2]["p_answer"] is None  # s2 has no known answer


def test_report_of_a_run_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "run.h5"
    with RunWriter(path, {"model": "m", "frames": 8}, {"model": "m"}) as writer:
        writer.write_failure("s0", "video missing")
    with open_run(path) as run:  # an open Run works as well as a path
        html = write_report(run, tmp_path / "report.html").read_text()
    assert "No traced samples" in html and "video missing" in html
    assert 'id="frame-flow"' not in html and "const figures = {};" in html
