"""The page's managing parts in a real browser (headless Chromium, Playwright) against a real server:
live updates land in time order, deleting one capture or a selection, exporting what is shown,
the timeline of a day, and axe-core's accessibility rules (contrast included) in both themes."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import datetime
from pathlib import Path

import pytest
from browserfixtures import ARTIFACTS, images_loaded, login, playwright_api
from webfixtures import CAPTURES, PASSWORD, PixelCaptioner, add_sample, fill_store, running, web_config

from device.web import create_app, hash_password

sync_api = playwright_api()
expect = sync_api.expect
AXE = Path(__file__).resolve().parent / "axe" / "node_modules" / "axe-core" / "axe.min.js"
HOUR = 3600.0


@pytest.fixture()
def site(tmp_path):
    """A fresh store per test (these tests delete captures): the samples one day apart (ids 1..7)."""
    store = fill_store(tmp_path / "store")
    app = create_app(web_config(store.data_dir, password_hash=hash_password(PASSWORD)), store, PixelCaptioner(),
                     None)
    with running(app) as url:
        yield url, store
    store.close()


def _cards(page):
    return page.locator("#results .card")


def _ids(page) -> list[int]:
    return [int(x) for x in _cards(page).evaluate_all("(els) => els.map((e) => e.dataset.id)")]


def test_live_update_puts_each_capture_where_its_time_belongs(site, page):
    url, store = site
    login(page, url)
    expect(_cards(page)).to_have_count(len(CAPTURES))
    times = {c["id"]: c["time"] for c in store.recent(100)}
    newest, second = sorted(times, key=times.get, reverse=True)[:2]
    # `edgecap ingest` keeps a photo's own time: stored now, taken between the two newest captures
    older = add_sample(store, 2, time=(times[newest] + times[second]) / 2)
    expect(_cards(page)).to_have_count(len(CAPTURES) + 1, timeout=15_000)
    assert _ids(page)[:3] == [newest, older, second]  # not on top as "new"
    expect(page.locator(f'#results .card[data-id="{older}"]')).to_have_class("card new")
    # one taken before everything shown goes to the end (the list has no older pages here)
    oldest = add_sample(store, 3, time=min(times.values()) - 86400)
    expect(_cards(page)).to_have_count(len(CAPTURES) + 2, timeout=15_000)
    assert _ids(page)[-1] == oldest
    # and one taken now goes on top
    fresh = add_sample(store, 4, time=datetime.now().timestamp())
    expect(_cards(page).first).to_have_attribute("data-id", str(fresh), timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "10-live-order.png"), full_page=True)


def test_delete_one_capture_and_a_selection(site, page):
    url, store = site
    login(page, url)
    expect(_cards(page)).to_have_count(7)
    image = store.file_path(3, "image")
    assert image is not None and image.is_file()
    page.goto(url + "/capture/3")
    page.once("dialog", lambda d: d.accept())
    page.click("#delete")
    page.wait_for_url(url + "/")
    expect(_cards(page)).to_have_count(6)
    assert 3 not in _ids(page) and store.get(3) is None and not image.exists()

    # a dismissed confirmation deletes nothing
    page.click("#select")
    expect(page.locator("#select")).to_have_attribute("aria-pressed", "true")
    page.locator('#results .card[data-id="5"]').click()
    page.locator('#results .card[data-id="6"]').focus()
    page.keyboard.press(" ")  # the keyboard ticks a card too
    expect(page.locator('#results .card[aria-checked="true"]')).to_have_count(2)
    expect(page.locator("#delete-selected")).to_have_text("Delete 2 selected")
    page.once("dialog", lambda d: d.dismiss())
    page.click("#delete-selected")
    assert store.count() == 6
    page.screenshot(path=str(ARTIFACTS / "11-select.png"), full_page=True)

    page.once("dialog", lambda d: d.accept())
    page.click("#delete-selected")
    expect(_cards(page)).to_have_count(4)
    expect(page.locator("#status")).to_have_text("Deleted 2 captures.")
    assert store.count() == 4 and store.get(5) is None and store.get(6) is None
    page.reload()  # the server agrees
    expect(_cards(page)).to_have_count(4)
    assert sorted(_ids(page)) == [1, 2, 4, 7]


def test_export_downloads_what_the_page_shows(site, page):
    url, store = site
    login(page, url)
    page.fill("#q", "cat")
    expect(_cards(page)).to_have_count(3)  # cat, cats
    shown = set(_ids(page))
    with page.expect_download() as dl:
        page.click("#export-csv")
    rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text("utf-8"))))
    assert {int(r["id"]) for r in rows} == shown and all("cat" in r["caption"] for r in rows)
    assert dl.value.suggested_filename.startswith("edgecap-cat-") and dl.value.suggested_filename.endswith(".csv")
    with page.expect_download() as dl:
        page.click("#export-json")
    assert {c["id"] for c in json.loads(Path(dl.value.path()).read_text("utf-8"))} == shown
    with page.expect_download() as dl:
        page.click("#export-zip")
    with zipfile.ZipFile(dl.value.path()) as z:
        names = set(z.namelist())
        assert names == {"captures.csv", "captures.json", *(f"images/{i}.jpg" for i in shown)}
        for i in shown:  # the photos themselves, byte for byte
            assert z.read(f"images/{i}.jpg") == store.file_path(i, "image").read_bytes()


def test_timeline_of_a_day(tmp_path, page):
    # three captures on one day (09:10, 09:40, 14:05 local time) and one the day before
    store = fill_store(tmp_path / "store")
    for cid in range(1, 8):
        store.delete([cid])
    day = datetime(2024, 5, 2)
    at = {h_m: (day.replace(hour=h_m[0], minute=h_m[1])).timestamp() for h_m in ((9, 10), (9, 40), (14, 5))}
    ids = {h_m: add_sample(store, i, time=t) for i, (h_m, t) in enumerate(at.items())}
    before = add_sample(store, 4, time=datetime(2024, 5, 1, 20, 0).timestamp())
    app = create_app(web_config(store.data_dir, password_hash=hash_password(PASSWORD)), store, PixelCaptioner(),
                     None)
    with running(app) as url:
        login(page, url)
        expect(_cards(page)).to_have_count(4)
        expect(page.locator("#timeline-day")).to_contain_text("2024")
        expect(page.locator("#timeline-day")).to_contain_text("3 captures")  # the newest capture's day
        hours = page.locator("#hours .hour")
        expect(hours).to_have_count(24)
        expect(hours.nth(9)).to_have_attribute("aria-label", "09:00 to 10:00: 2 captures")
        expect(hours.nth(10)).to_be_disabled()
        hours.nth(9).click()
        expect(_cards(page)).to_have_count(2)
        assert set(_ids(page)) == {ids[(9, 10)], ids[(9, 40)]}
        assert page.input_value("#since") == page.input_value("#until") == "2024-05-02"
        assert page.input_value("#from_time") == "09:00" and page.input_value("#to_time") == "10:00"
        assert "from_time=09%3A00" in page.url
        expect(hours.nth(9)).to_have_attribute("aria-pressed", "true")
        page.screenshot(path=str(ARTIFACTS / "12-timeline-hour.png"), full_page=True)
        hours.nth(9).click()  # again: the whole day
        expect(_cards(page)).to_have_count(3)
        page.click("#day-prev")
        expect(page.locator("#timeline-day")).to_contain_text("1 capture")
        expect(_cards(page)).to_have_count(1)
        assert _ids(page) == [before]
        expect(page.locator("#day-prev")).to_be_disabled()
    store.close()


@pytest.mark.skipif(not AXE.is_file(), reason="axe-core is installed by ./test.sh (npm)")
@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_accessibility_and_contrast_in_both_themes(site, browser, scheme):
    url, _ = site
    ctx = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
    # the page's CSP runs only its own scripts: axe comes in as an init script (DevTools protocol)
    ctx.add_init_script(path=str(AXE))
    pg = ctx.new_page()
    try:
        login(pg, url)
        expect(_cards(pg)).to_have_count(7)
        expect(pg.locator("#timeline")).to_be_visible()
        pg.click("#select")  # the selection state styles too
        pg.locator("#results .card").first.click()
        images_loaded(pg)
        problems = []
        for path in ("/", "/capture/1", "/upload", "/login"):
            if path != "/":
                pg.goto(url + path)
                pg.wait_for_load_state("networkidle")
            found = pg.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
            problems += [f"{path}: {v['id']} ({v['impact']}): {[n['target'] for n in v['nodes']][:3]}" for v in found]
        assert problems == [], "\n".join(problems)
    finally:
        ctx.close()
