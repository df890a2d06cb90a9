"""A loopback trap for storage tests: proof that a command went only where it was told.

:func:`trap` listens on a free 127.0.0.1 port and counts every connection made to it (each one
is closed at once). Tests point ``AWS_ENDPOINT_URL`` - the endpoint every S3 client falls back
to when it is not given one - at the trap and give the command the real (moto) endpoint through
``storage.endpoint_url`` / ``--endpoint-url`` only: a client that ignores the configured endpoint
connects to the trap (the test then sees ``trap.connections > 0``) instead of the AWS default
endpoint, so nothing outside 127.0.0.1 is ever contacted, even by code that is wrong.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from pathlib import Path


class Trap:
    def __init__(self):
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._sock.close()


@contextlib.contextmanager
def trap(monkeypatch):
    """``AWS_ENDPOINT_URL`` -> a :class:`Trap` for the duration (``monkeypatch``: pytest's)."""
    t = Trap()
    monkeypatch.setenv("AWS_ENDPOINT_URL", t.url)
    try:
        yield t
    finally:
        t.close()


def mangled_paths(*roots: str | Path) -> list[str]:
    """Local files or folders under ``roots`` named like a mangled URI (``s3:``): what
    ``Path("s3://bucket/x")`` creates. Should always be empty."""
    found = []
    for root in roots:
        for folder, dirs, files in os.walk(root):
            found += [os.path.join(folder, n) for n in dirs + files if ":" in n]
    return found


def keys(s3, prefix_uri: str) -> list[str]:
    """Every object key under ``prefix_uri`` (relative to it) in the moto bucket."""
    from clipvg.data import storage

    fs, path = storage.filesystem(prefix_uri, endpoint_url=s3.endpoint_url)
    fs.invalidate_cache()
    return sorted(p[len(path) + 1:] for p in fs.find(path))
