"""`edgecap` as a new user meets it (real processes, real models): JSON like the API's, the same
result limits, export and delete, `serve` and `run` starting the page the same way, a port in use,
progress off a terminal, and no runtime banner."""
from __future__ import annotations

import csv
import io
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
from test_cli import MODELS, ROOT, SAMPLES, edgecap, needs_models

from device.progress import Progress


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> Path:
    """A data folder (tmp/data, what edgecap() uses) with the nine sample photos ingested."""
    tmp = tmp_path_factory.mktemp("cli")
    r = edgecap(tmp, "ingest", str(SAMPLES))
    assert r.returncode == 0, r.stderr
    return tmp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@needs_models
def test_ingest_prints_progress_off_a_terminal_and_no_banner(ingested: Path) -> None:
    r = edgecap(ingested, "ingest", str(SAMPLES))  # stderr is a pipe here
    assert r.returncode == 0
    assert "ingest: 9/9 images (100%)" in r.stderr  # the closing progress line (all already stored)
    r = edgecap(ingested, "caption", str(SAMPLES / "cat_chelsea.jpg"))
    assert r.returncode == 0 and "XNNPACK" not in r.stderr and "confidence" in r.stdout


def test_progress_lines_every_interval_when_not_a_terminal() -> None:
    out, now = io.StringIO(), [100.0]
    p = Progress(50, stream=out, tty=False, every_s=10.0, clock=lambda: now[0])
    for _ in range(50):
        now[0] += 0.5  # 2 images a second: a line at 10 s and at 20 s, then the closing one
        p.update()
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == ["ingest: 20/50 images (40%), 2.0/s, about 15 s left",
                     "ingest: 40/50 images (80%), 2.0/s, about 5 s left",
                     "ingest: 50/50 images (100%), 2.0/s"]


@needs_models
def test_search_json_is_the_apis(ingested: Path) -> None:
    from webfixtures import web_config

    from device.embedder import load_embedder
    from device.pipeline import open_store
    from device.web import create_app

    r = edgecap(ingested, "search", "--json", "dog")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows
    store = open_store(ingested / "data", MODELS)
    try:
        embedder = load_embedder(MODELS, "minilm-int8", num_threads=1)
        client = create_app(web_config(ingested / "data", auth=False), store, None, embedder).test_client()
        api = {c["id"]: c for c in client.get("/api/search?q=dog").get_json()["items"]}
    finally:
        store.close()
    for row in rows:
        image_path = row.pop("image_path")
        assert Path(image_path).is_file()
        assert row == api[row["id"]]
    assert [row["id"] for row in rows] == list(api)[: len(rows)]  # the same ranking


@needs_models
def test_k_has_the_apis_limits(ingested: Path) -> None:
    for k in ("0", "101"):
        r = edgecap(ingested, "search", "-k", k, "dog")
        assert r.returncode == 1 and "-k must be between 1 and 100" in r.stderr and not r.stdout
    assert edgecap(ingested, "search", "-k", "100", "dog").returncode == 0
    r = edgecap(ingested, "search", "--json", "-k", "2", "a")  # stop-words only: at most k, never more
    assert r.returncode == 0 and len(r.stdout.splitlines()) <= 2


@needs_models
def test_search_says_so_when_nothing_matches(ingested: Path) -> None:
    r = edgecap(ingested, "search", "zzqx blorf")
    assert r.returncode == 0 and r.stdout == ""
    assert "nothing matches; 9 captures in" in r.stderr


@needs_models
def test_export_and_delete(ingested: Path, tmp_path: Path) -> None:
    r = edgecap(ingested, "export", "-o", str(tmp_path / "all.csv"))
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((tmp_path / "all.csv").open(encoding="utf-8")))
    assert len(rows) == 9 and "wrote 9 captures" in r.stderr
    r = edgecap(ingested, "export", "--format", "json", "--source", "ingest", "-k", "3")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 3
    r = edgecap(ingested, "export", "--format", "json", "-k", "500")  # the API's export limit, not search's
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 9
    assert "between 1 and 10000" in edgecap(ingested, "export", "-k", "10001").stderr
    r = edgecap(ingested, "export", "dog", "-o", str(tmp_path / "dogs.zip"))
    assert r.returncode == 0, r.stderr
    with zipfile.ZipFile(tmp_path / "dogs.zip") as z:
        listed = json.loads(z.read("captures.json"))
        assert listed and {f"images/{c['id']}.jpg" for c in listed} <= set(z.namelist())
    for bad, message in ((["export", "-o", str(tmp_path / "x.xls")], "cannot tell the format"),
                         (["export", "--format", "zip"], "a zip needs a file"),
                         (["export", "--since", "yesterday"], "--since must be an ISO date")):
        r = edgecap(ingested, *bad)
        assert r.returncode == 1 and message in r.stderr and "Traceback" not in r.stderr, r.stderr

    victim = int(rows[0]["id"])
    r = edgecap(ingested, "delete", str(victim), "999999")
    assert r.returncode == 1 and "deleted 1 of 2 captures" in r.stderr  # one did not exist
    r = edgecap(ingested, "export", "--format", "json")
    assert victim not in [c["id"] for c in json.loads(r.stdout)]
    assert len(json.loads(r.stdout)) == 8


def _start(tmp_path: Path, *args: str) -> subprocess.Popen:
    cfg = tmp_path / "test.toml"
    if not cfg.exists():
        cfg.write_text('[model]\nnum_threads = 1\n')
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "EDGECAP_MODELS_DIR": str(MODELS),
           "EDGECAP_CONFIG": str(cfg), "HOME": str(tmp_path)}
    return subprocess.Popen([sys.executable, "-m", "device", "--data-dir", str(tmp_path / "data"), *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_page(p: subprocess.Popen, port: int) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=5) as resp:
                return json.load(resp)
        except OSError:
            assert p.poll() is None, p.communicate()[1]
            time.sleep(0.2)
    raise AssertionError("the page did not answer")


@needs_models
@pytest.mark.parametrize("command", ["serve", "run"])
def test_serve_and_run_start_the_page_the_same_way(tmp_path: Path, command: str) -> None:
    # issue 14: `serve` refused to start without a password while `run` served on 127.0.0.1
    port = _free_port()
    extra = ["--source", "samples", "--max-captures", "100"] if command == "run" else []
    p = _start(tmp_path, command, "--port", str(port), *extra)
    try:
        stats = _wait_for_page(p, port)  # no password asked: this machine only
        assert "count" in stats
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert "serving the page on 127.0.0.1 only" in err and f"http://127.0.0.1:{port}/" in err
    # asked for the network without a password: both refuse, saying what to do
    p = _start(tmp_path, command, "--host", "127.0.0.1", "--port", str(port), *extra)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "no web password is set" in err and "Traceback" not in err


@needs_models
def test_port_in_use_says_what_to_do(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        p = _start(tmp_path, "serve", "--port", str(port))
        _, err = p.communicate(timeout=60)
    assert p.returncode == 1 and "Traceback" not in err
    assert f"port {port} on 127.0.0.1 is already in use" in err and f"--port {port + 1}" in err


@needs_models
def test_run_watches_a_folder_given_on_the_command_line(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "fox.jpg").write_bytes((SAMPLES / "fox_in_snow.jpg").read_bytes())
    p = _start(tmp_path, "run", "--folder", str(incoming), "--no-web", "--max-captures", "1")
    _, err = p.communicate(timeout=90)
    assert p.returncode == 0, err
    r = edgecap(tmp_path, "export", "--format", "json")
    (row,) = json.loads(r.stdout)
    assert row["source"] == "folder" and row["original_path"].endswith("fox.jpg")
