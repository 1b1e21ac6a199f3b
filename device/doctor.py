"""`edgecap doctor`: what works, what doesn't, and what to do about it. Reads only; changes nothing."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import logging
import platform
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import TextIO

from device.config import Config, to_toml
from device.runtime import RUNTIMES

log = logging.getLogger(__name__)

OK, WARN, FAIL = "ok", "warn", "FAIL"


class Report:
    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.failed = False

    def line(self, status: str, what: str, detail: str, fix: str = "") -> None:
        if status == FAIL:
            self.failed = True
        self.out.write(f"{status:<5} {what:<10} {detail}\n")
        if fix:
            self.out.write(f"{'':<5} {'':<10} -> {fix}\n")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_runtime(r: Report) -> None:
    r.line(OK, "python", f"{platform.python_version()} on {platform.machine()} ({platform.system()})")
    # the order device/runtime.py tries; find_spec does not import (TensorFlow takes seconds)
    for module, dist in RUNTIMES:
        if importlib.util.find_spec(module.split(".")[0]) is not None:
            r.line(OK, "runtime", f"{dist} {_version(dist) or ''}".strip())
            return
    r.line(FAIL, "runtime", "no TFLite runtime installed",
           "pip install ai-edge-litert (or tflite-runtime on 32-bit Raspberry Pi OS)")


def check_models(r: Report, config: Config) -> None:
    models_dir = config.models_dir
    if not models_dir.is_dir():
        r.line(FAIL, "models", f"{models_dir} does not exist",
               "set models_dir or EDGECAP_MODELS_DIR to the folder holding captioner-int8/")
        return
    try:
        from device.modelset import ModelSet, available_sets, set_path
    except ImportError as e:
        r.line(FAIL, "models", f"device.modelset cannot be imported ({e})", "reinstall edgecap")
        return
    for role, name in (("captioner", config.model.captioner), ("embedder", config.model.embedder)):
        if role == "embedder" and (name == "none" or name.startswith("sentence-transformers")):
            r.line(OK if name != "none" else WARN, role, f"{name}",
                   "" if name != "none" else "search is keyword-only; set [model] embedder = \"minilm-int8\"")
            continue
        try:
            ms = ModelSet.load(set_path(models_dir, name))
        except Exception as e:  # noqa: BLE001 - any problem with a set is reported, not raised
            others = available_sets(models_dir)
            status = FAIL if role == "captioner" else WARN
            r.line(status, role, f"{name}: {e}",
                   f"available sets: {', '.join(others) or 'none'}; set [model] {role}")
            continue
        manifest = getattr(ms, "manifest", {}) or {}
        size = sum(int(v) for v in (manifest.get("sizes") or {}).values())
        q = _quantization(manifest.get("quantization", ""))
        r.line(OK, role, f"{name} ({q}, {size / 1e6:.1f} MB, sha256 verified)")
    check_projection(r, models_dir)
    check_tags(r, models_dir)


def check_tags(r: Report, models_dir: Path) -> None:
    """Object tags are optional too; a broken set is a warning, as `edgecap run` goes on without tags."""
    from device.tagger import DEFAULT_SET, load_tagger

    try:
        tagger = load_tagger(models_dir)
    except Exception as e:  # noqa: BLE001 - any problem with the set is reported, not raised
        r.line(WARN, "tags", f"{DEFAULT_SET}: {e}", "reinstall the model set; until then captures get no tags")
        return
    if tagger is None:
        r.line(WARN, "tags", f"no {DEFAULT_SET} set: captures get no object tags")
    else:
        r.line(OK, "tags", f"{DEFAULT_SET} ({len(tagger.words)} words, sha256 verified)")


def check_projection(r: Report, models_dir: Path) -> None:
    """The image projection is optional; a broken one is a warning, as `edgecap run` goes on without it."""
    from device.image_projection import DEFAULT_SET, load_image_projection

    try:
        projection = load_image_projection(models_dir)
    except Exception as e:  # noqa: BLE001 - any problem with the set is reported, not raised
        r.line(WARN, "projection", f"{DEFAULT_SET}: {e}",
               "reinstall the model set; until then typed searches do not match new captures' images")
        return
    if projection is None:
        r.line(WARN, "projection", f"no {DEFAULT_SET} set: typed searches use captions only")
    else:
        r.line(OK, "projection", f"{DEFAULT_SET} (sha256 verified)")


def _quantization(q: object) -> str:
    """A manifest's quantization (a phrase, or one per file) in a few words: "encoder full-integer
    int8, init int8 weights"; the details after a comma or parenthesis stay in the manifest."""
    def short(text: object) -> str:
        return str(text).split(" (")[0].split(",")[0].strip()

    if isinstance(q, dict):
        return ", ".join(f"{role} {short(v)}" for role, v in q.items())
    return short(q)


def check_camera(r: Report, config: Config) -> None:
    from device.sources import SourceError, detect_source, open_source

    kind = config.camera.source
    if kind == "auto":
        kind, device, why = detect_source(config)
        config = dataclasses.replace(config, camera=dataclasses.replace(config.camera, source=kind, device=device))
        if kind == "samples":
            r.line(WARN, "camera", f"none found, would use the sample photos ({why})",
                   "connect a camera, or set [camera] source (folder, stream, ...) in the config")
            return
        r.line(OK, "camera", f"auto: {kind} ({why})")
    try:
        src = open_source(config)
        try:
            frame = src.read()
        finally:
            src.close()
    except SourceError as e:
        r.line(FAIL, "camera", str(e), "check the cable/URL/folder and [camera] in the config")
        return
    got = f"a {frame.image.width}x{frame.image.height} frame" if frame else "no frame yet"
    r.line(OK, "camera", f"{src.describe()}: {got}")


REPAIR = ("stop edgecap (sudo systemctl stop edgecap) and run `edgecap repair`: it keeps the damaged file "
          "and rebuilds the rows from it and from the stored images")


def check_store(r: Report, config: Config) -> None:
    import os

    from device.files import not_writable
    from device.repair import database_problem

    db = config.data_dir / "edgecap.db"
    if not db.exists():
        parent = next((p for p in [config.data_dir, *config.data_dir.parents] if p.exists()), None)
        if parent is not None and os.access(parent, os.W_OK):
            r.line(OK, "store", f"no database yet in {config.data_dir} (created on first run)")
        else:
            r.line(FAIL, "store", f"{config.data_dir} does not exist and cannot be created",
                   "set data_dir / --data-dir to a writable folder")
        return
    if why := not_writable(config.data_dir):
        problem, _, fix = why.partition(": ")
        r.line(FAIL, "store", problem, fix)
        return
    problem = database_problem(db)
    if problem is not None:
        r.line(FAIL, "store", f"{db}: {problem}", REPAIR)
        return
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        count = conn.execute("SELECT count(*) FROM captures").fetchone()[0]
        named = {row[0].rsplit("/", 1)[-1] for row in conn.execute("SELECT image FROM captures")}
    finally:
        conn.close()
    images = config.data_dir / "images"
    files = {p.name for p in images.glob("*/*.jpg")} if images.is_dir() else set()
    from device.upkeep import too_many_to_delete

    orphans = len(files - named)
    if too_many_to_delete(orphans, count):
        r.line(WARN, "store", f"{count} captures in {db}, but {orphans} stored images have no row (the "
               "database was replaced, emptied or lost rows)", REPAIR)
    else:
        r.line(OK, "store", f"{count} captures in {db}")


def check_disk(r: Report, config: Config) -> None:
    where = next((p for p in [config.data_dir, *config.data_dir.parents] if p.exists()), Path("/"))
    du = shutil.disk_usage(where)
    need = config.store.min_free_mb * 1024 * 1024
    detail = f"{du.free / 2**30:.1f} GB free of {du.total / 2**30:.1f} GB at {where}"
    if du.free < need:
        r.line(WARN, "disk", detail + f" (below min_free_mb = {config.store.min_free_mb:g})",
               "free space or lower [store] min_free_mb; the oldest captures are being deleted")
    else:
        r.line(OK, "disk", detail)


def check_web(r: Report, config: Config) -> None:
    w = config.web
    if not w.auth:
        r.line(WARN, "web", "authentication is off", "set [web] auth = true and a password_hash on a shared LAN")
    elif not (w.password_hash or w.password):
        fix = "run `edgecap hash-password` and put the hash in [web] password_hash (or set EDGECAP_PASSWORD)"
        if w.host:
            r.line(FAIL, "web", f"no password configured: the page will not start on {w.host}", fix)
        else:
            r.line(WARN, "web", "no password configured: the page is served on 127.0.0.1 only", fix)
    else:
        r.line(OK, "web", f"port {w.port}, password set")


def check_mqtt(r: Report, config: Config) -> None:
    """With [mqtt] enabled: log in to the broker once, as the service would."""
    m = config.mqtt
    if not m.enabled:
        if config.alerts:
            r.line(OK, "alerts", f"{len(config.alerts)} rule(s); MQTT is off (webhooks and the page only)")
        return
    from device.events import EventsError, device_id
    from device.mqtt import broker_port, probe

    where = f"{m.host}:{broker_port(m)}{' (TLS)' if m.tls else ''}"
    try:
        problem = probe(m, device_id(config))
    except EventsError as e:
        problem = str(e)
    if problem:
        r.line(FAIL, "mqtt", problem, "check [mqtt] host, port, username, password / tls, ca_file "
               "(docs/homeassistant.md)")
    else:
        r.line(OK, "mqtt", f"logged in to {where} as {m.username or 'anonymous'}; topics "
               f"{m.topic_prefix}/{device_id(config)}/..., {len(config.alerts)} alert rule(s)")


def doctor(config: Config, out: TextIO = sys.stdout) -> bool:
    """Print one line per check; True when nothing failed."""
    r = Report(out)
    where = str(config.path) if config.path else "none (defaults)"
    r.line(OK, "config", f"file: {where}; data_dir {config.data_dir}; models_dir {config.models_dir}")
    for check in (check_runtime, check_models, check_camera, check_store, check_disk, check_web, check_mqtt):
        try:
            check(r, config) if check is not check_runtime else check(r)
        except Exception as e:  # noqa: BLE001 - a broken check must not hide the others
            r.line(FAIL, check.__name__.removeprefix("check_"), f"check crashed: {e}")
    if log.isEnabledFor(logging.DEBUG):
        out.write("\n# effective configuration\n" + to_toml(config))
    return not r.failed
