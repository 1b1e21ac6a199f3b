"""The README's quick start and its "Using it" block, run as written in a fresh `git clone` of this
repository's committed HEAD, in a fresh home folder: each command must do what its comment says.

What the test changes, and why:
- the port numbers (8080, 8081) become free ports, and ./run.sh gets its port from a config file
  (EDGECAP_CONFIG), so that parallel test runs on one machine do not collide;
- `.venv` is made before ./run.sh (the README says an existing one is used as it is): a virtual
  environment that sees this test's installed packages, with the clone installed in it by
  `pip install -e .`, so the test downloads nothing but pip's build backend;
- `./test.sh` (this very suite) and `sudo ./install.sh` (tests/test_install.py) are not run;
- the user's photos: ~/Pictures/holiday and ~/incoming hold copies of sample photos.
Every other line runs as written, each in bash with the block's `. .venv/bin/activate` before it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import site
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "device" / "samples"
pytestmark = [
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
    pytest.mark.skipif(not (ROOT / "models" / "captioner-int8" / "manifest.json").is_file(),
                       reason="models/captioner-int8 not built yet"),
]


def _section_block(readme: str, heading: str) -> list[str]:
    """The command lines of the first ```sh block under `heading`."""
    section = readme.split(heading, 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block, f"no sh block under {heading}"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Session:
    """A user's shell: a home folder, a clone, and the commands they type."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.repo = self.home / "edgecap"
        self.home.mkdir()
        subprocess.run(["git", "clone", "-q", str(ROOT), str(self.repo)], check=True)
        self.port = _free_port()
        config = tmp / "ports.toml"
        config.write_text(f"[web]\nport = {self.port}\n[model]\nnum_threads = 1\n")
        self.env = {"HOME": str(self.home), "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                    "LANG": "C.UTF-8", "EDGECAP_CONFIG": str(config),
                    "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        for key in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_CONFIG_FILE"):
            if key in os.environ:
                self.env[key] = os.environ[key]
        self.prefix = ""  # the block's `. .venv/bin/activate`, once typed

    def make_venv(self) -> None:
        base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
        venv = self.repo / ".venv"
        subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True)
        packages = next(venv.glob("lib/python*/site-packages"))
        (packages / "_test_packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")
        r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "-e", "."],
                           cwd=self.repo, env=self.env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]

    def command(self, line: str) -> str:
        return line.replace("8080", str(self.port)).replace("8081", str(self.port))

    def run(self, line: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        r = subprocess.run(["bash", "-ec", self.prefix + self.command(line)], cwd=self.repo, env=self.env,
                           input=stdin, capture_output=True, text=True, timeout=300)
        assert "Traceback" not in r.stderr, r.stderr
        return r

    def start(self, line: str) -> subprocess.Popen:
        return subprocess.Popen(["bash", "-ec", self.prefix + "exec " + self.command(line)], cwd=self.repo,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(self, path: str) -> object:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as resp:
            return json.load(resp)

    def serve_until(self, p: subprocess.Popen, done, timeout: float = 120) -> str:
        """Wait until `done(captures)` holds for the page's newest captures; then Ctrl-C. Returns stderr."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert p.poll() is None, p.communicate()[1]
                try:
                    items = self.get("/api/captures?limit=100")["items"]
                    if done(items):
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "the page never showed what was expected"
                time.sleep(0.3)
        finally:
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=60)
        assert p.returncode == 0 and "Traceback" not in err, err
        return err

    def count(self) -> int:
        db = self.home / ".local" / "share" / "edgecap" / "edgecap.db"  # the one default data folder
        with sqlite3.connect(db) as c:
            return c.execute("SELECT count(*) FROM captures").fetchone()[0]


def test_quick_start_and_usage_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    user = Session(tmp_path)
    user.make_venv()
    holiday = user.home / "Pictures" / "holiday"
    holiday.mkdir(parents=True)
    for name in ("fox_in_snow.jpg", "dog_and_cats.jpg", "coffee_cup.jpg"):
        shutil.copy(SAMPLES / name, holiday / f"holiday-{name}")
    (user.home / "incoming").mkdir()

    handled = []
    for line in _section_block(readme, "## Quick start") + _section_block(readme, "## Using it"):
        words = line.split("#", 1)[0].split()
        if line.startswith("./run.sh"):
            # no camera here: it captions the 9 sample photos and serves them on the page
            p = user.start(line)
            err = user.serve_until(p, lambda items: len(items) >= 9)
            assert "'. .venv/bin/activate' puts it on PATH" in err
            assert user.count() == 9
        elif line.startswith(("./test.sh", "sudo ./install.sh")):
            continue
        elif line.startswith(". .venv/bin/activate"):
            user.prefix = line.split("#", 1)[0].strip() + "\n"
            assert user.run("command -v edgecap").stdout.strip() == str(user.repo / ".venv" / "bin" / "edgecap")
        elif words[:2] == ["edgecap", "caption"]:
            r = user.run(line)
            assert r.returncode == 0, r.stderr
            (row,) = [json.loads(x) for x in r.stdout.splitlines()]
            assert row["caption"] and 0 < row["confidence"] <= 1 and row["image"] == words[-1]
        elif words[:2] == ["edgecap", "ingest"]:
            r = user.run(line)
            assert r.returncode == 0, r.stderr
            assert user.count() == 12 and "3 stored" in r.stderr
        elif words[:2] == ["edgecap", "search"]:
            r = user.run(line)
            assert r.returncode == 0, r.stderr
            hits = r.stdout.splitlines()
            assert hits and all(h.startswith("#") for h in hits), (line, r.stdout, r.stderr)
            if "-k" in words:
                assert len(hits) <= int(words[words.index("-k") + 1])
        elif words[:2] == ["edgecap", "export"]:
            r = user.run(line)
            assert r.returncode == 0, r.stderr
            out = user.repo / words[words.index("-o") + 1]
            with zipfile.ZipFile(out) as z:
                listed = json.loads(z.read("captures.json"))
                assert listed and {f"images/{c['id']}.jpg" for c in listed} <= set(z.namelist())
        elif words[:2] == ["edgecap", "delete"]:
            before = user.count()
            r = user.run(line)
            assert r.returncode == 0, r.stderr
            assert user.count() == before - len(words[2:])
        elif words[:2] == ["edgecap", "run"]:
            shutil.copy(SAMPLES / "cat_in_box.jpg", user.home / "incoming" / "cat.jpg")
            p = user.start(line)
            user.serve_until(p, lambda items: any(i["source"] == "folder" for i in items))
        elif words[:2] == ["edgecap", "serve"]:
            p = user.start(line)
            # what `ingest` stored is on the page: one data folder for every command
            user.serve_until(p, lambda items: sum(i["source"] == "ingest" for i in items) == 3)
        elif words[:2] == ["edgecap", "doctor"]:
            r = user.run(line)
            assert r.returncode == 0, r.stdout
            assert str(user.home / ".local" / "share" / "edgecap") in r.stdout and "{" not in r.stdout
        elif words[:2] == ["edgecap", "repair"]:
            before = user.count()
            r = user.run(line)
            # a healthy store: nothing to move aside, every image has its row
            assert r.returncode == 0 and "0 rows copied back, 0 images captioned again" in r.stdout, r.stderr
            assert user.count() == before
        elif words[:2] == ["edgecap", "hash-password"]:
            r = user.run(line, stdin="a long enough password\n")
            assert r.returncode == 0 and r.stdout.startswith(("scrypt:", "pbkdf2:")), r.stderr
        else:
            pytest.fail(f"the README has a command this test does not check: {line}")
        handled.append(words[:2])
    assert ["./run.sh"] in handled and ["edgecap", "serve"] in handled and len(handled) >= 12
