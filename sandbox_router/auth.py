"""Authentication: the bearer token every forwarded request must carry.

Built by ``app.create_app`` from the token (or the token file, a mounted Secret that may
rotate in place) and checked by ``proxy.Forwarder`` before anything else: before the routing
headers are read and before any lookup. It compares in constant time, never logs a token, and
keeps the previous token when a rotated file cannot be read.
"""

from __future__ import annotations

import hmac
import logging
import os
import time

log = logging.getLogger(__name__)


class TokenCheck:
    """Bearer-token check in constant time; the token file is re-read when it changes."""

    def __init__(self, *, token: str = "", token_file: str = "",
                 reload_interval: float = 10.0) -> None:
        self._literal = token.strip()
        self._file = token_file
        self._interval = reload_interval
        self._checked_at = 0.0
        self._mtime: float | None = None
        self._token = self._literal.encode()
        if token_file:
            self._reload(force=True)

    @property
    def configured(self) -> bool:
        return bool(self._token)

    def _reload(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._checked_at < self._interval:
            return
        self._checked_at = now
        try:
            mtime = os.stat(self._file).st_mtime
            if force or mtime != self._mtime:
                with open(self._file, "rb") as handle:
                    text = handle.read(4096).strip()
                self._mtime = mtime
                self._token = text or self._literal.encode()
        except OSError:
            if force:
                raise
            log.warning("token file unreadable; keeping the previous token",
                        extra={"token_file": self._file})

    def allows(self, authorization: str | None) -> bool:
        if self._file:
            self._reload()
        if not self._token or not authorization:
            return False
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self._token)
