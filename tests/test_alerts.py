"""Alert rules (phrase and query, threshold, quiet period), the event queue, webhooks against a real
HTTP receiver, the /alerts page and /metrics without a daemon, and the Prometheus text format."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from device.alerts import Alerts, WebhookSender, phrase_matches
from device.config import AlertRule
from device.events import CaptureEvent, EventHub, capture_payload
from device.metrics import Histogram, Sample, counter, render
from device.search import search
from device.web import create_app
from tests.webfixtures import (
    DAY,
    PASSWORD,
    T0,
    Client,
    add_sample,
    basic,
    fill_store,
    running,
    wait_until,
    web_config,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
BASE = "http://cam.lan:8080"


def event_for(store: Any, cid: int) -> CaptureEvent:
    row = store.get_many([cid])[0]
    return CaptureEvent(row, capture_payload(row, BASE), None)


class Recorder:
    """An Alerts on_match that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def __call__(self, rule: AlertRule, match: dict) -> None:
        self.calls.append((rule.name, match))


# ------------------------------------------------------------------------------------- rules

@pytest.mark.parametrize("phrase, caption, expected", [
    ("person at the door", "A person at the door.", True),
    ("person at the door", "a door at the person", False),  # the words, but not in this order
    ("person at the door", "a person standing at the door", False),  # not consecutive
    ("dog", "two dogs play in the snow", True),  # plural and singular alike
    ("dogs", "a dog runs", True),
    ("cat", "a category of things", False),  # whole words only
    ("", "anything", False),
])
def test_phrase_matches(phrase: str, caption: str, expected: bool) -> None:
    assert phrase_matches(phrase, caption) is expected


def test_phrase_rule_with_a_quiet_period(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "data")  # ids 1..7 a day apart; #1 says "cats", #3 and #4 "cat"
    later = T0 + 10 * DAY
    for i, t in enumerate((later, later + 10, later + 70)):  # three more cat captures: +0 s, +10 s, +70 s
        add_sample(store, 3, time=t)
        assert store.get_many([8 + i])[0]["caption"] == "a cat sleeps in a cardboard box"
    rec = Recorder()
    alerts = Alerts([AlertRule(name="cat", phrase="cat", quiet=60)], store, None, [rec])
    for cid in range(1, 11):
        alerts.check(event_for(store, cid))
    # days apart, #1, #3, #4 and #8 match; #9, 10 s after #8, is quiet; #10, 70 s after #8, is not
    assert [m["capture"]["id"] for _, m in rec.calls] == [1, 3, 4, 8, 10]
    status = alerts.status()
    assert status["rules"][0]["matches"] == 5 and status["rules"][0]["suppressed"] == 1
    assert [m["capture"]["id"] for m in status["recent"]] == [10, 8, 4, 3, 1]
    m = rec.calls[1][1]
    assert m["event_type"] == "cat" and m["kind"] == "phrase" and m["score"] is None
    assert m["capture"]["url"] == f"{BASE}/capture/3" and m["capture"]["tags"] == []


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """The sample photos with hand-written captions, stored as the device stores them: MiniLM caption
    embeddings and the captioner's image vectors through models/image-projection."""
    if not (MODELS / "captioner-int8" / "manifest.json").is_file():
        pytest.skip("models/captioner-int8 not built yet")
    from device.captioner import Captioner
    from device.embedder import load_embedder
    from device.image_projection import load_image_projection
    from tests.webfixtures import captioner_vector

    embedder = load_embedder(MODELS, "minilm-int8", num_threads=1)
    captioner = Captioner.load(MODELS / "captioner-int8", num_threads=1)
    store = fill_store(tmp_path_factory.mktemp("alerts") / "data", embedder=embedder,
                       image_vector=captioner_vector(captioner),
                       image_projection=load_image_projection(MODELS))
    return store, embedder


def test_query_rule_scores_like_search(real_store) -> None:
    store, embedder = real_store
    # "fox" is in one caption only, so that capture is the best keyword match of the unrestricted
    # search too, and its rank_score there is exactly the one the rule sees for it alone.
    res = search(store, "a fox in the snow", k=10, embedder=embedder)
    fox = next(item for item in res.items if item["caption"] == "a red fox stands in the snow")
    assert res.mode == "hybrid"
    fox_id, fox_score = fox["id"], fox["rank_score"]
    returned = {item["id"] for item in res.items}

    rec = Recorder()
    rules = [AlertRule(name="at", query="a fox in the snow", min_score=fox_score),
             AlertRule(name="above", query="a fox in the snow", min_score=fox_score + 1e-3)]
    alerts = Alerts(rules, store, embedder, [rec])
    assert alerts.score(rules[0], store.get_many([fox_id])[0]) == pytest.approx(fox_score, abs=1e-6)
    for cid in range(1, 8):
        alerts.check(event_for(store, cid))
    assert [(name, m["capture"]["id"]) for name, m in rec.calls] == [("at", fox_id)]
    assert rec.calls[0][1]["score"] == pytest.approx(fox_score, abs=1e-4)

    # min_score 0: every capture the search returns for the query, and no other
    everything = Alerts([AlertRule(name="any", query="a fox in the snow", min_score=0.0)], store, embedder, [])
    matched = {cid for cid in range(1, 8) if everything.score(everything.rules[0], store.get_many([cid])[0])}
    non_negative = {item["id"] for item in res.items if item["rank_score"] >= 0}
    assert matched == non_negative and matched <= returned


# ------------------------------------------------------------------------------------- event queue

def test_event_queue_never_blocks_and_keeps_the_newest(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "data")
    seen: list[dict] = []
    hub = EventHub(store, [lambda e: seen.append(e.payload)], BASE, queue_size=2)
    for cid in range(1, 8):  # the worker is not running: the queue fills and keeps the last two
        hub.submit(cid)
    assert hub.dropped == 5
    hub.start()
    assert wait_until(hub.idle)
    hub.stop()
    assert [p["id"] for p in seen] == [6, 7]
    assert seen[1]["thumb_url"] == f"{BASE}/api/captures/7/thumb"


def test_a_failing_output_does_not_stop_the_others(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "data")
    seen: list[int] = []

    def broken(_event: CaptureEvent) -> None:
        raise RuntimeError("boom")

    hub = EventHub(store, [broken, lambda e: seen.append(e.capture["id"])], BASE)
    hub.start()
    for cid in (1, 2):
        hub.submit(cid)
    store.delete([3])
    hub.submit(3)  # deleted by retention before the worker got to it: skipped quietly
    assert wait_until(lambda: hub.idle() and len(seen) == 2)
    hub.stop()
    assert seen == [1, 2] and hub.errors == 2


# ------------------------------------------------------------------------------------- webhooks

class Receiver:
    """A real HTTP server on 127.0.0.1 answering POSTs with the scripted statuses (then 200)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)
        self.requests: list[tuple[str, dict, bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests.append((self.path, dict(self.headers), body))
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/api/webhook/secret-id?x=1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("statuses, posts, delivered", [
    ([], 1, 1),
    ([500, 503], 3, 1),  # retried after server errors
    ([429], 2, 1),  # and after "too many requests"
    ([404], 1, 0),  # a client error is not retried
    ([500, 500, 500, 500], 4, 0),  # given up after the retries
])
def test_webhook_posts_json_and_retries(statuses: list[int], posts: int, delivered: int) -> None:
    rx = Receiver(statuses)
    sender = WebhookSender(retry_delays=(0.01, 0.01, 0.01))
    sender.start()
    match = {"event_type": "door", "rule": "door", "capture": {"id": 4, "caption": "a cat"}}
    try:
        sender.deliver(AlertRule(name="door", phrase="cat", webhook=rx.url), match)
        assert wait_until(lambda: sender.delivered + sender.failed == 1)
    finally:
        sender.stop()
        rx.close()
    assert len(rx.requests) == posts and sender.delivered == delivered
    path, headers, body = rx.requests[0]
    assert path == "/api/webhook/secret-id?x=1" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == match


def test_webhook_to_nobody_is_retried_then_given_up(caplog) -> None:
    rx = Receiver([])
    url = rx.url
    rx.close()  # nothing listens there any more
    sender = WebhookSender(retry_delays=(0.01, 0.01))
    sender.start()
    sender.deliver(AlertRule(name="door", phrase="cat", webhook=url), {"rule": "door"})
    assert wait_until(lambda: sender.failed == 1)
    sender.stop()
    assert sender.retries == 2 and "giving up" in caplog.text
    assert "secret-id" not in caplog.text  # the webhook's secret path is never logged


def test_alert_to_webhook_through_the_event_queue(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "data")
    rx = Receiver([])
    sender = WebhookSender(retry_delays=(0.01,))
    alerts = Alerts([AlertRule(name="coffee", phrase="cup of coffee", webhook=rx.url)], store, None,
                    [sender.deliver])
    hub = EventHub(store, [alerts.check], BASE)
    sender.start()
    hub.start()
    try:
        for cid in range(1, 8):
            hub.submit(cid)
        assert wait_until(lambda: sender.delivered == 1)
    finally:
        hub.stop()
        sender.stop()
        rx.close()
    sent = json.loads(rx.requests[0][2])
    assert sent["rule"] == "coffee" and sent["capture"]["caption"] == "a cup of coffee on a wooden table"
    assert sent["capture"]["url"] == f"{BASE}/capture/5"


# ------------------------------------------------------------------------------------- page, metrics

def test_alerts_page_and_metrics_without_a_daemon(tmp_path: Path) -> None:
    store = fill_store(tmp_path / "data")
    app = create_app(web_config(tmp_path / "data", password=PASSWORD), store)
    with running(app) as base:
        c = Client(base, basic())
        page = c.get("/alerts")
        api = c.get("/api/alerts").json()
        metrics = c.get("/metrics")
        anonymous = Client(base).get("/metrics")
    assert page.status == 200 and "No alert rules are running" in page.text
    assert api == {"running": False, "rules": [], "recent": [], "checked": 0}
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "edgecap_store_captures 7" in metrics.text and "edgecap_captures_total" not in metrics.text
    assert anonymous.status == 401 and anonymous.headers["WWW-Authenticate"].startswith("Basic")


def test_prometheus_text_format() -> None:
    h = Histogram([0.01, 0.1])
    for v in (0.005, 0.01, 0.05, 3.0):
        h.observe(v)
    text = render([
        counter("x_total", "What x counts", 3, rule='a "quoted"\nname'),
        counter("x_total", "What x counts", 1.5, rule="b"),
        *h.samples("t_seconds", "Time"),
        Sample("g", "gauge", "A gauge", float("nan")),
    ])
    assert text.splitlines() == [
        "# HELP x_total What x counts",
        "# TYPE x_total counter",
        'x_total{rule="a \\"quoted\\"\\nname"} 3',
        'x_total{rule="b"} 1.5',
        "# HELP t_seconds Time",
        "# TYPE t_seconds histogram",
        't_seconds_bucket{le="0.01"} 2',  # buckets are cumulative and include their bound
        't_seconds_bucket{le="0.1"} 3',
        't_seconds_bucket{le="+Inf"} 4',
        "t_seconds_sum 3.065",
        "t_seconds_count 4",
        "# HELP g A gauge",
        "# TYPE g gauge",
        "g NaN",
    ]


def test_a_query_is_embedded_once_not_per_capture(tmp_path: Path) -> None:
    from tests.fakes import BagOfWordsEmbedder

    embedder = BagOfWordsEmbedder()
    store = fill_store(tmp_path / "data", embedder=embedder)
    before = embedder.calls
    alerts = Alerts([AlertRule(name="cat", query="a cat in a box", min_score=0.0)], store, embedder, [])
    for cid in range(1, 8):
        alerts.check(event_for(store, cid))
    assert embedder.calls - before == 1
    assert alerts.status()["rules"][0]["matches"] >= 1  # "a cat sleeps in a cardboard box" shares words


def test_alerts_page_in_a_real_browser(tmp_path: Path) -> None:
    """Headless Chromium: log in, follow the nav link to Alerts, see the rule, its count and the
    matches with their thumbnails; no console errors (CSP included)."""
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("apt-get install chromium")
    store = fill_store(tmp_path / "data")
    alerts = Alerts([AlertRule(name="cats", phrase="cat", quiet=0),
                     AlertRule(name="door", query="a person at the door", min_score=0.5,
                               webhook="http://ha.lan:8123/api/webhook/secret-id")], store, None, [])
    for cid in range(1, 8):
        alerts.check(event_for(store, cid))
    app = create_app(web_config(tmp_path / "data", password=PASSWORD), store, alerts=alerts)
    problems: list[str] = []
    with running(app) as url, sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.on("console", lambda m: problems.append(m.text)
                if m.type == "error" and "status of 401" not in m.text else None)
        page.goto(url + "/alerts")
        page.fill("#password", PASSWORD)
        page.click("form.login button[type=submit]")
        expect = sync_api.expect
        rows = page.locator("#rules tbody tr")
        expect(rows).to_have_count(2)
        expect(rows.nth(0)).to_contain_text("the caption says “cat”")
        expect(rows.nth(0).locator("td").nth(4)).to_have_text("3")
        expect(rows.nth(1)).to_contain_text("http://ha.lan:8123/...")
        cards = page.locator("#matches .card")
        expect(cards).to_have_count(3)
        expect(cards.first.locator(".cap")).to_have_text("a cat sleeps in a cardboard box")  # newest first
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert "secret-id" not in page.content()
        cards.first.click()
        expect(page.locator("h1.caption")).to_have_text("a cat sleeps in a cardboard box")
        browser.close()
    assert problems == []


def test_mqtt_start_up_problems_are_one_clear_message(tmp_path: Path) -> None:
    from device.config import load_config
    from device.event_outputs import start_events
    from device.events import EventsError
    from device.metrics import Registry

    cfg = load_config(env={}, overrides={"data_dir": str(tmp_path / "data"), "mqtt": {
        "enabled": True, "host": "127.0.0.1", "tls": True, "ca_file": str(tmp_path / "missing-ca.pem")}})
    store = fill_store(tmp_path / "data")
    with pytest.raises(EventsError, match=r"\[mqtt\] ca_file .*missing-ca.pem does not exist"):
        start_events(cfg, store, None, Registry())
    (tmp_path / "garbled-ca.pem").write_text("not a certificate")
    cfg.mqtt.ca_file = str(tmp_path / "garbled-ca.pem")
    with pytest.raises(EventsError, match=r"\[mqtt\] cannot use ca_file"):
        start_events(cfg, store, None, Registry())
    # neither [mqtt] nor [[alerts]]: nothing is started, the capture loop gets no callback
    assert start_events(load_config(env={}), store, None, Registry()) is None


@pytest.mark.skipif(not (MODELS / "captioner-int8" / "manifest.json").is_file(), reason="models not built yet")
def test_edgecap_run_with_a_bad_mqtt_ca_file_stops_with_the_reason(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[camera]\nsource = "samples"\n[model]\nnum_threads = 1\n'
                   f'[mqtt]\nenabled = true\nhost = "127.0.0.1"\ntls = true\nca_file = "{tmp_path}/nope.pem"\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECAP_MODELS_DIR": str(MODELS)}
    env.pop("EDGECAP_CONFIG", None)
    p = subprocess.run([sys.executable, "-m", "device", "--data-dir", str(tmp_path / "data"), "--config", str(cfg),
                        "run", "--no-web"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "[mqtt] ca_file" in p.stderr and "does not exist" in p.stderr
    assert "Traceback" not in p.stderr
