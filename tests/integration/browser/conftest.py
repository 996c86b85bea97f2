"""Real Chromium for the browser tests (Playwright for Python driving the system browser).

These tests live under integration/ because they need the session's shared Ray cluster: a
job started from the JupyterLab sidebar or shown by a dashboard is a real job. Playwright's
own browser download is never used (`playwright install` cannot reach its host here); the
system Chromium is, at ``$LEPTON_CHROMIUM`` or the first of the usual paths. Without one
the browser tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[3] / "docs"


def chromium_path() -> str | None:
    for candidate in (os.environ.get("LEPTON_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium per test module.

    Playwright's sync API keeps an asyncio loop running in this thread while it is open, so
    it must close before other modules run: tests that drive their own loop (pytest-jupyter's
    jp_fetch, asyncio.run) fail with "This event loop is already running" otherwise."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium: `apt-get install -y chromium` (or set LEPTON_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="pip install playwright (the dev extra has it)")
    with sync_api.sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield chrome
        chrome.close()


@pytest.fixture
def page(browser):
    """A fresh browser context and page per test; its console errors are kept on
    ``page.console_errors``."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.console_errors = []
    pg.on("console", lambda msg: pg.console_errors.append(msg.text)
          if msg.type == "error" else None)
    pg.set_default_timeout(30_000)
    yield pg
    context.close()


@pytest.fixture(scope="session")
def docs_dir() -> Path:
    """Where screenshots for the documentation go."""
    DOCS.mkdir(exist_ok=True)
    return DOCS
