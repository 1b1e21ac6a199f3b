"""`start_events`: the event hub with the outputs the config turns on ([mqtt], [[alerts]] and their
webhooks), started in order and stopped in order.

Kept apart from events.py, which the outputs import for the event they receive: the hub's module
need not know them, and no import goes in a circle.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from device.alerts import Alerts, WebhookSender
from device.config import Config
from device.events import EventHub, Output, device_id, page_base_url
from device.metrics import Registry
from device.mqtt import MqttPublisher


@dataclass
class Events:
    """What `edgecap run` starts for [mqtt] and [[alerts]]; stop() ends it all in order."""

    hub: EventHub
    mqtt: Any | None = None  # device.mqtt.MqttPublisher
    alerts: Any | None = None  # device.alerts.Alerts
    webhooks: Any | None = None  # device.alerts.WebhookSender

    def stop(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        self.hub.stop(timeout)
        if self.webhooks is not None:
            self.webhooks.stop(max(0.5, deadline - time.monotonic()))
        if self.mqtt is not None:
            self.mqtt.stop(max(0.5, deadline - time.monotonic()))


def start_events(config: Config, store: Any, embedder: Any, registry: Registry) -> Events | None:
    """Start MQTT and the alert rules when configured (None when neither is). Raises EventsError."""
    if not config.mqtt.enabled and not config.alerts:
        return None
    base_url = page_base_url(config)
    mqtt = None
    if config.mqtt.enabled:
        mqtt = MqttPublisher(config.mqtt, device_id(config), base_url, [r.name for r in config.alerts])
    webhooks = WebhookSender() if any(r.webhook for r in config.alerts) else None
    outputs: list[Output] = []
    alerts = None
    if mqtt is not None:
        outputs.append(mqtt.publish_capture)
    if config.alerts:
        on_match = [f for f in (mqtt and mqtt.publish_alert, webhooks and webhooks.deliver) if f]
        alerts = Alerts(config.alerts, store, embedder, on_match)
        outputs.append(alerts.check)
    hub = EventHub(store, outputs, base_url)
    events = Events(hub, mqtt, alerts, webhooks)
    for part in (hub, mqtt, alerts, webhooks):
        if part is not None:
            registry.register(part.samples)
    if mqtt is not None:
        mqtt.start()
    if webhooks is not None:
        webhooks.start()
    hub.start()
    return events
