"""MQTT against a real Mosquitto broker: Home Assistant discovery, capture events, alerts, /metrics,
broker restarts (nothing lost, bounded queue), the last will, passwords and TLS."""
from __future__ import annotations

import base64
import json
import os
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from device.config import load_config
from device.events import CaptureEvent
from device.mqtt import MqttPublisher
from tests.mqttbroker import PASSWORD, USER, Broker, Subscriber, free_port, needs_mosquitto, wait_until

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
WEB_PASSWORD = "long enough password"  # edgecap refuses passwords under 8 characters
needs_models = pytest.mark.skipif(not (MODELS / "captioner-int8" / "manifest.json").is_file(),
                                  reason="models/captioner-int8 not built yet")
pytestmark = needs_mosquitto


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.stop()


def mqtt_section(port: int, **extra) -> dict:
    return {"enabled": True, "host": "127.0.0.1", "port": port, "username": USER, "password": PASSWORD,
            "device_id": "cam1", **extra}


def publisher(port: int, rules: list[str] | None = None, **extra) -> MqttPublisher:
    cfg = load_config(env={}, overrides={"mqtt": mqtt_section(port, **extra)})
    return MqttPublisher(cfg.mqtt, "cam1", "http://cam1.lan:8080", rules or [])


def event(cid: int) -> CaptureEvent:
    payload = {"id": cid, "caption": f"capture number {cid}"}
    return CaptureEvent({"id": cid, "time": 1000.0 + cid}, payload, None)


def ids(payloads: list[bytes]) -> list[int]:
    """Capture ids in arrival order, a repeat (QoS 1 may deliver twice) counted once."""
    seen: list[int] = []
    for p in payloads:
        cid = json.loads(p)["id"]
        if cid not in seen:
            seen.append(cid)
    return seen


# ------------------------------------------------------------------------------------- the whole daemon

def http_get(url: str, auth: bool = True) -> tuple[int, str, Any]:
    headers = {"Authorization": "Basic " + base64.b64encode(b"edgecap:" + WEB_PASSWORD.encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers


@needs_models
def test_run_publishes_discovery_captures_alerts_and_metrics(tmp_path: Path, broker: Broker) -> None:
    from PIL import Image

    from device.captioner import Captioner
    from device.daemon import run

    # The phrase is what this very model says about one sample photo, so the rule matches that
    # capture (and any other the model describes the same way) whatever the committed model is.
    captioner = Captioner.load(MODELS / "captioner-int8", num_threads=1)
    photo = Image.open(ROOT / "device" / "samples" / "cat_chelsea.jpg").convert("RGB")
    phrase = captioner.caption(photo, beam_width=3).text
    web_port = free_port()
    cfg = load_config(env={"EDGECAP_PASSWORD": WEB_PASSWORD}, overrides={
        "data_dir": str(tmp_path / "data"), "models_dir": str(MODELS),
        "camera": {"source": "samples"}, "model": {"num_threads": 1},
        "web": {"host": "127.0.0.1", "port": web_port, "public_url": "http://frontdoor.lan:8080"},
        "mqtt": mqtt_section(broker.port),
        "alerts": [{"name": "same as the cat", "phrase": phrase}],
    })
    sub = Subscriber(broker.port, ["edgecap/#", "homeassistant/#"])
    stop = threading.Event()
    done: list = []
    t = threading.Thread(target=lambda: done.append(run(cfg, web=True, stop=stop)))
    t.start()
    base = "edgecap/cam1"
    try:
        assert wait_until(lambda: len(sub.on(f"{base}/capture")) >= 9, 120), broker.log()[-2000:]
        assert wait_until(lambda: len(sub.on(f"{base}/thumbnail")) >= 9, 20)
        page = f"http://127.0.0.1:{web_port}"
        assert wait_until(lambda: "edgecap_mqtt_queue_length 0" in http_get(f"{page}/metrics")[1], 20)
        status, metrics, _ = http_get(f"{page}/metrics")
        no_auth = http_get(f"{page}/metrics", auth=False)
        alerts_api = json.loads(http_get(f"{page}/api/alerts")[1])
        alerts_page = http_get(f"{page}/alerts")
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive() and done and done[0].stored == 9
    assert wait_until(lambda: sub.on(f"{base}/availability")[-1:] == [b"offline"], 10)
    sub.close()

    # discovery: a sensor, an image and an event entity on one device, all with availability
    configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/") and p}
    sensor = configs["homeassistant/sensor/cam1/caption/config"]
    image = configs["homeassistant/image/cam1/capture/config"]
    alert_entity = configs["homeassistant/event/cam1/alert/config"]
    assert sensor["state_topic"] == f"{base}/capture" and "value_json.caption" in sensor["value_template"]
    assert image["image_topic"] == f"{base}/thumbnail" and image["content_type"] == "image/jpeg"
    assert alert_entity["state_topic"] == f"{base}/alert" and alert_entity["event_types"] == ["same as the cat"]
    for c in (sensor, image, alert_entity):
        assert c["availability_topic"] == f"{base}/availability"
        assert c["device"]["identifiers"] == ["edgecap_cam1"] and c["unique_id"].startswith("edgecap_cam1_")
    assert sub.on(f"{base}/availability")[0] == b"online"
    # what a client connecting later (Home Assistant after a restart) gets at once: retained messages
    late = Subscriber(broker.port, ["edgecap/#", "homeassistant/#"], name="late")
    assert wait_until(lambda: len(late.messages) >= 6)
    late.close()
    retained = {t for t, _, r in late.messages if r}
    assert set(configs) | {f"{base}/{k}" for k in ("availability", "capture", "thumbnail")} == retained

    # every capture, as stored, with the page's public URL; thumbnails are the stored JPEGs
    with sqlite3.connect(tmp_path / "data" / "edgecap.db") as db:
        rows = db.execute("SELECT id, caption, score, thumb FROM captures ORDER BY id").fetchall()
    published = [json.loads(p) for p in sub.on(f"{base}/capture")]
    assert ids(sub.on(f"{base}/capture")) == [r[0] for r in rows]
    assert json.loads(late.on(f"{base}/capture")[0])["id"] == rows[-1][0]
    for msg, (cid, caption, score, thumb) in zip(published, rows):
        assert msg["caption"] == caption and msg["score"] == pytest.approx(score, abs=1e-4)
        assert msg["tags"] == [] or isinstance(msg["tags"], list)
        assert msg["url"] == f"http://frontdoor.lan:8080/capture/{cid}" and msg["time"].endswith("Z")
    assert sub.on(f"{base}/thumbnail")[-1] == (tmp_path / "data" / rows[-1][3]).read_bytes()

    # the alert: every capture whose caption says the phrase, and nothing else
    expected = [cid for cid, caption, _, _ in rows if f" {phrase} " in f" {caption} "]
    alerts = [json.loads(p) for p in sub.on(f"{base}/alert")]
    assert expected and [a["capture"]["id"] for a in alerts] == expected
    assert all(a["event_type"] == "same as the cat" and a["kind"] == "phrase" for a in alerts)

    # /metrics: Prometheus text behind the password; /alerts lists the rule and its matches
    assert status == 200 and "# TYPE edgecap_captures_total counter" in metrics
    assert "edgecap_captures_total 9" in metrics and "edgecap_caption_seconds_count 9" in metrics
    assert "edgecap_mqtt_connected 1" in metrics and "edgecap_store_captures 9" in metrics
    assert f'edgecap_alert_matches_total{{rule="same as the cat"}} {len(expected)}' in metrics
    assert no_auth[0] == 401 and "Basic" in no_auth[2].get("WWW-Authenticate", "")
    assert alerts_api["running"] and alerts_api["rules"][0]["matches"] == len(expected)
    assert [m["capture"]["id"] for m in alerts_api["recent"]] == expected[::-1]
    assert alerts_page[0] == 200 and "same as the cat" in alerts_page[1] and phrase in alerts_page[1]


@needs_models
def test_capturing_goes_on_while_the_broker_is_unreachable(tmp_path: Path, caplog) -> None:
    from device.daemon import run

    cfg = load_config(env={}, overrides={
        "data_dir": str(tmp_path / "data"), "models_dir": str(MODELS), "camera": {"source": "samples"},
        "model": {"num_threads": 1, "embedder": "none"}, "mqtt": mqtt_section(free_port(), queue_size=4),
    })
    done: list = []
    t = threading.Thread(target=lambda: done.append(run(cfg, web=False)))
    t.start()
    t.join(120)
    assert not t.is_alive() and done[0].stored == 9 and done[0].errors == 0
    with sqlite3.connect(tmp_path / "data" / "edgecap.db") as db:
        assert db.execute("SELECT count(*) FROM captures").fetchone()[0] == 9
    assert "message(s) not sent before stopping" in caplog.text  # said, not hidden
    assert "Traceback" not in caplog.text


# ------------------------------------------------------------------------------------- broker restarts

def test_broker_restart_loses_nothing_queued(broker: Broker) -> None:
    pub = publisher(broker.port)
    sub = Subscriber(broker.port, ["edgecap/cam1/capture"], persistent=True, name="restart-sub")
    pub.start()
    try:
        assert wait_until(lambda: pub.connected)
        for cid in (1, 2):
            pub.publish_capture(event(cid))
        assert wait_until(lambda: ids(sub.on("edgecap/cam1/capture")) == [1, 2])
        broker.stop()
        assert wait_until(lambda: not pub.connected)
        for cid in range(3, 9):  # the camera goes on while the broker is away; nothing waits
            pub.publish_capture(event(cid))
        assert pub.queued() == 6 and pub.dropped == 0
        broker.start()
        assert wait_until(lambda: ids(sub.on("edgecap/cam1/capture")) == list(range(1, 9)), 40), \
            ids(sub.on("edgecap/cam1/capture"))
        assert wait_until(lambda: pub.queued() == 0)
    finally:
        pub.stop()
        sub.close()


def test_outbox_is_bounded_while_the_broker_is_down(broker: Broker) -> None:
    pub = publisher(broker.port, queue_size=3)
    sub = Subscriber(broker.port, ["edgecap/cam1/capture"], persistent=True, name="bounded-sub")
    pub.start()
    try:
        assert wait_until(lambda: pub.connected)
        broker.stop()
        assert wait_until(lambda: not pub.connected)
        for cid in range(1, 8):
            pub.publish_capture(event(cid))
        assert pub.queued() == 3 and pub.dropped == 4  # the newest three are kept
        broker.start()
        assert wait_until(lambda: ids(sub.on("edgecap/cam1/capture")) == [5, 6, 7], 40), \
            ids(sub.on("edgecap/cam1/capture"))
        assert 'edgecap_mqtt_dropped_total' in {s.family for s in pub.samples()}
        assert next(s.value for s in pub.samples() if s.family == "edgecap_mqtt_dropped_total") == 4
    finally:
        pub.stop()
        sub.close()


def test_home_assistant_restart_gets_discovery_again(broker: Broker) -> None:
    pub = publisher(broker.port, rules=["door"])
    pub.start()
    sub = Subscriber(broker.port, ["homeassistant/sensor/#"])
    try:
        assert wait_until(lambda: len(sub.on("homeassistant/sensor/cam1/caption/config")) == 1)
        sub.client.publish("homeassistant/status", b"online", qos=1)  # what Home Assistant sends at start
        assert wait_until(lambda: len(sub.on("homeassistant/sensor/cam1/caption/config")) == 2)
    finally:
        pub.stop()
        sub.close()


def test_last_will_marks_the_device_offline_when_it_dies(broker: Broker, tmp_path: Path) -> None:
    sub = Subscriber(broker.port, ["edgecap/cam1/availability"])
    script = (
        "import os, time, sys\n"
        "from device.config import load_config\n"
        "from device.mqtt import MqttPublisher\n"
        f"cfg = load_config(env={{}}, overrides={{'mqtt': {mqtt_section(broker.port)!r}}})\n"
        "p = MqttPublisher(cfg.mqtt, 'cam1', 'http://x', [])\n"
        "p.start()\n"
        "while not p.connected: time.sleep(0.05)\n"
        "time.sleep(0.3)\n"
        "os._exit(3)  # no clean stop: a power cut, a kill -9\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, timeout=60, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.returncode == 3, proc.stderr.decode()
        assert wait_until(lambda: sub.on("edgecap/cam1/availability")[-1:] == [b"offline"], 10)
        assert b"online" in sub.on("edgecap/cam1/availability")
    finally:
        sub.close()


def test_wrong_password_never_connects_and_never_blocks(broker: Broker, caplog) -> None:
    pub = publisher(broker.port, password="not the password", queue_size=5)
    pub.start()
    try:
        assert wait_until(lambda: "refused the connection" in caplog.text, 10)
        for cid in range(10):
            pub.publish_capture(event(cid))
        assert not pub.connected and pub.queued() == 5 and pub.published == 0
    finally:
        pub.stop(timeout=0.5)


def make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it (openssl)."""
    folder.mkdir()
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=edgecap test CA")
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


@pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                    reason="openssl is not installed")
def test_tls_with_the_brokers_own_ca(tmp_path: Path, caplog) -> None:
    ca, cert, key = make_certificates(tmp_path / "certs")
    broker = Broker(tmp_path / "broker", tls=(cert, key)).start()
    trusted = publisher(broker.port, tls=True, ca_file=str(ca))
    untrusted = publisher(broker.port, tls=True)  # the system's CAs do not know this broker
    try:
        trusted.start()
        untrusted.start()
        assert wait_until(lambda: trusted.connected)
        trusted.publish_capture(event(1))
        assert wait_until(lambda: trusted.published >= 2)  # "online" and discovery, then the capture
        assert wait_until(lambda: trusted.queued() == 0)
        assert not untrusted.connected
    finally:
        trusted.stop(timeout=0.5)
        untrusted.stop(timeout=0.5)
        broker.stop()


def test_doctor_logs_in_to_the_broker(broker: Broker) -> None:
    import io

    from device.doctor import Report, check_mqtt

    def check(**mqtt) -> tuple[bool, str]:
        out = io.StringIO()
        r = Report(out)
        check_mqtt(r, load_config(env={}, overrides={"mqtt": {**mqtt_section(broker.port), **mqtt}}))
        return r.failed, out.getvalue()

    failed, text = check()
    assert not failed and f"logged in to 127.0.0.1:{broker.port} as edgecap" in text
    failed, text = check(password="wrong")
    assert failed and "refused the connection: Not authorized" in text and "-> check [mqtt]" in text
    failed, text = check(port=free_port())  # nothing listens there
    assert failed and "cannot connect to 127.0.0.1" in text
    assert "edgecap-cam1-check" in broker.log()  # its own client id: the running service stays connected
