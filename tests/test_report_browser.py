"""Reports in real headless Chromium: no JavaScript errors, every figure drawn, overlays on the frame grid.

Needs Debian's `chromium` (installed here when missing and we are root with apt-get) and playwright (the
`dev` extra); skips with the reason otherwise.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import make_sample, tiny
from test_report_views import identity, write_run
from test_store_rows import knockout_run
from tracegen import random_trace

from flowlens.models.layout import TokenLayout
from flowlens.report import write_report
from flowlens.report.browser import find_chromium
from flowlens.report.build import write_compare
from flowlens.store import RunWriter


def _chromium() -> str:
    try:
        import playwright  # noqa: F401
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    found = find_chromium()
    if found is None and shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True, timeout=600)
        found = find_chromium()
    if found is None:
        pytest.skip(
            "no Chromium and it could not be installed (apt-get install chromium, or set FLOWLENS_CHROMIUM)"
        )
    return found


@pytest.fixture(scope="module")
def context():
    _chromium()
    from flowlens.report.browser import browser

    with browser() as ctx:
        yield ctx


@pytest.fixture(scope="module")
def layout() -> TokenLayout:
    return tiny("llava_next_video").prepare(make_sample(), frames=8)[1]


def pixels(element) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(element.screenshot())).convert("RGB")).astype(np.int32)


def check_page(context, path: Path) -> list[str]:
    """Open a page: no JS errors, every figure div drawn and visibly non-blank; return the figure ids."""
    from flowlens.report.browser import open_report

    opened = open_report(context, path)
    assert opened.errors == [], opened.errors
    ids = opened.page.evaluate("window.flowlensFigures")
    assert ids, f"{path.name}: no figures"
    for figure in ids:
        shot = pixels(opened.page.locator(f"#{figure}"))
        colours = np.unique(shot.reshape(-1, 3) // 8, axis=0)
        dark = (shot.sum(axis=-1) < 600).mean()
        assert len(colours) > 20 and dark > 0.005, f"{path.name}#{figure} looks blank"
    opened.page.close()
    return ids


def test_reports_open_without_errors_and_draw_every_figure(
    context, tmp_path: Path, layout: TokenLayout
) -> None:
    run = write_run(tmp_path / "trace" / "trace.h5", layout, n=4)
    report = write_report(run, tmp_path / "trace" / "trace.html")
    assert set(check_page(context, report)) == {"frame-flow", "edge-flow", "video-overlay"}
    from flowlens.report.browser import open_report

    opened = open_report(context, report)  # the per-head small multiples draw when asked for
    opened.page.click("details.on-request summary")
    opened.page.wait_for_selector("#frame-flow-heads .main-svg")
    assert (
        opened.errors == []
        and len(np.unique(pixels(opened.page.locator("#frame-flow-heads")), axis=None)) > 20
    )
    opened.page.close()
    page = next((tmp_path / "trace" / "trace_samples").glob("s1.html"))
    assert set(check_page(context, page)) == {"sample-video", "sample-frames", "sample-edges"}
    knockout_run(tmp_path / "ko.h5", layout)
    ids = check_page(context, write_report(tmp_path / "ko.h5", tmp_path / "ko.html"))
    assert {"knockout-panels", "knockout-accuracy", "pathways-bars"} <= set(ids)
    other = write_run(tmp_path / "four" / "trace.h5", layout, n=2, frames=4)
    assert check_page(context, write_compare(run, other, tmp_path / "cmp.html")) == ["compare-edges"]


def test_the_script_question_shows_as_text(context, tmp_path: Path, layout: TokenLayout) -> None:
    from flowlens.report.browser import open_report

    run = write_run(tmp_path / "trace.h5", layout, n=1)
    write_report(run, tmp_path / "trace.html")
    opened = open_report(context, tmp_path / "trace_samples" / "s0%2F%3Cx%3E.html")
    assert opened.errors == []
    assert "<script>alert('q')</script> which colour?" in opened.page.inner_text(".question")
    assert opened.page.evaluate("document.querySelectorAll('main script').length") == 0


def test_overlay_lines_up_with_the_frame_grid(context, tmp_path: Path, layout: TokenLayout) -> None:
    """A black clip with one white cell; all of `last`'s attention on that cell's token: the overlay's peak
    colour must cover exactly the white cell (no white left uncovered, no peak colour over black)."""
    from flowlens.report.browser import open_report

    frame, row, col = 3, 1, 2
    rows, cols = layout.frame_grid[frame]
    size = 12 * rows, 12 * cols
    thumbs = np.zeros((8, *size, 3), dtype=np.uint8)
    thumbs[frame, 12 * row : 12 * (row + 1), 12 * col : 12 * (col + 1)] = 255
    token = int(np.flatnonzero((layout.video_cells == [frame, row, col]).all(axis=1))[0])
    trace = random_trace(layout, "bright", 0)
    trace.last_to_video = np.zeros_like(trace.last_to_video)
    trace.last_to_video[:, :, token] = 1.0
    trace.thumbnails = thumbs
    with RunWriter(tmp_path / "run.h5", identity(), {"model": "m"}) as writer:
        writer.write_sample(trace)
    write_report(tmp_path / "run.h5", tmp_path / "run.html", sample_pages=False)
    opened = open_report(context, tmp_path / "run.html")
    assert opened.errors == []
    shot = pixels(opened.page.locator("#video-overlay .subplot.x4y4"))  # frame 3: the 4th subplot
    shot = shot[2:-2, 2:-2]  # the element's box may take in a row of page background at its edges
    r, g, b = shot[..., 0], shot[..., 1], shot[..., 2]
    peak_on_white = (
        (r > 240) & (g > 220) & (b > 20) & (b < 70)
    )  # rgba(255,235,0,0.85) over white: (255,238,38)
    peak_on_black = (
        (r > 190) & (r < 235) & (g > 170) & (g < 225) & (b < 15)
    )  # the same over black: (217,200,0)
    white = (r > 245) & (g > 245) & (b > 245)
    assert peak_on_white.sum() > 100
    assert white.sum() < 0.03 * peak_on_white.sum(), (
        "white cell pixels left uncovered: the overlay is shifted"
    )
    assert peak_on_black.sum() < 0.03 * peak_on_white.sum(), "peak colour over black: the overlay is shifted"
    ys, xs = np.nonzero(peak_on_white)
    height, width = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert abs(height - width) <= 2  # a square cell stays square (scaleanchor)
    # and where: the cell's share of the frame, row 1 of 4 and column 2 of 4 (the frame is 48 x 48 pixels)
    side = shot.shape[0] + 4
    assert abs(ys.min() + 2 - side * row / rows) <= 2 and abs(xs.min() + 2 - side * col / cols) <= 2


def test_figures_export_as_png_and_svg(context, tmp_path: Path, layout: TokenLayout) -> None:
    from flowlens.report.build import export_figures

    run = write_run(tmp_path / "trace.h5", layout, n=2)
    paths = export_figures(run, tmp_path / "figures")
    names = sorted(p.name for p in paths)
    assert names == sorted(
        f"trace-{f}.{x}" for f in ("frame-flow", "edge-flow", "video-overlay") for x in ("png", "svg")
    )
    for path in paths:
        head = path.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if path.suffix == ".png" else b"<svg" in head, path
