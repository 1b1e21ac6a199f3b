"""The `edgecap` command, run as a real process (`python -m device`)."""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
SAMPLES = ROOT / "device" / "samples"
needs_models = pytest.mark.skipif(
    not (MODELS / "captioner-int8" / "manifest.json").is_file(), reason="models/captioner-int8 not built yet"
)


def edgecap(tmp_path: Path, *args: str, stdin: str | None = None, env_extra: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
    cfg = tmp_path / "test.toml"
    if not cfg.exists():
        cfg.write_text('[model]\nnum_threads = 1\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECAP_MODELS_DIR": str(MODELS),
           "EDGECAP_CONFIG": str(cfg), **(env_extra or {})}
    env.pop("EDGECAP_PASSWORD", None)
    env.pop("EDGECAP_DATA_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "device", "--data-dir", str(tmp_path / "data"), *args],
        cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_help_and_usage(tmp_path: Path) -> None:
    r = edgecap(tmp_path, "--help")
    assert r.returncode == 0
    for cmd in ("run", "caption", "ingest", "search", "doctor", "serve", "hash-password", "repair"):
        assert cmd in r.stdout
    r = edgecap(tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr
    # every model set the help and install.sh name exists (issue 14: they said captioner-int4)
    named = set(re.findall(r"captioner-[a-z0-9]+", edgecap(tmp_path, "caption", "--help").stdout))
    named |= set(re.findall(r"captioner-[a-z0-9]+", (ROOT / "install.sh").read_text()))
    assert named and all((MODELS / n / "manifest.json").is_file() for n in named), named


def test_config_error_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[web]\nport = 'eighty'\n")
    r = edgecap(tmp_path, "--config", str(bad), "doctor")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "[web] port" in r.stderr and "Traceback" not in r.stderr


def test_hash_password_from_stdin(tmp_path: Path) -> None:
    from werkzeug.security import check_password_hash

    r = edgecap(tmp_path, "hash-password", stdin="correct horse\n")
    assert r.returncode == 0, r.stderr
    hashed = r.stdout.strip()
    assert check_password_hash(hashed, "correct horse") and not check_password_hash(hashed, "wrong")
    assert "password_hash" in r.stderr
    r = edgecap(tmp_path, "hash-password", stdin="\n")
    assert r.returncode == 1 and "empty" in r.stderr and "Traceback" not in r.stderr
    r = edgecap(tmp_path, "hash-password", stdin="a\n")  # issue 14: a 1-character password was accepted
    assert r.returncode == 1 and "at least 8 characters" in r.stderr and not r.stdout


def test_doctor_reports_each_part(tmp_path: Path) -> None:
    r = edgecap(tmp_path, "doctor", env_extra={"EDGECAP_PASSWORD": "long enough"})
    lines = r.stdout.splitlines()
    for part in ("config", "runtime", "captioner", "embedder", "camera", "store", "disk", "web"):
        assert any(line.split()[1:2] == [part] for line in lines if line.split()), (part, r.stdout)
    assert "{" not in r.stdout  # issue 14: the quantization was printed as a Python dict
    from device.runtime import runtime_module
    used = runtime_module()[1]  # doctor names the runtime the device will use, not another one
    assert any(line.split()[1:3] == ["runtime", used] for line in lines), r.stdout
    assert "Traceback" not in r.stderr
    # a missing model set is a failure with a hint
    r = edgecap(tmp_path, "--models-dir", str(tmp_path), "doctor")
    assert r.returncode == 1
    assert "FAIL  captioner" in r.stdout and "->" in r.stdout


def test_missing_models_and_paths_are_one_line_errors(tmp_path: Path) -> None:
    r = edgecap(tmp_path, "--models-dir", str(tmp_path / "nowhere"), "caption", str(SAMPLES / "cat_chelsea.jpg"))
    assert r.returncode == 1 and "captioner model set 'captioner-int8' not found" in r.stderr
    assert "Traceback" not in r.stderr
    r = edgecap(tmp_path, "ingest", str(tmp_path / "no-such-folder"))
    assert r.returncode == 1 and "no such file or folder" in r.stderr and "Traceback" not in r.stderr


@needs_models
def test_caption_json_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not really")
    imgs = [str(SAMPLES / "cat_chelsea.jpg"), str(bad), str(SAMPLES / "fox_in_snow.jpg")]
    r = edgecap(tmp_path, "caption", "--json", *imgs)
    assert r.returncode == 1  # one file was bad; the others were captioned
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["image"] for row in rows] == [imgs[0], imgs[2]]
    for row in rows:
        assert row["caption"] and isinstance(row["score"], float) and row["beams"]
    assert [row["tags"][0]["word"] for row in rows] == ["cat", "fox"]
    assert "bad.jpg" in r.stderr and "Traceback" not in r.stderr
    r = edgecap(tmp_path, "caption", "--beam", "1", str(SAMPLES / "cat_chelsea.jpg"))
    assert r.returncode == 0 and r.stdout.count("\t") == 3 and "\t[cat 0." in r.stdout


@needs_models
def test_ingest_then_search(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    names = sorted(p.name for p in SAMPLES.glob("*.jpg"))
    for i, name in enumerate(names):
        (photos / ("sub" if i % 2 else "") / name).write_bytes((SAMPLES / name).read_bytes())
    (photos / "zero.jpg").write_bytes(b"")
    (photos / "trunc.jpg").write_bytes((SAMPLES / names[0]).read_bytes()[:300])
    (photos / "readme.txt").write_text("not a photo")

    r = edgecap(tmp_path, "ingest", "--json", str(photos))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 9 and len({row["id"] for row in rows}) == 9
    assert "zero.jpg" in r.stderr and "trunc.jpg" in r.stderr and "Traceback" not in r.stderr
    with sqlite3.connect(tmp_path / "data" / "edgecap.db") as c:
        assert c.execute("SELECT count(*) FROM captures").fetchone()[0] == 9

    again = edgecap(tmp_path, "ingest", "--json", str(photos))
    assert again.returncode == 0 and again.stdout == ""  # all already stored
    assert "9 already stored" in again.stderr

    cat = next(row for row in rows if row["original_path"].endswith("cat_chelsea.jpg"))
    word = cat["caption"].split()[1]  # e.g. "a cat ..." -> "cat"
    r = edgecap(tmp_path, "search", "--json", word)
    assert r.returncode == 0, r.stderr
    hits = [json.loads(line) for line in r.stdout.splitlines()]
    assert hits and any(h["id"] == cat["id"] for h in hits)
    assert all(word in h["caption"] or h.get("rank_score") is not None for h in hits)


def test_serve_without_auth_listens_on_localhost(tmp_path: Path) -> None:
    import signal
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = tmp_path / "test.toml"
    cfg.write_text('[model]\nnum_threads = 1\n')
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECAP_MODELS_DIR": str(MODELS), "EDGECAP_CONFIG": str(cfg)}
    env.pop("EDGECAP_PASSWORD", None)
    p = subprocess.Popen([sys.executable, "-m", "device", "--data-dir", str(tmp_path / "data"), "serve",
                          "--no-auth", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        body = None
        while time.monotonic() < deadline and body is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
                    body = json.load(resp)
            except OSError:
                assert p.poll() is None, p.communicate()[1]
                time.sleep(0.2)
        assert body and body["status"] == "ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/captures", timeout=5) as resp:
            assert json.load(resp)["items"] == []  # no password needed, empty store
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert "Traceback" not in err
