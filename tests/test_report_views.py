"""`flowlens report`: rebuild, sample pages, paging, --compare refusals, --index; frame overlays and thumbnails."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import make_sample, tiny
from tracegen import random_trace

from flowlens.analyses.trace import TraceOptions, thumbnails, trace_sample
from flowlens.cli import main
from flowlens.errors import FlowlensError
from flowlens.models.layout import TokenLayout
from flowlens.report.build import write_compare
from flowlens.report.html import PAGE_SIZE, report_context
from flowlens.report.video import cell_maps, png_data_uri, video_figure
from flowlens.store import RunWriter, open_run

EVIL_QUESTION = "<script>alert('q')</script> which colour?"
EVIL_OPTION = "<b>red</b>"


@pytest.fixture(scope="module")
def layout() -> TokenLayout:
    return tiny("llava_next_video").prepare(make_sample(), frames=8)[1]


def identity(frames: int = 8, prefix: str = "Best option:(") -> dict:
    settings = {"frames": frames, "activations": [], "video_layers": []}
    template = {"answer_prefix": prefix}
    return {
        "analysis": "trace",
        "model": "m",
        "settings": settings,
        "template": template,
        "identity": {"analysis": "trace", "model": "m", "settings": settings, "template": template},
    }


def write_run(
    path: Path, layout: TokenLayout, n: int = 3, frames: int = 8, prefix: str = "Best option:("
) -> Path:
    rng = np.random.default_rng(0)
    with RunWriter(path, identity(frames, prefix), {"model": "m<i>"}) as writer:
        for i in range(n):
            trace = random_trace(
                layout,
                f"s{i}/<x>" if i == 0 else f"s{i}",
                i,
                metadata={"question": EVIL_QUESTION, "options": [EVIL_OPTION, "b", "c", "d"]},
            )
            trace.thumbnails = rng.integers(0, 255, (8, 12, 16, 3), dtype=np.uint8)
            writer.write_sample(trace)
    return path


def test_thumbnails_are_block_means() -> None:
    frames = np.random.default_rng(1).integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    small = thumbnails(frames, 6)  # longer side 12 -> 6: 2x2 blocks
    expected = frames.reshape(2, 4, 2, 6, 2, 3).astype(np.float64).mean(axis=(2, 4))
    assert small.shape == (2, 4, 6, 3) and small.dtype == np.uint8
    np.testing.assert_array_equal(small, np.round(expected).astype(np.uint8))
    assert thumbnails(frames, 100).shape == frames.shape  # never enlarged


def test_png_round_trip() -> None:
    from PIL import Image

    image = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    uri = png_data_uri(image)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
    np.testing.assert_array_equal(decoded, image)


def test_cell_maps_put_each_token_on_its_cell(layout: TokenLayout) -> None:
    attention = np.random.default_rng(3).random((layout.n_layers, layout.n_video))
    maps = cell_maps(layout, attention)
    for token, (frame, row, col) in enumerate(layout.video_cells):
        if row >= 0:
            np.testing.assert_allclose(maps.maps[frame][:, row, col], attention[:, token])
    total = sum(m.sum(axis=(1, 2)) for m in maps.maps)
    np.testing.assert_allclose(total, attention[:, layout.video_cells[:, 1] >= 0].sum(axis=1))
    figure = video_figure(layout, None, attention)
    heat = [t for t in figure["data"] if t["type"] == "heatmap"]
    assert len(heat) == layout.n_frames and len(figure["layout"]["sliders"][0]["steps"]) == layout.n_layers


def test_trace_stores_thumbnails_and_the_question() -> None:
    lm = tiny("llava_next_video")
    sample = make_sample()
    sample.question = EVIL_QUESTION
    trace = trace_sample(lm, sample, TraceOptions(frames=8, thumbnails=16))
    frames = lm.adapter.sample_frames(sample, 8).frames
    np.testing.assert_array_equal(trace.thumbnails, thumbnails(np.asarray(frames), 16))
    assert trace.thumbnails.shape[1:] == (13, 16, 3)  # 64 x 80 frames, longer side 16
    assert trace.metadata["question"] == EVIL_QUESTION and trace.metadata["options"] == sample.options
    assert trace_sample(lm, sample, TraceOptions(frames=8, thumbnails=0)).thumbnails is None


def test_cli_rebuilds_with_sample_pages_and_escapes(tmp_path: Path, layout: TokenLayout, capsys) -> None:
    run = write_run(tmp_path / "trace.h5", layout)
    assert main(["report", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert re.search(
        r"wrote .*trace\.html \(\d+\.\d MiB, self-contained, opens offline; 3 sample pages", said
    )
    html = (tmp_path / "trace.html").read_text()
    assert (
        'href="trace_samples/s0%252F%253Cx%253E.html"' in html
    )  # the id escaped for a file, quoted for a URL
    page = (tmp_path / "trace_samples" / "s0%2F%3Cx%3E.html").read_text()
    assert (
        EVIL_QUESTION not in page and "&lt;script&gt;alert(&#39;q&#39;)&lt;/script&gt; which colour?" in page
    )
    assert EVIL_OPTION not in page and "&lt;b&gt;red&lt;/b&gt;" in page
    assert (
        '<script src="plotly.min.js"></script>' in page
        and (tmp_path / "trace_samples" / "plotly.min.js").exists()
    )
    assert "s0/&lt;x&gt;" in page and 'id="sample-video"' in page
    figures = json.loads(re.search(r"const figures = (\{.*\});", page).group(1))
    images = [t for t in figures["sample-video"]["data"] if t["type"] == "image"]
    assert len(images) == 8 and images[0]["source"].startswith("data:image/png;base64,")
    with open_run(run) as opened:
        assert opened.thumbnails("s1").shape == (8, 12, 16, 3)


def test_answers_are_paged(tmp_path: Path, layout: TokenLayout) -> None:
    path = tmp_path / "run.h5"
    n = PAGE_SIZE * 2 + 7
    with RunWriter(path, identity(), {"model": "m"}) as writer:
        for i in range(n):
            writer.write_sample(random_trace(layout, f"s{i:03d}", i))
    with open_run(path) as run:
        context = report_context(run, "run_samples")
    assert len(context["answer_rows"]) == PAGE_SIZE
    rows = json.loads(str(context["all_rows"]).replace("\\u003c", "<").replace("\\u003e", ">"))
    assert [r[0] for r in rows] == [f"s{i:03d}" for i in range(n)]
    assert rows[-1][8] == f"run_samples/s{n - 1:03d}.html"


def test_compare_refuses_differing_definitions(tmp_path: Path, layout: TokenLayout) -> None:
    a = write_run(tmp_path / "a" / "trace.h5", layout)
    b = write_run(tmp_path / "b" / "trace.h5", layout, frames=4)  # frames may differ
    c = write_run(tmp_path / "c" / "trace.h5", layout, prefix="Answer:")
    out = write_compare(a, b, tmp_path / "cmp.html")
    html = out.read_text()
    assert 'id="compare-edges"' in html and "<i>" not in html
    with pytest.raises(
        FlowlensError,
        match=r"definitions differ \(template\.answer_prefix: \"Best option:\(\" vs \"Answer:\"\)",
    ):
        write_compare(a, c, tmp_path / "no.html")
    assert not (tmp_path / "no.html").exists()
    assert main(["report", str(a), str(c), "--compare", "--out", str(tmp_path / "no.html")]) == 2


def test_index_lists_every_run(tmp_path: Path, layout: TokenLayout) -> None:
    write_run(tmp_path / "one" / "trace.h5", layout, n=2)
    write_run(tmp_path / "two" / "trace.h5", layout, n=3)
    assert main(["report", str(tmp_path), "--index"]) == 0
    html = (tmp_path / "index.html").read_text()
    assert 'href="one/trace.html"' in html and 'href="two/trace.html"' in html
    assert (tmp_path / "one" / "trace.html").exists()  # missing reports are built
    assert "m&lt;i&gt;" in html and "2 runs under" in html


def test_per_head_small_multiples_hold_the_sample_means(tmp_path: Path, layout: TokenLayout) -> None:
    run = write_run(tmp_path / "trace.h5", layout, n=3)
    with open_run(run) as opened:
        context = report_context(opened)
        flows = np.stack([opened.array(s, "frame_flow").astype(np.float64) for s in opened.samples])
    later = json.loads(str(context["on_request"]))["frame-flow-heads"]
    want = flows.mean(axis=0)  # (L, H, F, F): mean over samples only
    steps = later["layout"]["sliders"][0]["steps"]
    assert len(later["data"]) == layout.n_heads and len(steps) == layout.n_layers
    for layer in (0, layout.n_layers - 1):
        for head in range(layout.n_heads):
            np.testing.assert_allclose(decode(steps[layer]["args"][0]["z"][head]), want[layer, head])


def decode(value: dict) -> np.ndarray:
    array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
    return array.reshape([int(n) for n in str(value.get("shape", array.size)).split(",")])


def test_merged_frame_groups_show_every_source_frame() -> None:
    layout = tiny("qwen2_vl").prepare(make_sample(), frames=8)[1]
    assert all(len(s) == 2 for s in layout.frame_sources)  # temporal patches of two frames
    thumbs = np.zeros((8, 12, 12, 3), dtype=np.uint8)
    figure = video_figure(layout, thumbs, np.ones((layout.n_layers, layout.n_video)))
    images = [t for t in figure["data"] if t["type"] == "image"]
    heat = [t for t in figure["data"] if t["type"] == "heatmap"]
    assert len(images) == 8 and len(heat) == 8  # each source frame under its group's map
    labels = [a["text"] for a in figure["layout"]["annotations"]]
    assert labels[:2] == ["group 0: frame 0", "group 0: frame 1"]
    assert heat[0]["z"] == heat[1]["z"]  # both frames of a group share its map
