"""Hostile clients against a real waitress server over real sockets (issue 12): bodies refused before
they are read, connection caps, timeouts, DNS rebinding, open redirects, login limits, sessions."""
from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import time
from urllib.parse import urljoin, urlsplit

import pytest
from webfixtures import (
    PASSWORD,
    Client,
    basic,
    fill_store,
    held_bytes,
    multipart,
    running,
    serving,
    wait_until,
    web_config,
)

from device.config import load_config
from device.web import create_app, exposure_warning, hash_password, make_server
from device.web.server import Limits

PW_HASH = hash_password(PASSWORD)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    s = fill_store(tmp_path_factory.mktemp("store"))
    yield s
    s.close()


def app_for(store, data_dir=None, max_login_failures: int = 20, concurrent_uploads: int = 4, **web):
    web.setdefault("password_hash", PW_HASH)
    web.setdefault("secret_key", "k" * 64)
    return create_app(web_config(data_dir or store.data_dir, **web), store,
                      max_login_failures=max_login_failures, concurrent_uploads=concurrent_uploads)


def raw(url: str, head: str, body: bytes = b"", timeout: float = 5.0, end: bool = True) -> socket.socket:
    """A socket that has sent `head` (request line + headers, CRLF-joined; `end`: and the blank line
    ending them) and `body`, nothing more."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    s = socket.create_connection((host, port), timeout=timeout)
    s.sendall(head.replace("\n", "\r\n").encode() + (b"\r\n\r\n" if end else b"\r\n") + body)
    return s


def response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response (the server closes the connection after a refusal)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    want = int(headers.get("content-length", "0"))
    while len(body) < want:
        chunk = s.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def post_head(url: str, path: str, length: int, extra: str = "") -> str:
    host = urlsplit(url).netloc
    return (f"POST {path} HTTP/1.1\nHost: {host}\nContent-Type: multipart/form-data; boundary=x\n"
            f"Content-Length: {length}{extra}")


# --- item 1: bodies are judged before they are read -----------------------------------------------------

def test_a_body_without_credentials_is_refused_before_it_is_read(store):
    with running(app_for(store, max_upload_bytes=1_000_000)) as url:
        for path in ("/api/caption", "/upload", "/api/search/photo"):
            s = raw(url, post_head(url, path, 1_000_000), b"x" * 1000)  # 0.1% of the promised body
            status, headers, body = response(s)  # answered now: the server did not wait for the rest
            assert status == 401, path
            assert headers.get("connection") == "close"
            if path.startswith("/api/"):
                assert json.loads(body)["error"] == "authentication required"
                assert headers["www-authenticate"].startswith("Basic")
            assert s.recv(10) == b""  # and closed
            s.close()


def test_an_unchecked_password_gets_one_body_per_address(store):
    with serving(app_for(store, max_upload_bytes=1_000_000, max_login_failures=2)) as server:
        url = f"http://127.0.0.1:{server.port}"
        wrong = "\nAuthorization: " + basic("not it")["Authorization"]
        first = raw(url, post_head(url, "/api/caption", 500_000, wrong), b"x" * 1000)
        assert wait_until(lambda: server.guard.in_memory == 500_000)  # the first body is admitted
        second = raw(url, post_head(url, "/api/caption", 500_000, wrong))
        status, headers, body = response(second)
        assert status == 429 and "password" in json.loads(body)["error"]
        first.sendall(b"x" * 499_000)  # the first one is read, then its password checked
        assert response(first)[0] == 401
        assert wait_until(lambda: server.guard.in_memory == 0)  # and its slot given back
        third = raw(url, post_head(url, "/api/caption", 500_000, wrong))
        third.sendall(b"x" * 500_000)
        assert response(third)[0] == 401
        # two failures: this address is blocked, and its bodies are refused unread
        fourth = raw(url, post_head(url, "/api/caption", 500_000, wrong))
        status, headers, body = response(fourth)
        assert status == 429 and headers["retry-after"] == "60"


def test_bodies_share_a_memory_budget(store):
    app = app_for(store, max_upload_bytes=200_000, concurrent_uploads=2)
    with serving(app) as server:
        url = f"http://127.0.0.1:{server.port}"
        auth = "\nAuthorization: " + basic()["Authorization"]
        assert Client(url, basic()).get("/api/stats").status == 200  # the password is now known
        length = 200_000
        slow = [raw(url, post_head(url, "/api/caption", length, auth), b"x" * 10) for _ in range(2)]
        assert wait_until(lambda: server.guard.in_memory == 2 * length)  # both bodies are admitted
        third = raw(url, post_head(url, "/api/caption", length, auth))
        status, headers, body = response(third)
        assert status == 503 and headers["retry-after"] and "busy" in json.loads(body)["error"]
        for s in slow:
            s.close()  # a client that gives up returns its share
        body, headers = multipart(files={"image": ("a.jpg", b"not a jpeg", "image/jpeg")})
        assert wait_until(lambda: Client(url, basic()).post("/api/caption", body, headers=headers).status == 415)


def test_no_temporary_files_for_request_bodies(store, tmp_path, monkeypatch):
    import tempfile

    spool = tmp_path / "tmp"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    with running(app_for(store, max_upload_bytes=3_000_000)) as url:
        auth = "\nAuthorization: " + basic()["Authorization"]
        assert Client(url, basic()).get("/api/stats").status == 200
        s = raw(url, post_head(url, "/api/caption", 2_000_000, auth), b"x" * 1_500_000)
        time.sleep(0.3)  # well past waitress's 512 KB spooling threshold
        assert held_bytes(spool) == 0
        s.close()


# --- item 4: idle sockets, slow headers, slow bodies -----------------------------------------------------

def test_idle_sockets_do_not_take_the_page_down(store):
    with running(app_for(store)) as url:
        host, port = urlsplit(url).hostname, urlsplit(url).port
        idle = [socket.create_connection((host, port)) for _ in range(205)]
        half = [socket.create_connection((host, port)) for _ in range(20)]
        for s in half:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        try:
            c = Client(url, basic())
            assert c.get("/healthz", timeout=5).status == 200
            assert c.get("/api/captures", timeout=5).status == 200
            assert c.get("/", timeout=5).status == 200
        finally:
            for s in idle + half:
                s.close()


def test_slow_headers_and_slow_bodies_are_cut_off(store):
    app = app_for(store)
    limits = Limits(max_body=100_000, body_budget=400_000, header_timeout=1.0, idle_timeout=1.0,
                    min_body_rate=100_000)
    server = make_server(app, "127.0.0.1", 0, limits=limits)
    import threading

    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    url = f"http://127.0.0.1:{server.port}"
    try:
        auth = "\nAuthorization: " + basic()["Authorization"]
        assert Client(url, basic()).get("/api/stats").status == 200
        slow_head = raw(url, "GET / HTTP/1.1\nHost: x", end=False)  # never sends the blank line
        slow_body = raw(url, post_head(url, "/api/caption", 90_000, auth), b"x" * 100)
        silent = socket.create_connection(("127.0.0.1", server.port))
        t0 = time.monotonic()
        for s in (slow_head, slow_body, silent):
            s.settimeout(10)
            assert s.recv(100) == b"", "closed by the server"
        assert time.monotonic() - t0 < 6
        assert server.guard.in_memory == 0
    finally:
        server.stop()
        t.join(10)


# --- item 7: waitress's own refusals look like the app's -------------------------------------------------

def test_server_refusals_are_json_for_the_api_and_html_for_pages(store):
    with running(app_for(store, max_upload_bytes=50_000)) as url:
        auth = "\nAuthorization: " + basic()["Authorization"]
        s = raw(url, post_head(url, "/api/caption", 5_000_000, auth))
        status, headers, body = response(s)
        assert status == 413 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"error": "the request is too large", "status": 413}
        s = raw(url, post_head(url, "/upload", 5_000_000, auth))
        status, headers, body = response(s)
        assert status == 413 and headers["content-type"].startswith("text/html")
        assert b"<h1>413" in body and b"too large" in body
        s = raw(url, f"GET /api/captures HTTP/1.1\nHost: x\nX-Big: {'a' * 300_000}")
        status, headers, body = response(s)
        assert status == 431 and json.loads(body)["status"] == 431


# --- item 3: open redirect -------------------------------------------------------------------------------

EVIL_NEXT = ["/%09/evil.example", "/%0a/evil.example", "/%0d%0a/evil.example", "//evil.example",
             "/\\evil.example", "https://evil.example/", "/%5Cevil.example", "%2F%2Fevil.example",
             "/%E2%80%8B/evil.example", "http:/evil.example", "/%20/evil.example"]


def lands_on(base: str, location: str) -> str:
    """Where a browser goes: it drops tabs and newlines and reads backslashes as slashes."""
    cleaned = re.sub(r"[\t\n\r]", "", location).replace("\\", "/")
    return urlsplit(urljoin(base + "/login", cleaned)).netloc


@pytest.mark.parametrize("auth", [True, False])
def test_login_next_never_leaves_the_site(store, auth):
    app = app_for(store) if auth else create_app(web_config(store.data_dir, auth=False, secret_key="k" * 64),
                                                 store)
    with running(app) as url:
        here = urlsplit(url).netloc
        for evil in EVIL_NEXT:
            c = Client(url)
            r = c.get(f"/login?next={evil}")
            if auth:
                token = re.search(r'name="csrf_token" value="([^"]+)"', r.text).group(1)
                body = f"password={PASSWORD.replace(' ', '+')}&csrf_token={token}&next={evil}".encode()
                r = c.post("/login", body, headers={"Content-Type": "application/x-www-form-urlencoded"})
            assert r.status in (302, 303), (evil, r.status)
            assert lands_on(url, r.headers["Location"]) == here, (evil, r.headers["Location"])
        # a real path still works
        assert Client(url).get("/login?next=/capture/2").headers.get("Location", "/capture/2").endswith(
            "/capture/2") or auth


# --- item 6: no-password mode answers only to localhost names ---------------------------------------------

def test_no_password_mode_refuses_other_host_names(store):
    app = create_app(web_config(store.data_dir, auth=False, secret_key="k" * 64), store)
    with running(app) as url:
        port = urlsplit(url).port
        c = Client(url)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}", f"edgecap.localhost:{port}"):
            assert c.get("/api/captures", headers={"Host": host}).status == 200, host
        for host in (f"evil.example:{port}", "evil.example", f"127.0.0.1.evil.example:{port}", ""):
            r = c.get("/api/captures", headers={"Host": host})
            assert r.status == 403 and "DNS rebinding" in r.json()["error"], host
            assert b"fox" not in r.body
        s = raw(url, f"POST /api/caption HTTP/1.1\nHost: evil.example:{port}\nContent-Length: 900000")
        status, _, body = response(s)
        assert status == 403 and "rebinding" in json.loads(body)["error"]
    # with a password, the password protects: any name may be used
    with running(app_for(store)) as url:
        assert Client(url, basic()).get("/api/captures", headers={"Host": "camera.example"}).status == 200


# --- item 7: login limits, logout, cookies, warnings ------------------------------------------------------

def _login(c: Client) -> str:
    token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/login").text).group(1)
    body = f"password={PASSWORD.replace(' ', '+')}&csrf_token={token}".encode()
    return str(c.post("/login", body, headers={"Content-Type": "application/x-www-form-urlencoded"}).status)


def test_head_login_is_not_a_failed_login(store):
    with running(app_for(store, max_login_failures=3)) as url:
        c = Client(url)
        for _ in range(10):
            assert c.request("HEAD", "/login").status == 200
        assert _login(c) == "303"


def test_concurrent_wrong_passwords_are_limited_exactly(store):
    with running(app_for(store, max_login_failures=20), threads=8) as url:
        def attempt(_):
            return Client(url, basic("wrong guess")).get("/api/stats").status

        with concurrent.futures.ThreadPoolExecutor(60) as pool:
            statuses = list(pool.map(attempt, range(60)))
    assert statuses.count(401) <= 20, statuses.count(401)
    assert statuses.count(401) + statuses.count(429) == 60


def test_logout_revokes_the_session_even_across_a_restart(store, tmp_path):
    settings = dict(secret_key="k" * 64, data_dir=tmp_path)
    with running(app_for(store, **settings)) as url:
        c = Client(url)
        assert _login(c) == "303"
        stolen = dict(c.cookies)
        token = re.search(r'name="csrf_token" value="([^"]+)"', c.get("/").text).group(1)
        body = f"csrf_token={token}".encode()
        assert c.post("/logout", body, headers={"Content-Type": "application/x-www-form-urlencoded"}).status == 303
        thief = Client(url)
        thief.cookies = stolen
        assert thief.get("/api/captures").status == 401
        other = Client(url)
        assert _login(other) == "303" and other.get("/api/captures").status == 200  # others stay logged in
    with running(app_for(store, **settings)) as url:
        thief = Client(url)
        thief.cookies = stolen
        assert thief.get("/api/captures").status == 401
        still = Client(url)
        still.cookies = dict(other.cookies)
        assert still.get("/api/captures").status == 200


def test_secure_cookie_flag_can_be_set_in_the_config(store, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGECAP_PASSWORD", raising=False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[web]\npassword_hash = "{PW_HASH}"\nsecure_cookies = true\n')
    config = load_config(cfg, {"data_dir": str(tmp_path / "d")}, env={})
    with running(create_app(config, store)) as url:
        r = Client(url).get("/login")
        cookie = r.headers["Set-Cookie"]
        assert "edgecap_session=" in cookie and "Secure" in cookie


def test_serving_without_a_password_beyond_localhost_warns():
    assert "WITHOUT a password" in exposure_warning("0.0.0.0", auth=False)
    assert "WITHOUT a password" in exposure_warning("192.168.1.20", auth=False)
    assert exposure_warning("127.0.0.1", auth=False) is None
    assert exposure_warning("0.0.0.0", auth=True) is None
