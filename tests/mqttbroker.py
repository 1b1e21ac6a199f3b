"""A real Mosquitto broker for the MQTT tests (Debian's `mosquitto`; ./test.sh installs it), on a free
127.0.0.1 port, with a password file and persistence so that a restart keeps sessions, and a small
subscriber built on paho-mqtt that records what arrives."""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

USER, PASSWORD = "edgecap", "broker secret"


def mosquitto_binary() -> str | None:
    # Debian puts the broker in /usr/sbin, which a non-root PATH may lack.
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


needs_mosquitto = pytest.mark.skipif(
    mosquitto_binary() is None or shutil.which("mosquitto_passwd") is None,
    reason="Mosquitto is not installed (apt-get install mosquitto; ./test.sh does it as root)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(pred, timeout: float = 20.0, every: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())


class Broker:
    """mosquitto -c <our config>; start() and stop() may be called repeatedly (same port, same data)."""

    def __init__(self, folder: Path, *, tls: tuple[Path, Path] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        passwd = folder / "passwd"
        subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), USER, PASSWORD], check=True,
                       capture_output=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwd}",
            # As root, mosquitto would switch to the "mosquitto" user, who cannot read our temp folder.
            f"user {pwd.getpwuid(os.getuid()).pw_name}",
            "persistence true",
            f"persistence_location {folder}/",
            f"log_dest file {folder / 'mosquitto.log'}",
            "log_type all",
        ]
        if tls:
            cert, key = tls
            lines += [f"certfile {cert}", f"keyfile {key}"]
        self.conf = folder / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        passwd.chmod(0o600)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([mosquitto_binary() or "mosquitto", "-c", str(self.conf)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.proc.stderr.read().decode()
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        assert wait_until(listening, 10), "mosquitto did not start listening"
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # a clean stop writes the persistence file
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        p = self.folder / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""


class Subscriber:
    """A paho client that records (topic, payload, retain) of everything under `topics`.

    persistent=True: a fixed client id and a kept session (QoS 1), so the broker queues what arrives
    while this subscriber is away, also across a broker restart (the broker persists sessions)."""

    def __init__(self, port: int, topics: list[str], *, persistent: bool = False, name: str = "test-sub") -> None:
        import paho.mqtt.client as paho

        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=name,
                                  clean_session=not persistent, protocol=paho.MQTTv311)
        self.client.username_pw_set(USER, PASSWORD)
        self.client.reconnect_delay_set(1, 2)
        self.topics = topics

        def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
            if not reason.is_failure:
                for t in topics:
                    client.subscribe(t, qos=1)
                self.connected.set()

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            with self.lock:
                self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

        self.client.on_connect = on_connect
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "the test subscriber could not connect"

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
