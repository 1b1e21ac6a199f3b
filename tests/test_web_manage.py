"""Deleting, exporting, the timeline, the time-of-day filter and live updates, over a real HTTP server
(waitress on 127.0.0.1) and a real SQLite store."""
from __future__ import annotations

import csv
import io
import json
import zipfile
from datetime import datetime

import pytest
from webfixtures import CAPTURES, PASSWORD, Client, add_sample, basic, fill_store, running, web_config

from device.config import load_config
from device.web import WebConfigError, create_app, hash_password


@pytest.fixture()
def site(tmp_path):
    store = fill_store(tmp_path / "store")  # ids 1..7, one day apart
    app = create_app(web_config(store.data_dir, password_hash=hash_password(PASSWORD)), store, None, None)
    with running(app) as url:
        yield Client(url, basic()), store
    store.close()


def test_delete_one_capture_removes_row_and_files(site):
    api, store = site
    image, thumb = store.file_path(2, "image"), store.file_path(2, "thumb")
    r = api.request("DELETE", "/api/captures/2")
    assert r.status == 200 and r.json() == {"deleted": 1, "ids": [2]}
    assert store.get(2) is None and not image.exists() and not thumb.exists()
    assert api.get("/api/captures/2").status == 404
    assert api.request("DELETE", "/api/captures/2").status == 404  # already gone
    assert 2 not in [c["id"] for c in api.get("/api/search?q=fox").json()["items"]]


def test_delete_many_and_bad_requests(site):
    api, store = site
    h = {"Content-Type": "application/json"}
    r = api.post("/api/captures/delete", json.dumps({"ids": [1, 3, 99]}).encode(), headers=h)
    assert r.status == 200 and r.json()["deleted"] == 2 and store.count() == len(CAPTURES) - 2
    r = api.post("/api/captures/delete", b"ids=4,5", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status == 200 and r.json()["deleted"] == 2
    for body, message in ((b"{}", "send the capture ids"), (b'{"ids": ["x"]}', "whole numbers"),
                          (json.dumps({"ids": list(range(1001))}).encode(), "at most 1000"),
                          (b'{"ids": [-1]}', "no such capture")):
        r = api.post("/api/captures/delete", body, headers=h)
        assert r.status == 400 and message in r.json()["error"], (body[:40], r.text)
    assert store.count() == len(CAPTURES) - 4  # the bad requests deleted nothing


def test_delete_needs_the_password_and_a_same_site_request(site):
    api, store = site
    url = f"http://{api.host}:{api.port}"
    assert Client(url).request("DELETE", "/api/captures/1").status == 401
    r = api.request("DELETE", "/api/captures/1", headers={"Origin": "http://evil.example"})
    assert r.status == 403 and store.get(1) is not None


def test_export_formats(site):
    api, store = site
    r = api.get("/api/export?format=csv&q=cat")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert 'filename="edgecap-cat-' in r.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows and all("cat" in row["caption"] for row in rows)
    assert set(rows[0]) >= {"id", "time", "caption", "confidence", "tags", "source", "image"}
    everything = api.get("/api/export?format=json").json()  # no query: every capture, newest first
    assert [c["id"] for c in everything] == list(range(len(CAPTURES), 0, -1))
    assert [c["id"] for c in api.get("/api/export?format=json&source=folder").json()] == [6, 5, 4]
    r = api.get("/api/export?format=zip&source=folder")
    with zipfile.ZipFile(io.BytesIO(r.body)) as z:
        assert z.testzip() is None
        assert set(z.namelist()) == {"captures.csv", "captures.json", "images/4.jpg", "images/5.jpg", "images/6.jpg"}
        assert z.read("images/5.jpg") == store.file_path(5, "image").read_bytes()
        assert "images/5.jpg" in z.read("captures.csv").decode()
    assert api.get("/api/export?format=xls").status == 400


def test_export_csv_cannot_run_formulas_in_a_spreadsheet(site):
    api, store = site
    add_sample(store, 3, time=1_800_000_000.0)
    store.connection().execute("UPDATE captures SET original_path = '=HYPERLINK(\"http://x\")' WHERE id = 8")
    rows = list(csv.DictReader(io.StringIO(api.get("/api/export?format=csv").text)))
    assert rows[0]["original_path"] == "'=HYPERLINK(\"http://x\")"


def test_time_of_day_filter(site):
    api, store = site
    day = datetime(2025, 3, 10)
    at = {h: add_sample(store, h % 7, time=day.replace(hour=h, minute=30).timestamp()) for h in (2, 8, 13, 23)}

    def ids(query: str, q: str = "") -> set[int]:
        path = f"/api/search?q={q}&k=100&{query}" if q else f"/api/captures?limit=100&{query}"
        r = api.get(path)
        assert r.status == 200, r.text
        return {c["id"] for c in r.json()["items"]} & set(at.values())

    assert ids("from_time=08:00&to_time=14:00") == {at[8], at[13]}
    assert ids("from_time=22:00&to_time=03:00") == {at[23], at[2]}  # past midnight
    assert ids("from_time=13:00") == {at[13], at[23]}
    assert ids("to_time=09:00") == {at[2], at[8]}
    # search applies it too, in every ranking
    assert ids("from_time=08:00&to_time=14:00", q="dog") <= {at[8], at[13]}
    for bad in ("from_time=25:00", "to_time=8am", "from_time=10:00&to_time=10:00"):
        r = api.get(f"/api/captures?{bad}")
        assert r.status == 400 and "time" in r.json()["error"]


def test_timeline_counts_the_hours_of_a_day(site):
    api, store = site
    day = datetime(2025, 3, 10)
    for h, m in ((9, 5), (9, 50), (17, 0)):
        add_sample(store, 0, time=day.replace(hour=h, minute=m).timestamp())
    t = api.get("/api/timeline?day=2025-03-10").json()
    assert t["day"] == "2025-03-10" and t["total"] == 3 and len(t["hours"]) == 24
    assert t["hours"][9] == 2 and t["hours"][17] == 1 and sum(t["hours"]) == 3
    assert t["prev_day"] is not None and t["next_day"] is None
    assert api.get("/api/timeline").json()["day"] == "2025-03-10"  # default: the newest capture's day
    earlier = api.get(f"/api/timeline?day={t['prev_day']}").json()
    assert earlier["total"] == 1 and earlier["next_day"] == "2025-03-10"
    assert api.get("/api/timeline?day=tomorrow").status == 400


def test_live_updates_return_late_arrivals_whatever_their_time(site):
    # issue 14: the page polled with after_id but the server cut the newest `limit` by *time* first, so
    # a photo ingested with an old time was never sent; now every capture stored after after_id is.
    api, store = site
    newest = max(c["id"] for c in api.get("/api/captures?limit=100").json()["items"])
    old = add_sample(store, 2, time=1_000_000_000.0)  # 2001, long before everything shown
    new = add_sample(store, 3, time=datetime.now().timestamp())
    items = api.get(f"/api/captures?after_id={newest}&limit=5").json()["items"]
    assert [c["id"] for c in items] == [new, old]  # newest first by time, for the page to place


def test_capture_json_has_a_plain_confidence(site):
    api, _ = site
    c = api.get("/api/captures/1").json()
    assert 0 < c["confidence"] <= 1 and c["score"] < 0
    assert all(0 < b["confidence"] <= 1 for b in c["beams"])


def test_short_passwords_are_refused(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="at least 8 characters"):
        hash_password("a")
    monkeypatch.setenv("EDGECAP_PASSWORD", "short")
    monkeypatch.delenv("EDGECAP_CONFIG", raising=False)
    config = load_config(overrides={"data_dir": str(tmp_path / "s")})
    with pytest.raises(WebConfigError, match="EDGECAP_PASSWORD is too short"):
        create_app(config, fill_store(tmp_path / "s"), None, None)
