"""Authentication for the LAN page and API: HTTP Basic (curl) or a login form with a session cookie.

Only a password is checked (one user per device; any user name is accepted). The password is
kept as a werkzeug hash (scrypt/pbkdf2), or comes from EDGECAP_PASSWORD. Verifying a scrypt hash
costs ~0.2 s of CPU and 32 MB, far too much per API request, so a successful check is remembered
as a keyed digest of the presented password for the life of the process.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from pathlib import Path

from werkzeug.security import check_password_hash, generate_password_hash

log = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 8  # the page shows every capture to whoever has it; install.sh generates 16


def check_password_strength(password: str | None, what: str = "the password") -> None:
    """Raises ValueError naming `what` when the password is empty or shorter than MIN_PASSWORD_CHARS."""
    if not password:
        raise ValueError(f"{what} must not be empty")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"{what} is too short: use at least {MIN_PASSWORD_CHARS} characters")


def hash_password(password: str) -> str:
    """The hash to put in the config (`edgecap hash-password`). Raises ValueError on a short password."""
    check_password_strength(password)
    return generate_password_hash(password)


class PasswordChecker:
    """Checks a presented password against the configured hash, or the plain password from
    EDGECAP_PASSWORD (`config.web.password`), which wins when both are set."""

    def __init__(self, password_hash: str | None, env_password: str | None = None, cache_size: int = 64):
        self._hash = password_hash
        self._key = secrets.token_bytes(32)  # keys the in-memory digests; never leaves the process
        # The environment password wins over the hash (documented override); keep only a digest of it.
        self._env_digest = self._digest(env_password) if env_password else None
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._bad_hash_logged = False
        if password_hash and password_hash.count("$") < 2:  # werkzeug answers False, silently, forever
            self._bad_hash("not method$salt$hash")

    @property
    def configured(self) -> bool:
        return bool(self._env_digest or self._hash)

    @property
    def fingerprint(self) -> str:
        """Changes when the password changes: stored in sessions so a new password logs everyone out."""
        material = self._env_digest or (self._hash or "").encode()
        return hashlib.sha256(b"edgecap-session:" + material).hexdigest()[:16]

    def _bad_hash(self, why: str) -> None:
        """A malformed hash in the config: nobody gets in, and the log says why (once; never the hash)."""
        if not self._bad_hash_logged:
            self._bad_hash_logged = True
            log.error("[web] password_hash is not a password hash (%s): every login fails; run "
                      "`edgecap hash-password` and put its output in the config", why)

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def verify_cheaply(self, password: str | None) -> bool | None:
        """True / False when the answer costs no password hashing (the environment password, or a
        password already verified); None when only `verify()` can tell."""
        if not password or len(password) > 1024:
            return False
        d = self._digest(password)
        if self._env_digest is not None:
            return hmac.compare_digest(d, self._env_digest)
        if not self._hash:
            return False
        with self._lock:
            if d in self._ok:
                self._ok.move_to_end(d)
                return True
        return None

    def verify(self, password: str | None) -> bool:
        cheap = self.verify_cheaply(password)
        if cheap is not None:
            return cheap
        d = self._digest(password)
        try:
            ok = check_password_hash(self._hash, password)
        except (ValueError, TypeError) as e:  # an unknown method or bad parameters in the hash
            self._bad_hash(type(e).__name__)
            return False
        if ok:
            with self._lock:
                self._ok[d] = None
                while len(self._ok) > self._cache_size:
                    self._ok.popitem(last=False)
        return ok


class FailureLimiter:
    """Refuses further password attempts from an address after too many failures in a window.

    An attempt is counted from `begin()` (before the slow password check) to `finish()`, so many
    wrong passwords sent at once cannot all be checked before the first failure is recorded.
    """

    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_tracked: int = 1024):
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._fails: dict[str, list[float]] = {}
        self._checking: dict[str, int] = {}
        self._lock = threading.Lock()

    def _recent(self, addr: str, now: float) -> list[float]:
        times = [t for t in self._fails.get(addr, []) if now - t < self.window_s]
        if times:
            self._fails[addr] = times
        else:
            self._fails.pop(addr, None)
        return times

    def blocked(self, addr: str) -> bool:
        with self._lock:
            return len(self._recent(addr, time.monotonic())) >= self.max_failures

    def begin(self, addr: str) -> bool:
        """Reserve one attempt for `addr`; False (nothing reserved) when it may not try now."""
        with self._lock:
            busy = len(self._recent(addr, time.monotonic())) + self._checking.get(addr, 0)
            if busy >= self.max_failures:
                return False
            self._checking[addr] = self._checking.get(addr, 0) + 1
            return True

    def finish(self, addr: str, ok: bool) -> None:
        """End an attempt from `begin()`: a success forgets the address's failures, a failure counts."""
        now = time.monotonic()
        with self._lock:
            left = self._checking.get(addr, 1) - 1
            if left > 0:
                self._checking[addr] = left
            else:
                self._checking.pop(addr, None)
            if ok:
                self._fails.pop(addr, None)
                return
            if len(self._fails) >= self.max_tracked and addr not in self._fails:
                self._fails.pop(next(iter(self._fails)))  # forget the oldest address, bounded memory
            self._recent(addr, now)
            self._fails.setdefault(addr, []).append(now)


class RevokedSessions:
    """Session ids ended by logging out, until the cookie would have expired anyway.

    The session cookie is signed, not stored: without this list a copy of it would stay valid after
    logout. Kept in a small JSON file in the data folder so a restart does not bring sessions back.
    """

    def __init__(self, path: Path | None, lifetime_s: float):
        self.path, self.lifetime_s = path, lifetime_s
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self._until = {str(k): float(v) for k, v in data.items()}
            except FileNotFoundError:
                pass
            except (OSError, ValueError, AttributeError, TypeError) as e:
                log.warning("cannot read %s (%s); starting an empty list", path, e)

    def revoke(self, sid: str) -> None:
        now = time.time()
        with self._lock:
            self._until = {k: v for k, v in self._until.items() if v > now}
            self._until[sid] = now + self.lifetime_s
            data = json.dumps(self._until)
        if self.path is not None:
            try:
                tmp = self.path.with_name(self.path.name + ".tmp")
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(data)
                os.replace(tmp, self.path)
            except OSError as e:
                log.warning("cannot write %s (%s); the logout holds until a restart", self.path, e)

    def revoked(self, sid: str) -> bool:
        with self._lock:
            return self._until.get(sid, 0.0) > time.time()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
