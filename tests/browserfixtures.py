"""Shared by the browser tests (a pytest plugin, see conftest.py): headless Chromium (Debian's /usr/bin/chromium, driven by Playwright),
a page that fails its test on any script error or CSP violation, and logging in."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from webfixtures import PASSWORD

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def playwright_api():
    """playwright.sync_api, or the test is skipped."""
    return pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download)")


@pytest.fixture(scope="module")
def browser():
    sync_api = playwright_api()
    if not Path(CHROMIUM).exists():
        pytest.skip("apt-get install chromium")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def page(browser):
    ctx = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1)
    pg = ctx.new_page()
    pg.set_default_timeout(15_000)
    problems: list[str] = []
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    # CSP violations, script errors and missing files show up as console errors; the 401 before
    # login and the 415 of the deliberately bad upload are expected.
    expected = ("status of 401", "status of 415")
    pg.on("console", lambda m: problems.append(m.text)
          if m.type == "error" and not any(e in m.text for e in expected) else None)
    yield pg
    ctx.close()
    assert problems == []


def images_loaded(pg) -> None:
    """Wait until the images in the viewport have loaded, so screenshots show them."""
    script = """() => Array.from(document.images)
        .filter((i) => i.getBoundingClientRect().top < window.innerHeight)
        .every((i) => i.complete && i.naturalWidth > 0)"""
    deadline = time.monotonic() + 10
    while not pg.evaluate(script) and time.monotonic() < deadline:
        time.sleep(0.1)


def login(pg, url: str, screenshot: Path | None = None) -> None:
    """Log in through the form, trying a wrong password first."""
    pg.goto(url + "/")
    pg.locator("#password").wait_for()
    if screenshot:
        pg.screenshot(path=str(screenshot))
    pg.fill("#password", "wrong")
    pg.click("form.login button[type=submit]")
    playwright_api().expect(pg.locator(".login .error")).to_contain_text("Wrong password")
    pg.fill("#password", PASSWORD)
    pg.click("form.login button[type=submit]")
