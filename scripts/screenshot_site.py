"""Screenshots of a built report site: the index and the first image page at 1280x800.

Usage::

    python scripts/screenshot_site.py SITE_DIR OUT_DIR

Writes OUT_DIR/index.png and OUT_DIR/image.png. Drives the system Chromium
(/usr/bin/chromium, or CHROMIUM=path) through Playwright with networking off;
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from playwright.sync_api import Page

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}

EAGER_IMAGES = """() => {
  document.querySelectorAll('img[loading="lazy"]').forEach((img) => { img.loading = "eager"; });
}"""
ALL_LOADED = "() => Array.from(document.images).every((img) => img.complete)"

log = logging.getLogger("screenshot_site")


def settle(page: Page) -> None:
    """Load lazily loaded images too, so that a full-page capture shows them."""
    page.evaluate(EAGER_IMAGES)
    page.wait_for_function(ALL_LOADED)


def screenshot_site(
    site: Path, out: Path, chromium: str = "/usr/bin/chromium", full_page: bool = False
) -> list[Path]:
    """Take the index and first-image screenshots of `site`; return the written files."""
    from playwright.sync_api import sync_playwright

    index = (site / "index.html").resolve()
    if not index.is_file():
        raise FileNotFoundError(f"{index} does not exist: is {site} a built report site?")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.goto(index.as_uri())
            settle(page)
            target = out / "index.png"
            page.screenshot(path=str(target), full_page=full_page)
            written.append(target)
            first = page.locator("#gallery a").first
            if first.count():
                first.click()
                page.wait_for_load_state("load")
                settle(page)
                target = out / "image.png"
                page.screenshot(path=str(target), full_page=full_page)
                written.append(target)
            else:
                log.warning("the index lists no image: no image screenshot")
        finally:
            browser.close()
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("site", type=Path, help="folder of the built site (holds index.html)")
    parser.add_argument("out", type=Path, help="folder for index.png and image.png")
    parser.add_argument("--full-page", action="store_true", help="capture whole pages")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for path in screenshot_site(args.site, args.out, chromium, args.full_page):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
