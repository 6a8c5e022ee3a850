"""Helpers shared by every tier and bench: free loopback ports, waiting for a server, process
cleanup, and serve() (a server process on a free port for the length of a block)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int,
    *,
    host: str = "127.0.0.1",
    timeout: float = 15.0,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    """Block until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def stop_process(process: subprocess.Popen[bytes], *, grace: float = 5.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def serve(
    argv: Sequence[str],
    port: int,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 15.0,
    quiet: bool = False,
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server command in its own process group until the block ends, once it listens
    on 127.0.0.1:port. Its stderr is ours (a test shows it on failure) unless `quiet`, as a
    benchmark wants it: a server's log lines must not cost the terminal's time."""
    process = subprocess.Popen(
        list(argv),
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else None,
        cwd=cwd,
    )
    try:
        wait_for_port(port, timeout=timeout, process=process)
        yield process
    finally:
        stop_process(process)


def script(name: str) -> str:
    """Path of one of our console scripts in the running interpreter's environment."""
    return str(VENV_BIN / name)
