"""Captures and alert matches to an MQTT broker (paho-mqtt), with Home Assistant discovery.

Topics, under <topic_prefix>/<device_id>/ (default edgecap/<host name>/):
  availability  "online" / "offline" (retained; "offline" is also the last will)
  capture       the newest capture as JSON (retained): id, time, caption, score, tags, page URLs
  thumbnail     its thumbnail JPEG (retained), the picture of Home Assistant's image entity
  alert         one JSON message per alert match (not retained); `event_type` is the rule's name

Publishing never blocks the caller: messages go into a bounded outbox that one thread hands to paho,
one at a time, each only once the broker is connected, waiting for the broker's acknowledgement (QoS
1). While the broker is away the outbox keeps the newest `queue_size` messages (older ones are
dropped and counted); paho reconnects with back-off (1 s doubling to 60 s) and the outbox drains in
order. A message handed to paho just before the connection dropped is sent again by paho after the
reconnect, so a subscriber may see it twice (MQTT's "at least once"); the capture id tells them apart.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from device.config import AlertRule, MqttConfig
from device.events import CaptureEvent, EventsError
from device.metrics import Sample, counter, gauge

log = logging.getLogger(__name__)

RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 60
ACK_POLL_S = 0.25


class MqttError(EventsError):
    """MQTT cannot start (paho missing, bad TLS files); the message says what to do."""


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool = False


def _version() -> str:
    try:
        return metadata.version("edgecap")
    except metadata.PackageNotFoundError:
        return "dev"


def broker_port(config: MqttConfig) -> int:
    return config.port or (8883 if config.tls else 1883)


def make_client(config: MqttConfig, client_id: str) -> Any:
    """A paho client with the configured credentials, TLS and reconnect back-off. Raises MqttError."""
    try:
        import paho.mqtt.client as paho
    except ImportError as e:
        raise MqttError("[mqtt] enabled needs the paho-mqtt package: pip install paho-mqtt") from e
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
    if config.username:
        client.username_pw_set(config.username, config.password or None)
    if config.tls:
        if config.ca_file and not Path(config.ca_file).is_file():
            raise MqttError(f"[mqtt] ca_file {config.ca_file} does not exist")
        try:
            client.tls_set(ca_certs=config.ca_file or None)
        except (OSError, ValueError) as e:
            raise MqttError(f"[mqtt] cannot use ca_file {config.ca_file}: {e}") from e
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


def probe(config: MqttConfig, device_id: str, timeout: float = 5.0) -> str:
    """Connect once and disconnect: "" when the broker accepts us, else what went wrong. Uses its own
    client id, so that it does not push the running service off the broker."""
    client = make_client(config, f"edgecap-{device_id}-check")
    answer: list[str] = []
    done = threading.Event()

    def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        answer.append(f"the broker refused the connection: {reason}" if reason.is_failure else "")
        done.set()

    client.on_connect = on_connect
    try:
        client.connect(config.host, broker_port(config), keepalive=10)
    except (OSError, ValueError) as e:
        return f"cannot connect to {config.host}:{broker_port(config)}: {e}"
    client.loop_start()
    try:
        if not done.wait(timeout):
            return f"no answer from {config.host}:{broker_port(config)} within {timeout:g} s"
        return answer[0]
    finally:
        client.disconnect()
        client.loop_stop()


class MqttPublisher:
    def __init__(self, config: MqttConfig, device_id: str, page_url: str, rule_names: list[str]) -> None:
        self.config = config
        self.device_id = device_id
        self.page_url = page_url
        self.rule_names = rule_names
        self.base = f"{config.topic_prefix}/{device_id}"
        self.topics = {k: f"{self.base}/{k}" for k in ("availability", "capture", "thumbnail", "alert")}
        self._outbox: deque[Message] = deque()
        self._cond = threading.Condition()
        self._connected = False
        self._announce = False  # availability + discovery are due (after each connect)
        self._stopping = False
        self._acked: set[int] = set()  # message ids the broker acknowledged, not yet seen by _send
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self.published = self.dropped = self.failed = self.connects = 0
        self._last_error = ""

    # -- the caller's side: never blocks ---------------------------------------------------------------

    def _enqueue(self, *messages: Message) -> None:
        with self._cond:
            for m in messages:
                if len(self._outbox) >= self.config.queue_size:
                    self._outbox.popleft()
                    self.dropped += 1
                self._outbox.append(m)
            self._cond.notify_all()

    def publish_capture(self, event: CaptureEvent) -> None:
        """An EventHub output: the capture's JSON, then its thumbnail."""
        messages = [Message(self.topics["capture"], json.dumps(event.payload).encode(), retain=True)]
        if event.thumbnail:
            messages.append(Message(self.topics["thumbnail"], event.thumbnail, retain=True))
        self._enqueue(*messages)

    def publish_alert(self, rule: AlertRule, match: dict[str, Any]) -> None:
        """An Alerts on_match: one message on the alert topic."""
        self._enqueue(Message(self.topics["alert"], json.dumps(match).encode()))

    def queued(self) -> int:
        with self._cond:
            return len(self._outbox)

    @property
    def connected(self) -> bool:
        return self._connected

    # -- discovery ---------------------------------------------------------------------------------------

    def discovery_messages(self) -> list[Message]:
        """Home Assistant MQTT discovery: a sensor (last caption), an image (last capture) and, with
        alert rules, an event entity; all on this device and marked unavailable when we go away."""
        prefix, dev = self.config.discovery_prefix, self.device_id
        device = {
            "identifiers": [f"edgecap_{dev}"], "name": f"edgecap {dev}", "manufacturer": "edgecap",
            "model": "edgecap camera", "sw_version": _version(), "configuration_url": self.page_url,
        }
        common = {"availability_topic": self.topics["availability"], "device": device}
        entities = {
            ("sensor", "caption"): {
                "name": "Last caption", "state_topic": self.topics["capture"],
                "value_template": "{{ value_json.caption[:255] }}",  # a sensor's state holds 255 characters
                "json_attributes_topic": self.topics["capture"], "icon": "mdi:image-text",
            },
            ("image", "capture"): {
                "name": "Last capture", "image_topic": self.topics["thumbnail"], "content_type": "image/jpeg",
            },
            ("event", "alert"): {
                "name": "Alert", "state_topic": self.topics["alert"], "event_types": self.rule_names,
                "icon": "mdi:bell-ring",
            },
        }
        out = []
        for (component, key), entity in entities.items():
            topic = f"{prefix}/{component}/{dev}/{key}/config"
            if component == "event" and not self.rule_names:
                out.append(Message(topic, b"", retain=True))  # no rules (any more): remove the entity
                continue
            entity = {**entity, "unique_id": f"edgecap_{dev}_{key}", **common}
            out.append(Message(topic, json.dumps(entity).encode(), retain=True))
        return out

    def _announcement(self) -> list[Message]:
        messages = [Message(self.topics["availability"], b"online", retain=True)]
        if self.config.discovery:
            messages += self.discovery_messages()
        return messages

    # -- the connection ----------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background (the broker may come later) and start the publishing thread."""
        client = make_client(self.config, f"edgecap-{self.device_id}")
        client.will_set(self.topics["availability"], b"offline", qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client
        port = broker_port(self.config)
        client.connect_async(self.config.host, port, keepalive=self.config.keepalive)
        client.loop_start()
        self._thread = threading.Thread(target=self._run, name="edgecap-mqtt", daemon=True)
        self._thread.start()
        log.info("mqtt: publishing to %s:%d under %s/", self.config.host, port, self.base)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._last_error = str(reason)
            log.warning("mqtt: the broker refused the connection: %s", reason)
            return
        self.connects += 1
        log.info("mqtt: connected to %s", self.config.host)
        if self.config.discovery:
            # Home Assistant announces its (re)start here; we then repeat the discovery messages.
            client.subscribe(f"{self.config.discovery_prefix}/status", qos=1)
        with self._cond:
            self._connected, self._announce = True, True
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self._cond:
            was = self._connected
            self._connected = False
        if was and not self._stopping:
            log.warning("mqtt: lost the broker (%s); reconnecting in the background", reason)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if message.payload == b"online":
            with self._cond:
                self._announce = True
                self._cond.notify_all()

    # -- the publishing thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not (self._connected and (self._announce or self._outbox)):
                    self._cond.wait()
                if self._stopping:
                    return
                announce, self._announce = self._announce, False
                batch = self._announcement() if announce else [self._outbox[0]]
            for m in batch:
                if not self._send(m):
                    break
            else:
                if not announce:
                    with self._cond:
                        if self._outbox and self._outbox[0] is batch[0]:
                            self._outbox.popleft()

    def _send(self, m: Message) -> bool:
        """Hand one message to paho and wait for the broker's ack; False when stopping first.

        A message paho accepted is paho's from then on: if the connection drops it resends it
        after reconnecting, so the wait simply goes on."""
        info = self._client.publish(m.topic, m.payload, qos=1, retain=m.retain)
        if info.rc not in (0, 4):  # MQTT_ERR_SUCCESS, MQTT_ERR_NO_CONN (queued by paho, sent on connect)
            self.failed += 1
            log.error("mqtt: cannot publish to %s (paho error %s); dropping it", m.topic, info.rc)
            return True
        with self._cond:
            while info.mid not in self._acked:
                if self._stopping:
                    return False
                self._cond.wait(ACK_POLL_S)
            self._acked.discard(info.mid)
        self.published += 1
        return True

    def stop(self, timeout: float = 3.0) -> None:
        """Send what is queued while the broker is there (up to `timeout`), say "offline", disconnect."""
        deadline = time.monotonic() + timeout
        while self.connected and self.queued() and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._client is None:
            return
        if self.connected:
            info = self._client.publish(self.topics["availability"], b"offline", qos=1, retain=True)
            with self._cond:
                self._cond.wait_for(lambda: info.mid in self._acked, max(0.2, min(2.0, deadline - time.monotonic())))
        left = self.queued()
        if left:
            log.warning("mqtt: %d message(s) not sent before stopping", left)
        self._client.disconnect()
        self._client.loop_stop()

    def samples(self) -> list[Sample]:
        return [
            gauge("edgecap_mqtt_connected", "1 while connected to the MQTT broker", int(self.connected)),
            gauge("edgecap_mqtt_queue_length", "MQTT messages waiting for the broker", self.queued()),
            counter("edgecap_mqtt_published_total", "MQTT messages acknowledged by the broker", self.published),
            counter("edgecap_mqtt_dropped_total", "MQTT messages dropped because the outbox was full",
                    self.dropped),
            counter("edgecap_mqtt_failed_total", "MQTT messages paho refused to publish", self.failed),
            counter("edgecap_mqtt_connects_total", "Successful connections to the MQTT broker", self.connects),
        ]
