"""Debian's Chromium driven by Playwright (no browser download is possible
here), and where tests put what a person would look at: screenshots."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
# No background traffic to hosts this machine cannot reach (and no first-run noise).
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


def artifacts() -> Path:
    """Screenshots and captures: ORCH_TEST_ARTIFACTS, or .artifacts/ in the checkout."""
    folder = Path(os.environ.get("ORCH_TEST_ARTIFACTS") or ROOT / ".artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextmanager
def chromium(viewport: tuple[int, int] = (1400, 900)) -> Iterator[Any]:
    """A browser context with a fresh profile, removed afterwards."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="orch-chromium-")
    try:
        with sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                viewport={"width": viewport[0], "height": viewport[1]})
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def html_screenshot(html: str, out: Path, width: int = 1000, element: str | None = None
                    ) -> None:
    """A picture of an HTML document (a terminal capture rendered by rich), or of
    one element of it."""
    with chromium((width, 400)) as context:
        page = context.new_page()
        page.set_content(html)
        if element is not None:
            page.locator(element).first.screenshot(path=str(out))
        else:
            page.screenshot(path=str(out), full_page=True)
