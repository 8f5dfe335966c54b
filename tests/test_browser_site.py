"""The built site in a real browser (system Chromium through Playwright), from file://:
navigation by click and keyboard, the lightbox, the overlay switch, sorting and
filtering the image index, no console error, and screenshots for review."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reportgen.render.site import SiteWriter
from tests.site_fixtures import make_aggregates, make_context, make_results, make_sanity

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "screenshot_site.py"
CHROMIUM = "/usr/bin/chromium"


def _load_script():
    """The screenshot script, whose Chromium flags (networking off) the test shares."""
    spec = importlib.util.spec_from_file_location("screenshot_site", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CHROMIUM_ARGS = _load_script().CHROMIUM_ARGS

pytestmark = pytest.mark.browser

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="Playwright for Python is not installed")
if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
    pytest.skip(f"Chromium is not installed at {CHROMIUM}", allow_module_level=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("browser-site")
    results = make_results(4)
    writer = SiteWriter(out, make_context(image_count=4), [r.id for r in results])
    for result in results:
        writer.add_image(result)
    writer.finish(make_aggregates(results), make_sanity())
    return out


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
        instance = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


def test_click_keyboard_zoom_and_sort_without_console_errors(
        site: Path, browser, tmp_path: Path) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    # loads cut short by leaving the page (net::ERR_ABORTED) are not failures
    page.on("requestfailed", lambda request: "ERR_ABORTED" not in (request.failure or "")
            and problems.append(f"failed: {request.url} {request.failure}"))
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))

    # lazy images may still load after the load event; a reader clicks a settled page
    page.goto((site / "index.html").as_uri(), wait_until="networkidle")
    assert page.locator("h1").inner_text().startswith("Validation <script>")
    page.screenshot(path=str(tmp_path / "index.png"))

    # the index sorts by verdict (worst first) and filters by verdict
    page.select_option("#gallery-sort", "verdict")
    ranks = page.locator("#gallery > li").evaluate_all(
        "items => items.map(item => Number(item.dataset.verdictRank))")
    assert ranks == sorted(ranks) and len(ranks) == 4
    page.select_option("#gallery-sort", "verdict-best")
    verdicts = page.locator("#gallery > li").evaluate_all(
        "items => items.map(item => item.dataset.verdict)")
    best_first = ["excellent", "good", "fair", "concerning", "invalid", "n/a"]
    assert [best_first.index(v) for v in verdicts] == sorted(best_first.index(v) for v in verdicts)
    page.select_option("#gallery-sort", "dice-desc")
    dice = page.locator("#gallery > li").evaluate_all(
        "items => items.map(item => item.dataset.dice)")
    defined = [float(value) for value in dice if value]
    assert defined == sorted(defined, reverse=True) and dice[-1] == ""
    first_verdict = page.locator("#gallery > li").first.get_attribute("data-verdict")
    page.locator(f'.verdict-filter input[value="{first_verdict}"]').uncheck()
    assert page.locator(f'#gallery > li[data-verdict="{first_verdict}"]:visible').count() == 0
    assert "shown" in page.locator("#gallery-count").inner_text()
    page.locator(f'.verdict-filter input[value="{first_verdict}"]').check()
    page.select_option("#gallery-sort", "order")

    # click through to the first image, then the right arrow reaches the next one
    page.locator("#gallery a").first.click()
    page.wait_for_url("**/images/img-000.html")
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/images/img-001.html")
    page.keyboard.press("ArrowLeft")
    page.wait_for_url("**/images/img-000.html")
    page.keyboard.press("ArrowRight")
    page.wait_for_url("**/images/img-001.html")
    page.screenshot(path=str(tmp_path / "image.png"))

    # the overlay switch swaps every grid figure to the chosen variant
    page.locator('.variant-switch button[data-variant="top"]').click()
    sources = page.locator("table.cam-grid img[data-src-top]").evaluate_all(
        "images => images.map(image => image.getAttribute('src'))")
    assert sources and all("-top." in source for source in sources)
    assert page.locator('.variant-switch button[data-variant="top"]').get_attribute(
        "aria-pressed") == "true"

    # zoom: the lightbox opens on click, closes on Escape, and arrows do not leave the page
    page.locator("img.zoomable").first.click()
    lightbox = page.locator(".lightbox")
    assert lightbox.is_visible()
    assert page.locator(".lightbox img").get_attribute("alt")
    page.screenshot(path=str(tmp_path / "lightbox.png"))
    page.keyboard.press("ArrowRight")
    assert page.url.endswith("images/img-001.html") and lightbox.is_visible()
    page.keyboard.press("Escape")
    assert not lightbox.is_visible()

    # every image on the page loaded from disk
    broken = page.locator("img").evaluate_all(
        "images => images.filter(image => !image.closest('.lightbox'))"
        ".filter(image => image.complete && image.naturalWidth === 0)"
        ".map(image => image.getAttribute('src'))")
    assert broken == []
    assert all(url.startswith(("file://", "data:")) for url in requested), requested
    assert problems == []
    for name in ("index.png", "image.png", "lightbox.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    page.close()


def test_every_page_opens_without_console_errors(site: Path, browser) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))
    for name in ("index.html", "methods.html", "layers.html", "audit.html",
                 "images/img-003.html"):
        page.goto((site / name).as_uri())
        assert page.locator("nav.pager, nav[aria-label='Report sections']").count() >= 1
    assert problems == []
    page.close()


def test_screenshot_script_writes_both_pictures(site: Path, tmp_path: Path) -> None:
    script = SCRIPT
    done = subprocess.run([sys.executable, str(script), str(site), str(tmp_path / "shots")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for name in ("index.png", "image.png"):
        assert (tmp_path / "shots" / name).stat().st_size > 10_000


def test_figures_and_plots_keep_their_place_before_they_load(site: Path, browser) -> None:
    """With every picture held back (as on a slow disk), the boxes already have the
    pictures' shape, so nothing moves under a click when they arrive."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.route("**/*.{png,jpg}", lambda route: route.abort())
    page.goto((site / "images" / "img-001.html").as_uri())
    boxes = page.locator(".tile img, table.cam-grid img").evaluate_all(
        "images => images.map(image => [image.getBoundingClientRect().width,"
        " image.getBoundingClientRect().height])")
    assert len(boxes) > 4
    for width, height in boxes:  # the synthetic images are square
        assert width > 50 and abs(height - width) <= 2, (width, height)
    page.goto((site / "index.html").as_uri())
    plots = page.locator("figure.plot img").evaluate_all(
        "images => images.map(image => image.getBoundingClientRect().height)")
    assert plots and all(height > 100 for height in plots), plots
    page.close()
