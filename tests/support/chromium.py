"""Debian's Chromium, headless, for the dashboard's browser tests (Playwright drives it)."""

from __future__ import annotations

import shutil

import pytest

from qspanlab.harness import CHROMIUM, CHROMIUM_FLAGS


def require_chromium() -> None:
    """A browser test without a browser fails, loudly: it never skips."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (scripts/setup.sh does)")


def launch(playwright):
    """Headless Chromium from a sync_playwright() context."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)


def full_page_screenshot(page, path) -> None:
    """The whole page as a person scrolling down it would see it. The dashboard redraws only the
    charts on screen (frontend/views.js), so the viewport is made as tall as the page until every
    chart is drawn from the newest frame, and set back after."""
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": page.evaluate("document.documentElement.scrollHeight")})
    # two animation frames: the IntersectionObserver has seen the new size by then
    page.evaluate("new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.wait_for_function("typeof CHARTS === 'undefined' || !chartsFrame"
                           " || CHARTS.every(([id]) => !onScreen.has(id) || isDrawn(id))", timeout=30_000)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)
