"""What `edgecap doctor` says and what `edgecap run` does agree, for faults a device meets: a data folder
on a read-only file system, damaged model sets. Real processes, real files."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli import MODELS, ROOT, edgecap, needs_models
from tests.webfixtures import fill_store


def unshare_works() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="needs unshare (user + mount namespaces) for a read-only mount")
def test_a_read_only_data_folder_is_reported_as_such(tmp_path: Path) -> None:
    data = tmp_path / "data"
    fill_store(data).close()
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\nnum_threads = 1\n")
    # A read-only bind mount over the folder, in a private mount namespace: even root cannot write.
    script = (
        f'mount --bind "{data}" "{data}" && mount -o remount,bind,ro "{data}" && '
        f'for cmd in doctor "search dog" repair; do "{sys.executable}" -m device --config "{cfg}" '
        f'--data-dir "{data}" $cmd; echo "rc=$?"; done'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "EDGECAP_MODELS_DIR": str(MODELS)}
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env, capture_output=True, text=True,
                       timeout=120, check=False)
    out = r.stdout + r.stderr
    assert out.count("read-only file system") >= 3, out
    assert "FAIL  store" in r.stdout
    assert [ln for ln in r.stdout.splitlines() if ln.startswith("rc=")] == ["rc=1"] * 3
    for wrong in ("unable to open database file", "move the file aside", "Traceback"):
        assert wrong not in out, out
    with sqlite3.connect(data / "edgecap.db") as c:  # nothing was touched
        assert c.execute("SELECT count(*) FROM captures").fetchone()[0] == 7


def damaged_models(tmp_path: Path) -> Path:
    """A models folder whose embedder, image projection and object tags fail their sha256 check."""
    models = tmp_path / "models"
    models.mkdir()
    for name in ("captioner-int8", "minilm-int8", "image-projection", "imagenet-tags"):
        if name == "captioner-int8":
            (models / name).symlink_to(MODELS / name)
            continue
        shutil.copytree(MODELS / name, models / name)
        victim = max((p for p in (models / name).iterdir() if p.name != "manifest.json"),
                     key=lambda p: p.stat().st_size)
        with open(victim, "r+b") as f:
            f.seek(victim.stat().st_size // 2)
            f.write(b"\x00damaged\x00")
    return models


@needs_models
def test_damaged_optional_sets_warn_and_capturing_goes_on(tmp_path: Path) -> None:
    models = str(damaged_models(tmp_path))
    r = edgecap(tmp_path, "--models-dir", models, "doctor", env_extra={"EDGECAP_PASSWORD": "x"})
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if len(ln.split()) > 1 and ln[:4] in ("ok  ", "warn", "FAIL")}
    assert lines["embedder"].startswith("warn") and lines["projection"].startswith("warn"), r.stdout
    assert lines["tags"].startswith("warn"), r.stdout
    assert lines["captioner"].startswith("ok")
    r = edgecap(tmp_path, "--models-dir", models, "run", "--no-web", "--source", "samples", "--max-captures", "2")
    assert r.returncode == 0, r.stderr
    assert "cannot load embedder" in r.stderr and "cannot load the image projection" in r.stderr
    assert "object tags are off" in r.stderr
    with sqlite3.connect(tmp_path / "data" / "edgecap.db") as c:
        assert c.execute("SELECT count(*) FROM captures").fetchone()[0] == 2
    r = edgecap(tmp_path, "--models-dir", models, "search", "cat")
    assert r.returncode == 0 and "keyword" in r.stderr.lower()
