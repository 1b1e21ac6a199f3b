"""The one configuration object: defaults, then a TOML file, then environment, then command-line flags.

Loaded once at start-up and validated there, so a typo in /etc/edgecap/config.toml stops the service
with a message naming the key instead of surfacing hours later.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

SYSTEM_CONFIG = Path("/etc/edgecap/config.toml")
ENV_PASSWORD = "EDGECAP_PASSWORD"  # the web password, read in load_config (and nowhere else)

SOURCES = ("auto", "picamera2", "usb", "jetson", "stream", "folder", "samples")
LOG_LEVELS = ("debug", "info", "warning", "error")
# An alert query's threshold on search()'s rank_score; with the default models that is mostly the
# query's similarity to the image (docs/homeassistant.md says how to pick one).
DEFAULT_MIN_SCORE = 0.15
ALERT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _-]{0,63}")


class ConfigError(ValueError):
    """A configuration problem a user can fix; the message names the file and the key."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "edgecap"


def model_dir_candidates() -> list[Path]:
    """Where the model sets may live, most specific first (a checkout, then installed locations)."""
    package_root = Path(__file__).resolve().parent.parent
    return [
        package_root / "models",  # a git checkout or an editable install
        Path(sys.prefix) / "share" / "edgecap" / "models",
        Path("/usr/share/edgecap/models"),
        Path("/opt/edgecap/models"),
    ]


def _default_models_dir() -> Path:
    for cand in model_dir_candidates():
        if cand.is_dir():
            return cand
    return model_dir_candidates()[0]


# Each field's metadata may carry: choices (tuple), min / max (numbers), doc (str, for docs/config.md).
def _f(default: Any, **meta: Any) -> Any:
    return field(default=default, metadata=meta)


@dataclass
class CameraConfig:
    source: str = _f("auto", choices=SOURCES)
    device: int = _f(0, min=0)  # /dev/videoN for usb, sensor-id for jetson, camera number for picamera2
    url: str = _f("")  # stream: rtsp:// or http(s):// URL, or a video file path
    folder: str = _f("")  # folder: the watched directory
    width: int = _f(1280, min=64, max=8192)
    height: int = _f(720, min=64, max=8192)
    settle: float = _f(1.0, min=0.0)  # folder: seconds a file must stay unchanged before it is read


@dataclass
class CaptureConfig:
    interval: float = _f(5.0, min=0.0)  # seconds between captures from a live camera
    min_change: float = _f(0.02, min=0.0, max=1.0)  # mean abs diff of a 64x64 grey thumbnail, 0..1
    max_captures: int = _f(0, min=0)  # stop after this many stored captures; 0 = run forever


@dataclass
class ModelConfig:
    captioner: str = _f("captioner-int8")
    embedder: str = _f("minilm-int8")  # a model set name, "none" or "sentence-transformers"
    num_threads: int = _f(2, min=1, max=64)
    beam_width: int = _f(3, min=1, max=16)


@dataclass
class StoreConfig:
    max_size_mb: float = _f(2048.0, min=0.0)  # 0 = no size limit
    min_free_mb: float = _f(500.0, min=0.0)


@dataclass
class WebConfig:
    enabled: bool = _f(True)
    host: str = _f("")  # "" = 0.0.0.0 with auth, 127.0.0.1 without
    port: int = _f(8080, min=1, max=65535)
    auth: bool = _f(True)
    password_hash: str = _f("")
    max_upload_mb: float = _f(10.0, min=0.1)
    secret_key: str = _f("")
    # The page's address as others reach it, for the links in MQTT messages and webhooks;
    # "" = http://<this host's name>:<port>
    public_url: str = _f("")
    secure_cookies: bool = _f(False)  # true behind an HTTPS reverse proxy: the cookie goes over HTTPS only
    # Only from EDGECAP_PASSWORD (never from the file): a plain password the web app may hash at start.
    password: str = field(default="", repr=False, metadata={"env_only": True})

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


@dataclass
class MqttConfig:
    enabled: bool = _f(False)
    host: str = _f("localhost")
    port: int = _f(0, min=0, max=65535)  # 0 = 1883, or 8883 with tls
    username: str = _f("")
    password: str = _f("", secret=True)  # or EDGECAP_MQTT_PASSWORD
    tls: bool = _f(False)
    ca_file: str = _f("")  # PEM CA certificate of a broker with its own CA; "" = the system's CAs
    device_id: str = _f("")  # names the topics and the Home Assistant device; "" = the host name
    topic_prefix: str = _f("edgecap")  # topics are <topic_prefix>/<device_id>/...
    discovery: bool = _f(True)  # Home Assistant MQTT discovery
    discovery_prefix: str = _f("homeassistant")
    queue_size: int = _f(1000, min=1, max=100_000)  # messages kept while the broker is away
    keepalive: int = _f(60, min=5, max=3600)


@dataclass
class AlertRule:
    """One [[alerts]] table: a query scored like search (or a literal phrase) -> event + webhook."""

    name: str = _f("")
    query: str = _f("")  # scored by the search ranking; matches when the score >= min_score
    phrase: str = _f("")  # matches when the caption contains these words in this order
    min_score: float = _f(DEFAULT_MIN_SCORE, min=0.0, max=100.0)
    quiet: float = _f(0.0, min=0.0)  # seconds after a match during which the rule stays silent
    webhook: str = _f("")  # http(s) URL that gets each match as a JSON POST


@dataclass
class LogConfig:
    level: str = _f("info", choices=LOG_LEVELS)


@dataclass
class Config:
    data_dir: Path = field(default_factory=_default_data_dir)
    models_dir: Path = field(default_factory=_default_models_dir)
    camera: CameraConfig = field(default_factory=CameraConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    web: WebConfig = field(default_factory=WebConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    log: LogConfig = field(default_factory=LogConfig)
    alerts: list[AlertRule] = field(default_factory=list)  # [[alerts]] tables
    path: Path | None = field(default=None, metadata={"internal": True})  # the file it came from

    def section_names(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if dataclasses.is_dataclass(f.default_factory)]


_TOP_PATHS = ("data_dir", "models_dir")


def _suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (known: {', '.join(known)})"


def _coerce(where: str, fld: dataclasses.Field, value: Any) -> Any:
    """Check one value against its field's type and limits; return it in the field's type."""
    kind = type(fld.default) if fld.default is not dataclasses.MISSING else str
    meta = fld.metadata
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
    elif kind in (int, float):
        # TOML gives ints and floats; bools are ints in Python and must not sneak through.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: must be a number, got {value!r}")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: must be a whole number, got {value!r}")
        value = kind(value)
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{where}: must be >= {meta['min']}, got {value!r}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{where}: must be <= {meta['max']}, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: must be a string, got {value!r}")
        if "choices" in meta:
            value = value.strip().lower()
            if value not in meta["choices"]:
                raise ConfigError(f"{where}: must be one of {', '.join(meta['choices'])}; got {value!r}")
    return value


def _apply(config: Config, data: Mapping[str, Any], origin: str) -> None:
    """Merge a nested mapping (as TOML gives it) into `config`, rejecting unknown keys and bad values."""
    sections = {f.name: f for f in dataclasses.fields(config) if f.name in config.section_names()}
    for key, value in data.items():
        if key in _TOP_PATHS:
            if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
                raise ConfigError(f"{origin}: {key}: must be a non-empty path string, got {value!r}")
            setattr(config, key, Path(os.path.expanduser(str(value))))
        elif key == "alerts":
            config.alerts = _alert_rules(value, origin)
        elif key in sections:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{origin}: [{key}] must be a table (a [{key}] section), got {value!r}")
            section = getattr(config, key)
            fields = {
                f.name: f for f in dataclasses.fields(section) if not f.metadata.get("env_only")
            }
            for k, v in value.items():
                if k not in fields:
                    raise ConfigError(f"{origin}: unknown key [{key}] {k}" + _suggest(k, sorted(fields)))
                setattr(section, k, _coerce(f"{origin}: [{key}] {k}", fields[k], v))
        else:
            raise ConfigError(f"{origin}: unknown key {key}" + _suggest(key, [*_TOP_PATHS, *sections, "alerts"]))


def _alert_rules(value: Any, origin: str) -> list[AlertRule]:
    """[[alerts]] tables -> rules, each checked on its own (the message names the rule's number)."""
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ConfigError(f"{origin}: alerts must be [[alerts]] tables, got {value!r}")
    fields = {f.name: f for f in dataclasses.fields(AlertRule)}
    rules: list[AlertRule] = []
    for i, table in enumerate(value, start=1):
        where = f"{origin}: [[alerts]] #{i}"
        rule = AlertRule()
        for k, v in table.items():
            if k not in fields:
                raise ConfigError(f"{where}: unknown key {k}" + _suggest(k, sorted(fields)))
            setattr(rule, k, _coerce(f"{where} {k}", fields[k], v))
        rule.name, rule.query, rule.phrase = rule.name.strip(), rule.query.strip(), rule.phrase.strip()
        if not ALERT_NAME.fullmatch(rule.name):
            raise ConfigError(f"{where} name: must be 1-64 letters, digits, spaces, - or _, got {rule.name!r}")
        if any(r.name.lower() == rule.name.lower() for r in rules):
            raise ConfigError(f"{where} name: {rule.name!r} is used by another rule")
        if bool(rule.query) == bool(rule.phrase):
            raise ConfigError(f"{where} ({rule.name}): set either query or phrase (one of them)")
        if len(rule.query) > 200 or len(rule.phrase) > 200:
            raise ConfigError(f"{where} ({rule.name}): the query or phrase is longer than 200 characters")
        if rule.phrase and "min_score" in table:
            raise ConfigError(f"{where} ({rule.name}) min_score: only applies to a query, not a phrase")
        url = urlsplit(rule.webhook)
        if rule.webhook and (url.scheme not in ("http", "https") or not url.hostname):
            raise ConfigError(f"{where} ({rule.name}) webhook: must be an http:// or https:// URL")
        rules.append(rule)
    return rules


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if env.get("EDGECAP_DATA_DIR"):
        out["data_dir"] = env["EDGECAP_DATA_DIR"]
    if env.get("EDGECAP_MODELS_DIR"):
        out["models_dir"] = env["EDGECAP_MODELS_DIR"]
    return out


def find_config_file(path: str | os.PathLike[str] | None, env: Mapping[str, str]) -> Path | None:
    """--config, else EDGECAP_CONFIG, else /etc/edgecap/config.toml if it exists, else none."""
    if path:
        return Path(path)
    if env.get("EDGECAP_CONFIG"):
        return Path(env["EDGECAP_CONFIG"])
    return SYSTEM_CONFIG if SYSTEM_CONFIG.is_file() else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config: defaults < TOML file < environment < `overrides` (the command-line flags).

    `overrides` has the TOML shape, e.g. {"data_dir": "...", "web": {"port": 9000}}; None values are
    ignored so argparse defaults can be passed straight through. Raises ConfigError with one message.
    """
    env = os.environ if env is None else env
    config = Config()
    file = find_config_file(path, env)
    if file is not None:
        try:
            with open(file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file {file} does not exist") from None
        except PermissionError:
            raise ConfigError(f"config file {file} is not readable (permission denied)") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {file} is a directory") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{file}: not valid TOML: {e}") from None
        _apply(config, data, str(file))
        config.path = file
    _apply(config, _env_overrides(env), "environment")
    if env.get(ENV_PASSWORD):  # the one place the web password is read from the environment
        config.web.password = env[ENV_PASSWORD]
    if env.get("EDGECAP_MQTT_PASSWORD"):
        config.mqtt.password = env["EDGECAP_MQTT_PASSWORD"]
    if overrides:
        _apply(config, _drop_none(overrides), "command line")
    _check(config, str(file) if file else "config")
    return config


def _drop_none(d: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            inner = _drop_none(v)
            if inner:
                out[k] = inner
        elif v is not None:
            out[k] = v
    return out


def _check(config: Config, origin: str) -> None:
    """Rules that involve more than one key."""
    cam = config.camera
    if cam.source == "stream" and not cam.url:
        raise ConfigError(f"{origin}: [camera] url: must be set when source = \"stream\"")
    if cam.source == "folder" and not cam.folder:
        raise ConfigError(f"{origin}: [camera] folder: must be set when source = \"folder\"")
    mqtt = config.mqtt
    if mqtt.enabled and not mqtt.host.strip():
        raise ConfigError(f"{origin}: [mqtt] host: must be set when enabled = true")
    if mqtt.ca_file and not mqtt.tls:
        raise ConfigError(f"{origin}: [mqtt] ca_file: needs tls = true")
    for key in ("topic_prefix", "discovery_prefix", "device_id"):
        value = getattr(mqtt, key)
        if any(c in value for c in "+#\0") or value.startswith("/") or value.endswith("/"):
            raise ConfigError(f"{origin}: [mqtt] {key}: must not contain + # or NUL or start/end with /")
    public = config.web.public_url
    if public and (urlsplit(public).scheme not in ("http", "https") or not urlsplit(public).hostname):
        raise ConfigError(f"{origin}: [web] public_url: must be an http:// or https:// URL, got {public!r}")


def to_toml(config: Config) -> str:
    """The effective configuration as TOML (for `edgecap doctor` and docs); never includes secrets."""
    lines = []
    for key in _TOP_PATHS:
        lines.append(f"{key} = {_toml_value(str(getattr(config, key)))}")
    for name in config.section_names():
        lines.append(f"\n[{name}]")
        section = getattr(config, name)
        for f in dataclasses.fields(section):
            if f.metadata.get("env_only"):
                continue
            value = getattr(section, f.name)
            if (f.name in ("password_hash", "secret_key") or f.metadata.get("secret")) and value:
                value = "<set>"
            lines.append(f"{f.name} = {_toml_value(value)}")
    for rule in config.alerts:
        lines.append("\n[[alerts]]")
        shown = {"name": rule.name, "query": rule.query, "phrase": rule.phrase,
                 "min_score": rule.min_score if rule.query else None, "quiet": rule.quiet or None,
                 "webhook": redact_url(rule.webhook)}
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in shown.items() if v not in ("", None))
    return "\n".join(lines) + "\n"


def redact_url(url: str) -> str:
    """scheme://host:port/... : a webhook's path often carries its secret (Home Assistant's id)."""
    if not url:
        return ""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}/..."


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'
