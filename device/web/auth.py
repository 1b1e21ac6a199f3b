"""Authentication for the LAN page and API: HTTP Basic (curl) or a login form with a session cookie.

Only a password is checked (one user per device; any user name is accepted). The password is
kept as a werkzeug hash (scrypt/pbkdf2), or comes from EDGECAP_PASSWORD. Verifying a scrypt hash
costs ~0.2 s of CPU and 32 MB, far too much per API request, so a successful check is remembered
as a keyed digest of the presented password for the life of the process.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
import time
from collections import OrderedDict

from werkzeug.security import check_password_hash, generate_password_hash

ENV_PASSWORD = "EDGECAP_PASSWORD"
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
    """Checks a presented password against a hash or the EDGECAP_PASSWORD environment variable."""

    def __init__(self, password_hash: str | None, env_password: str | None = None, cache_size: int = 64):
        self._hash = password_hash
        self._key = secrets.token_bytes(32)  # keys the in-memory digests; never leaves the process
        # The environment password wins over the hash (documented override); keep only a digest of it.
        self._env_digest = self._digest(env_password) if env_password else None
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, password_hash: str | None) -> PasswordChecker:
        return cls(password_hash, os.environ.get(ENV_PASSWORD) or None)

    @property
    def configured(self) -> bool:
        return bool(self._env_digest or self._hash)

    @property
    def fingerprint(self) -> str:
        """Changes when the password changes: stored in sessions so a new password logs everyone out."""
        material = self._env_digest or (self._hash or "").encode()
        return hashlib.sha256(b"edgecap-session:" + material).hexdigest()[:16]

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._key, password.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()

    def verify(self, password: str | None) -> bool:
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
        try:
            ok = check_password_hash(self._hash, password)
        except (ValueError, TypeError):  # a malformed hash in the config: nobody gets in
            return False
        if ok:
            with self._lock:
                self._ok[d] = None
                while len(self._ok) > self._cache_size:
                    self._ok.popitem(last=False)
        return ok


class FailureLimiter:
    """Refuses further password attempts from an address after too many failures in a window."""

    def __init__(self, max_failures: int = 20, window_s: float = 60.0, max_tracked: int = 1024):
        self.max_failures = max_failures
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._fails: dict[str, list[float]] = {}
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

    def fail(self, addr: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._fails) >= self.max_tracked and addr not in self._fails:
                self._fails.pop(next(iter(self._fails)))  # forget the oldest address, bounded memory
            self._recent(addr, now)
            self._fails.setdefault(addr, []).append(now)

    def reset(self, addr: str) -> None:
        with self._lock:
            self._fails.pop(addr, None)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def same_token(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a), str(b))
