"""Headless Chromium (Debian's package) driven through Playwright, for the page's tests and screenshots.

Playwright is only the driver here: it never downloads a browser; it starts
``/usr/bin/chromium`` with the flags that work as root in a container and a
fresh profile folder each time, so no state leaks between runs.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from typing import Any

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync")
VIEWPORT = {"width": 1600, "height": 1100}


@contextlib.asynccontextmanager
async def chromium_page(viewport: dict[str, int] = VIEWPORT, timeout_ms: float = 15_000) -> AsyncIterator[Any]:
    """One page in a headless Chromium with a throwaway profile; closed (and the profile removed) after."""
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} missing: install the Debian packages chromium and chromium-driver")
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="unionterm-chromium-") as profile:
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile, executable_path=CHROMIUM, headless=True, args=list(FLAGS), viewport=viewport)
            try:
                page = context.pages[0] if context.pages else await context.new_page()
                page.set_default_timeout(timeout_ms)
                yield page
            finally:
                await context.close()
