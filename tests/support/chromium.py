"""Debian's Chromium, headless, for the dashboard's browser tests (Playwright drives it)."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = "/usr/bin/chromium"
# No sandbox (root in CI), no GPU, and nothing that would reach for the network on its own.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def require_chromium() -> None:
    """A browser test without a browser fails, loudly: it never skips."""
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} missing: install Debian's chromium (scripts/setup.sh does)")


def launch(playwright):
    """Headless Chromium from a sync_playwright() context."""
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
