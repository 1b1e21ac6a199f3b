"""A real browser against a real server: headless Chromium (Debian's /usr/bin/chromium via Playwright)
logs in, searches, sees a new capture arrive, opens a capture, hovers a word, uploads a photo.
Screenshots go to tests/artifacts/ (gitignored)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from browserfixtures import ARTIFACTS, images_loaded, login, playwright_api
from webfixtures import (
    CAPTURES,
    PASSWORD,
    SAMPLES,
    PixelCaptioner,
    add_sample,
    captioner_vector,
    fill_store,
    load_real_captioner,
    pixel_vector,
    running,
    web_config,
)

from device.image_projection import load_image_projection
from device.web import create_app, hash_password

sync_api = playwright_api()
MODELS_DIR = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    # The real captioner when its model set is in models/; else the pixel stand-in (the page's
    # plumbing is what this test is about; the captioner's own tests cover the model).
    captioner = load_real_captioner()
    vector = pixel_vector if captioner is None else captioner_vector(captioner)
    # with the real captioner, image vectors go through models/image-projection as on a device
    projection = None if captioner is None else load_image_projection(MODELS_DIR)
    store = fill_store(tmp_path_factory.mktemp("store"), image_vector=vector, image_projection=projection)
    app = create_app(web_config(store.data_dir, password_hash=hash_password(PASSWORD)), store,
                     captioner or PixelCaptioner(), None)
    with running(app) as url:
        yield url, store, vector
    store.close()


def _login(pg, url: str) -> None:
    login(pg, url, screenshot=ARTIFACTS / "1-login.png")


def test_search_live_update_capture_heatmap(site, page):
    url, store, vector = site
    expect = sync_api.expect
    _login(page, url)
    cards = page.locator("#results .card")
    expect(cards).to_have_count(len(CAPTURES))
    expect(cards.first.locator(".cap")).to_have_text(CAPTURES[-1][1])  # newest first
    expect(page.locator("#status")).to_contain_text("Newest captures")
    images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "2-newest.png"), full_page=True)

    # a capture stored while the page is open shows up without a reload
    add_sample(store, 1, time=time.time(), image_vector=vector)
    expect(cards).to_have_count(len(CAPTURES) + 1, timeout=15_000)
    expect(cards.first.locator(".cap")).to_have_text(CAPTURES[1][1])
    expect(cards.first).to_have_class("card new")

    # type a query: results replace the grid, the keyword-only notice is visible
    page.fill("#q", "cardboard box")
    expect(cards).to_have_count(1)
    expect(cards.first.locator(".cap")).to_have_text("a cat sleeps in a cardboard box")
    expect(page.locator("#notice")).to_be_visible()
    expect(page.locator("#notice")).to_contain_text("Keyword search only")
    assert "q=cardboard+box" in page.url
    page.fill("#q", "fox")
    expect(cards.first.locator(".cap")).to_have_text("a red fox stands in the snow")
    page.select_option("#source", "folder")
    expect(page.locator("#status")).to_contain_text("Nothing matches")
    page.select_option("#source", "")
    expect(cards.first.locator(".cap")).to_have_text("a red fox stands in the snow")
    expect(page.locator("#more")).to_be_hidden()  # paging is for the newest-first list only
    images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "3-search.png"), full_page=True)

    # open the capture, hover a word: its attention map is drawn over the photo
    cards.first.click()
    expect(page.locator("h1.caption")).to_have_text("a red fox stands in the snow")
    expect(page.locator(".beams li")).to_have_count(2)
    canvas = page.locator("#heat")
    expect(canvas).not_to_have_class("on")
    page.locator(".word", has_text="fox").hover()
    expect(canvas).to_have_class("on")
    expect(page.locator(".word.active")).to_have_text("fox")
    spread = page.evaluate("""() => {
        const c = document.getElementById('heat');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let lo = 255, hi = 0;
        for (let i = 3; i < d.length; i += 4) { lo = Math.min(lo, d[i]); hi = Math.max(hi, d[i]); }
        return [c.width, c.height, lo, hi];
    }""")
    width, height, lo, hi = spread
    assert width > 100 and height > 100
    assert hi - lo > 60  # dim where the model did not look, clear where it did
    page.screenshot(path=str(ARTIFACTS / "4-capture-heatmap.png"), full_page=True)
    page.locator(".word", has_text="snow").hover()
    expect(page.locator(".word.active")).to_have_text("snow")
    expect(page.locator("#similar-section")).to_be_visible()  # more like this
    expect(page.locator("#similar .card")).not_to_have_count(0)


def test_upload_caption_and_find_similar(site, page):
    url, store, _ = site
    expect = sync_api.expect
    _login(page, url)
    page.goto(url + "/upload")
    expect(page.locator("#result")).to_be_hidden()
    before = store.count()
    page.set_input_files("#image", str(SAMPLES / "fox_in_snow.jpg"))
    page.check("#keep")
    page.click("#go")
    expect(page.locator("#result")).to_be_visible()
    expect(page.locator("#caption")).not_to_be_empty()
    if (MODELS_DIR / "imagenet-tags" / "manifest.json").is_file():  # the real models: the object tag is shown
        expect(page.locator("#tags .tag").first).to_have_text("fox")
    expect(page.locator("#kept")).to_be_visible()
    assert store.count() == before + 1
    page.locator("#words .word").first.hover()
    expect(page.locator("#heat")).to_have_class("on")
    page.screenshot(path=str(ARTIFACTS / "5-upload.png"), full_page=True)

    page.click("#find")
    expect(page.locator("#found-section")).to_be_visible()
    found = page.locator("#found .card")
    # the photo just kept is the closest match to itself; the stored fox photos come next
    expect(found.first).to_have_attribute("href", page.locator("#kept-link").get_attribute("href"))
    expect(found.nth(1).locator(".cap")).to_have_text("a red fox stands in the snow")
    images_loaded(page)
    page.screenshot(path=str(ARTIFACTS / "6-find-similar.png"), full_page=True)

    # a file that is not an image gets the server's one-line message, not a broken page
    bad = ARTIFACTS / "not-an-image.jpg"
    bad.write_bytes(b"this is not a photo")
    page.set_input_files("#image", str(bad))
    page.click("#go")
    expect(page.locator("#status")).to_have_text("not a JPEG, PNG or WebP image")
    expect(page.locator("#status")).to_have_class("status muted error")
    expect(page.locator("#result")).to_be_hidden()
    page.screenshot(path=str(ARTIFACTS / "7-upload-error.png"))


def test_desktop_layout(site, browser):
    url, _, _ = site
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    _login(pg, url)
    sync_api.expect(pg.locator("#results .card")).not_to_have_count(0)
    images_loaded(pg)
    pg.screenshot(path=str(ARTIFACTS / "8-desktop.png"))
    pg.goto(url + "/capture/1")
    pg.locator(".word", has_text="dogs").hover()
    sync_api.expect(pg.locator("#heat")).to_have_class("on")
    images_loaded(pg)
    pg.screenshot(path=str(ARTIFACTS / "9-desktop-capture.png"))
    ctx.close()
