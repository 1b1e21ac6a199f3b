"""Config: defaults, TOML file, environment, flags, and the messages for mistakes."""
from __future__ import annotations

import tempfile
import tomllib
from pathlib import Path

import pytest

from device.config import Config, ConfigError, load_config, to_toml


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text)
    return p


def test_defaults_work_without_a_file(tmp_path: Path) -> None:
    cfg = load_config(env={"HOME": str(tmp_path)})
    assert cfg.camera.source == "auto"
    assert cfg.capture.interval == 5.0
    assert cfg.model.captioner == "captioner-int8"
    assert cfg.web.port == 8080 and cfg.web.auth is True
    assert cfg.path is None or cfg.path == Path("/etc/edgecap/config.toml")


def test_file_values_and_precedence(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
data_dir = "/srv/from-file"
[camera]
source = "Folder"
folder = "/srv/incoming"
[capture]
interval = 2
min_change = 0.1
[web]
port = 9000
""",
    )
    cfg = load_config(p, env={})
    assert cfg.path == p
    assert cfg.camera.source == "folder"  # case-insensitive choice
    assert cfg.capture.interval == 2.0 and isinstance(cfg.capture.interval, float)
    assert cfg.web.port == 9000
    assert cfg.data_dir == Path("/srv/from-file")

    # environment beats the file, flags beat both; None flags are ignored
    cfg = load_config(p, env={"EDGECAP_DATA_DIR": "/srv/env"}, overrides={"web": {"port": None}})
    assert cfg.data_dir == Path("/srv/env") and cfg.web.port == 9000
    cfg = load_config(
        p, env={"EDGECAP_DATA_DIR": "/srv/env"}, overrides={"data_dir": "/srv/flag", "web": {"port": 81}}
    )
    assert cfg.data_dir == Path("/srv/flag") and cfg.web.port == 81


def test_edgecap_config_env_and_password(tmp_path: Path) -> None:
    p = write(tmp_path, "[model]\nbeam_width = 5\n")
    cfg = load_config(env={"EDGECAP_CONFIG": str(p), "EDGECAP_PASSWORD": "s3cret"})
    assert cfg.model.beam_width == 5
    assert cfg.web.password == "s3cret"
    assert "s3cret" not in repr(cfg) and "s3cret" not in to_toml(cfg)


@pytest.mark.parametrize(
    "text, words",
    [
        ("[camera]\nsorce = 'usb'\n", ["[camera] sorce", "did you mean 'source'"]),
        ("colour = 1\n", ["unknown key colour"]),
        ("[cmaera]\nsource = 'usb'\n", ["unknown key cmaera", "'camera'"]),
        ("[capture]\ninterval = 'fast'\n", ["[capture] interval", "must be a number"]),
        ("[capture]\ninterval = -1\n", ["[capture] interval", ">= 0"]),
        ("[capture]\nmin_change = 2\n", ["[capture] min_change", "<= 1"]),
        ("[web]\nport = 70000\n", ["[web] port"]),
        ("[web]\nauth = 'yes'\n", ["[web] auth", "true or false"]),
        ("[model]\nnum_threads = 1.5\n", ["[model] num_threads", "whole number"]),
        ("[model]\nbeam_width = true\n", ["[model] beam_width", "must be a number"]),
        ("[camera]\nsource = 'webcam'\n", ["[camera] source", "must be one of"]),
        ("[camera]\nsource = 'stream'\n", ["[camera] url"]),
        ("[camera]\nsource = 'folder'\n", ["[camera] folder"]),
        ("[web]\npassword = 'plain'\n", ["unknown key [web] password"]),
        ("camera = 3\n", ["[camera] must be a table"]),
        ("[camera\n", ["not valid TOML"]),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, text: str, words: list[str]) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p, env={})
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg


def test_missing_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", env={})


def test_bad_flag_value_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"command line: \[web\] port"):
        load_config(env={}, overrides={"web": {"port": 0}})


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(env={}, overrides={"camera": {"source": "samples"}, "web": {"secret_key": "abc"}})
    text = to_toml(cfg)
    assert "abc" not in text
    again = load_config(write(tmp_path, text), env={})
    assert again.camera == cfg.camera and again.capture == cfg.capture and again.model == cfg.model
    assert again.data_dir == cfg.data_dir and again.models_dir == cfg.models_dir
    assert isinstance(Config().camera.width, int)


def test_example_config_in_docs_loads() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    text = doc.read_text()
    start = text.index("```toml") + len("```toml")
    example = text[start : text.index("```", start)]
    data = tomllib.loads(example)
    assert "camera" in data
    # the documented example must pass validation as written
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.toml"
        p.write_text(example)
        cfg = load_config(p, env={})
    assert cfg.camera.source in ("auto", "picamera2", "usb", "jetson", "stream", "folder", "samples")


ALERTS = """
[mqtt]
enabled = true
host = "broker.lan"
username = "cam"
password = "mqtt-secret"
[[alerts]]
name = "person at the door"
query = "a person at the door"
min_score = 0.2
quiet = 300
webhook = "http://ha.lan:8123/api/webhook/very-secret-id"
[[alerts]]
name = "dog"
phrase = "dog"
"""


def test_mqtt_and_alert_rules(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, ALERTS), env={})
    assert cfg.mqtt.enabled and cfg.mqtt.host == "broker.lan" and cfg.mqtt.port == 0 and not cfg.mqtt.tls
    door, dog = cfg.alerts
    assert (door.name, door.query, door.min_score, door.quiet) == ("person at the door", "a person at the door", 0.2, 300.0)
    assert (dog.phrase, dog.query, dog.quiet, dog.webhook) == ("dog", "", 0.0, "")
    assert load_config(env={}).alerts == [] and not load_config(env={}).mqtt.enabled  # off by default
    # secrets stay out of the effective config; the password may come from the environment instead
    text = to_toml(cfg)
    assert "mqtt-secret" not in text and "very-secret-id" not in text and "http://ha.lan:8123/..." in text
    again = load_config(write(tmp_path, text), env={"EDGECAP_MQTT_PASSWORD": "from-env"})
    assert [r.name for r in again.alerts] == ["person at the door", "dog"] and again.mqtt.password == "from-env"


@pytest.mark.parametrize("rule, words", [
    ('name = "a"\nquery = "x"\nphrase = "y"', ["#1 (a)", "either query or phrase"]),
    ('name = "a"', ["#1 (a)", "either query or phrase"]),
    ('query = "x"', ["#1 name", "1-64 letters"]),
    ('name = "a/b"\nquery = "x"', ["#1 name"]),
    ('name = "a"\nphrase = "x"\nmin_score = 0.5', ["min_score", "only applies to a query"]),
    ('name = "a"\nquery = "x"\nwebhook = "ftp://host/x"', ["webhook", "http:// or https://"]),
    ('name = "a"\nquery = "x"\nquiet = -1', ["#1 quiet", ">= 0"]),
    ('name = "a"\nquery = "x"\nthreshold = 1', ["unknown key threshold"]),
])
def test_alert_rule_mistakes_name_the_rule(tmp_path: Path, rule: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, f"[[alerts]]\n{rule}\n"), env={})
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("text, words", [
    ('[[alerts]]\nname = "a"\nquery = "x"\n[[alerts]]\nname = "A"\nphrase = "y"\n', ["#2 name", "used by another"]),
    ("alerts = 3\n", ["[[alerts]] tables"]),
    ('[mqtt]\ntopic_prefix = "edgecap/#"\n', ["[mqtt] topic_prefix"]),
    ('[mqtt]\nca_file = "/etc/ca.pem"\n', ["[mqtt] ca_file", "tls = true"]),
    ('[mqtt]\nenabled = true\nhost = ""\n', ["[mqtt] host"]),
    ('[web]\npublic_url = "cam.lan"\n', ["[web] public_url"]),
])
def test_mqtt_and_alerts_mistakes(tmp_path: Path, text: str, words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text), env={})
    for w in words:
        assert w in str(e.value)


def test_home_assistant_doc_examples_load(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parent.parent / "docs" / "homeassistant.md").read_text()
    blocks = text.split("```toml")[1:]
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        cfg = load_config(write(tmp_path, block[: block.index("```")]), env={})
        assert cfg.alerts, f"toml example {i + 1} has no alert rule"
    first = load_config(write(tmp_path, blocks[0][: blocks[0].index("```")]), env={})
    assert first.mqtt.enabled and first.mqtt.device_id == "frontdoor" and len(first.alerts) == 2
