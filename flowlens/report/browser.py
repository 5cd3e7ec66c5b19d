"""Open a report in headless Chromium (through playwright, with the system's `chromium`): JavaScript errors,
load time, screenshots. Used by the report tests, the report benchmark and `make`-free manual checks."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The Chromium executable: $FLOWLENS_CHROMIUM, else the first of chromium, chromium-browser, google-chrome."""
    named = os.environ.get("FLOWLENS_CHROMIUM")
    if named:
        return named
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


@dataclass
class Opened:
    """A page after it loaded and every plot drew: its errors and how long that took."""

    page: Any
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@contextmanager
def browser(width: int = 1300, height: int = 900) -> Iterator[Any]:
    """A headless Chromium browser context (playwright) at the given viewport."""
    from playwright.sync_api import sync_playwright

    executable = find_chromium()
    if executable is None:
        raise RuntimeError("no Chromium found (apt-get install chromium, or set FLOWLENS_CHROMIUM)")
    with sync_playwright() as play:
        chrome = play.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield chrome.new_context(viewport={"width": width, "height": height})
        finally:
            chrome.close()


def open_report(context: Any, path: str | Path, timeout_s: float = 60.0) -> Opened:
    """Load `path` (file://), offline, and wait until every plotly div has drawn; collect JS errors."""
    page = context.new_page()
    opened = Opened(page)
    page.on("pageerror", lambda exc: opened.errors.append(f"pageerror: {exc}"))
    page.on(
        "console", lambda msg: opened.errors.append(f"console: {msg.text}") if msg.type == "error" else None
    )
    page.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith(("file:", "data:")) else route.abort()
        ),
    )
    start = time.perf_counter()
    page.goto(Path(path).resolve().as_uri(), wait_until="load", timeout=timeout_s * 1000)
    page.wait_for_function(
        "() => window.flowlensDone === true",
        timeout=timeout_s * 1000,
    )
    opened.seconds = time.perf_counter() - start
    return opened
