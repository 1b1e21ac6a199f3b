"""install.sh end to end, the way a new user runs it on a Debian machine without a running systemd
(a CI container): into a temporary --prefix, with a real pip install, a real background `edgecap run`
serving HTTP on a socket, a photo dropped into the watched folder, a second run that must change
nothing, and --uninstall / --uninstall --purge.

Needs root (it creates the `edgecap` system user, as `sudo ./install.sh` does), PyPI or a mirror
reachable for pip, and the model sets in models/. Takes about a minute, most of it pip.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "install.sh"
PHOTO = REPO / "device" / "samples" / "cat_in_box.jpg"
INSTALL_TIMEOUT_S = 900  # pip on a cold cache; a warm one takes well under a minute
CAPTION_TIMEOUT_S = 180

# The end-to-end tests only; the unit and lint checks below run anywhere.
needs_install_env = [
    pytest.mark.skipif(os.geteuid() != 0, reason="install.sh installs a system service: needs root"),
    pytest.mark.skipif(Path("/run/systemd/system").is_dir(),
                       reason="systemd is running here: the test would install a real system service"),
    pytest.mark.skipif(Path("/etc/edgecap").exists() or Path("/etc/systemd/system/edgecap.service").exists(),
                       reason="edgecap is installed on this machine; the test would remove its user"),
    pytest.mark.skipif(not (REPO / "models" / "captioner-int8" / "manifest.json").is_file(),
                       reason="models/captioner-int8 is not there yet"),
]


def e2e(fn):
    for mark in needs_install_env:
        fn = mark(fn)
    return fn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot_checkout(dest: Path) -> Path:
    """What a fresh clone holds for install.sh, copied once: the checkout may change while the test runs
    (an edit in device/ between the two installs would rightly make the second one reinstall)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*-float*")
    for name in ("install.sh", "pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, dest / name)
    for name in ("device", "systemd", "models"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    return dest / "install.sh"


def run_install(*args: str, check: bool = True, script: Path = INSTALL) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, EDGECAP_WAIT="240")
    proc = subprocess.run(["bash", str(script), *args], capture_output=True, text=True, env=env,
                          timeout=INSTALL_TIMEOUT_S, cwd=script.parent)
    if check and proc.returncode != 0:
        pytest.fail(f"install.sh {' '.join(args)} failed ({proc.returncode}):\n"
                    f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def http(port: int, path: str, password: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if password is not None:
        token = base64.b64encode(f"edgecap:{password}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def tree(root: Path, skip: tuple[str, ...]) -> dict[str, tuple]:
    """Every path under root with what a change would touch: type, mode, owner, size, mtime, content."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel.split("/")[0] in skip or "__pycache__" in rel:
            continue
        st = p.lstat()
        out[rel] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_size,
                    st.st_mtime_ns, os.readlink(p) if p.is_symlink() else None)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def installed():
    # Under /tmp with 0755 (pytest's tmp_path is 0700): the edgecap user must reach the venv and photos.
    prefix = Path(tempfile.mkdtemp(prefix="edgecap-install-", dir="/tmp"))
    incoming = Path(tempfile.mkdtemp(prefix="edgecap-incoming-", dir="/tmp"))
    prefix.chmod(0o755)
    incoming.chmod(0o755)
    checkout = Path(tempfile.mkdtemp(prefix="edgecap-clone-", dir="/tmp"))
    port = free_port()
    user_existed = subprocess.run(["getent", "passwd", "edgecap"], capture_output=True).returncode == 0
    script = snapshot_checkout(checkout)
    info = {"prefix": prefix, "incoming": incoming, "port": port, "user_existed": user_existed,
            "script": script}
    try:
        first = run_install("--prefix", str(prefix), "--port", str(port), "--camera", f"folder:{incoming}",
                            script=script)
        info["first"] = first
        m = re.search(r"Web login password: (\S+)", first.stdout)
        assert m, f"no password printed:\n{first.stdout}"
        info["password"] = m.group(1)
        yield info
    finally:
        run_install("--uninstall", "--purge", "--prefix", str(prefix), check=False, script=script)
        shutil.rmtree(prefix, ignore_errors=True)
        shutil.rmtree(checkout, ignore_errors=True)
        shutil.rmtree(incoming, ignore_errors=True)


@e2e
def test_says_what_it_found_and_how_to_stop(installed):
    out = installed["first"].stdout
    assert "Found: Debian GNU/Linux" in out
    assert "64-bit userland" in out
    assert "systemd is not running" in out
    assert f"--prefix {installed['prefix']} --stop" in out
    assert f":{installed['port']}/" in out


@e2e
def test_config_keeps_only_the_hash(installed):
    conf = installed["prefix"] / "etc" / "config.toml"
    st = conf.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_uid, subprocess.run(["stat", "-c", "%G", str(conf)], capture_output=True,
                                      text=True).stdout.strip()) == (0, "edgecap")
    text = conf.read_text()
    assert installed["password"] not in text
    assert re.search(r'^password_hash = "(scrypt|pbkdf2)[^"]+"$', text, re.M)
    assert f'data_dir = "{installed["prefix"]}/data"' in text


@e2e
def test_runs_as_the_edgecap_user(installed):
    pid = int((installed["prefix"] / "run" / "edgecap.pid").read_text())
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))
    groups = re.search(r"^Groups:\s*(.*)$", status, re.M).group(1).split()
    user = subprocess.run(["id", "-u", "edgecap"], capture_output=True, text=True).stdout.strip()
    video = subprocess.run(["getent", "group", "video"], capture_output=True, text=True).stdout.split(":")[2]
    assert str(uid) == user and uid != 0
    assert video in groups


@e2e
def test_installed_package_has_its_data_files(installed):
    # source = "auto" falls back to the bundled sample photos; the page needs its templates.
    site = list((installed["prefix"] / "venv" / "lib").glob("python3.*/site-packages/device"))
    assert len(site) == 1, site
    assert list((site[0] / "web" / "templates").glob("*.html"))
    assert list((site[0] / "samples").glob("*.jpg")), "device/samples/*.jpg not in the installed package"


@e2e
def test_page_answers_only_with_the_generated_password(installed):
    port, password = installed["port"], installed["password"]
    assert http(port, "/healthz")[0] == 200
    assert http(port, "/api/captures")[0] == 401
    assert http(port, "/api/captures", "not-the-password")[0] == 401
    status, body = http(port, "/api/captures", password)
    assert status == 200, body
    assert "items" in json.loads(body)


@e2e
def test_dropped_photo_is_captioned_and_found_by_its_caption(installed):
    port, password = installed["port"], installed["password"]
    dest = installed["incoming"] / "cat.jpg"
    shutil.copyfile(PHOTO, dest)
    dest.chmod(0o644)
    deadline = time.monotonic() + CAPTION_TIMEOUT_S
    items: list = []
    while time.monotonic() < deadline and not items:
        status, body = http(port, "/api/captures", password)
        assert status == 200, body
        items = json.loads(body)["items"]
        if not items:
            time.sleep(1)
    log = (installed["prefix"] / "log" / "edgecap.log").read_text(errors="replace")
    assert items, f"nothing captioned in {CAPTION_TIMEOUT_S} s; log:\n{log[-3000:]}"
    capture = items[0]
    caption = capture["caption"]
    assert caption.strip(), capture
    status, body = http(port, "/api/search?" + urllib.parse.urlencode({"q": caption}), password)
    assert status == 200, body
    found = json.loads(body)["items"]
    assert capture["id"] in [it["id"] for it in found], (caption, found)


@e2e
def test_second_run_changes_nothing(installed):
    prefix = installed["prefix"]
    pid_before = (prefix / "run" / "edgecap.pid").read_text()
    # data/, cache/ and log/ belong to the running service; everything install.sh writes is compared.
    before = tree(prefix, skip=("data", "cache", "log"))
    second = run_install("--prefix", str(prefix), "--port", str(installed["port"]),
                         "--camera", f"folder:{installed['incoming']}", script=installed["script"])
    after = tree(prefix, skip=("data", "cache", "log"))
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert changed == [], changed
    assert "Web login password" not in second.stdout
    assert "Python packages are up to date" in second.stdout
    assert f"already running (pid {pid_before.strip()})" in second.stdout
    assert http(installed["port"], "/api/captures", installed["password"])[0] == 200


@e2e
def test_uninstall_keeps_captures_then_purge_removes_everything(installed):
    prefix, port = installed["prefix"], installed["port"]
    pid = int((prefix / "run" / "edgecap.pid").read_text())
    run_install("--uninstall", "--prefix", str(prefix), script=installed["script"])
    assert not pid_alive(pid)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert sorted(p.name for p in prefix.iterdir()) == ["cache", "data", "etc"]
    assert (prefix / "data" / "edgecap.db").is_file()
    assert (prefix / "etc" / "config.toml").is_file()

    run_install("--uninstall", "--purge", "--prefix", str(prefix), script=installed["script"])
    assert not prefix.exists()
    if not installed["user_existed"]:
        assert subprocess.run(["getent", "passwd", "edgecap"], capture_output=True).returncode != 0


# --- the unit files and the script itself ------------------------------------------------------------

CHECK = REPO / "systemd" / "check.sh"
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None and os.geteuid() != 0,
                                   reason="systemd-analyze missing (check.sh installs it as root)")


def run_check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(CHECK), *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **env))


@needs_analyze
def test_units_verify_clean_and_exposure_at_most_4():
    proc = run_check()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    exposure = float(re.search(r"exposure ([0-9.]+) <= 4.0", proc.stdout).group(1))
    assert exposure <= 4.0


@needs_analyze
def test_check_fails_on_a_typo_and_on_a_lower_exposure_limit(tmp_path):
    bad = tmp_path / "edgecap.service"
    bad.write_text((REPO / "systemd" / "edgecap.service").read_text().replace("UMask=", "UMsk="))
    typo = run_check(str(bad))
    assert typo.returncode != 0 and "UMsk" in typo.stderr
    strict = run_check(MAX_EXPOSURE="0.5")
    assert strict.returncode != 0 and "> 0.5" in strict.stderr


@needs_analyze
def test_the_unit_for_a_prefix_passes_the_same_checks(tmp_path):
    unit = tmp_path / "edgecap.service"
    proc = subprocess.run(["bash", str(INSTALL), "--prefix", "/srv/edgecap", "--print-unit"],
                          capture_output=True, text=True, check=True)
    unit.write_text(proc.stdout)
    assert "ExecStart=/srv/edgecap/venv/bin/edgecap --config /srv/edgecap/etc/config.toml run" in proc.stdout
    assert "ReadWritePaths=/srv/edgecap/data /srv/edgecap/cache" in proc.stdout
    check = run_check(str(unit))
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck missing (apt-get install shellcheck)")
def test_shellcheck_clean():
    proc = subprocess.run(["shellcheck", str(INSTALL), str(CHECK)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_help_and_bad_options_need_no_root():
    ok = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and "--uninstall" in ok.stdout
    bad = subprocess.run(["bash", str(INSTALL), "--port", "99999"], capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip() == (
        "install.sh: error: --port must be a number from 1 to 65535, got '99999'")
