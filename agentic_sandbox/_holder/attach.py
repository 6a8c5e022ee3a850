"""SandboxClient(attach=NAME) on the local backend: the Backend that reaches a named sandbox.

Made by agentic_sandbox._backends.choice.make_backend. Its Endpoint's transports (sync and
async) are ChannelTransports whose channels are connections to the holder's Unix socket
(through the folder's descriptor: socket paths are short); the holder forwards them to the
runtime.
Nothing is released on close: the sandbox belongs to its name until `delete NAME`.
"""

from __future__ import annotations

import os
import socket

from agentic_sandbox._backends.base import Endpoint
from agentic_sandbox._backends.channel import (
    CHANNEL_URL,
    AsyncChannelTransport,
    ChannelTransport,
)
from agentic_sandbox._exceptions import ClaimFailedError, SandboxConnectionError
from agentic_sandbox._holder.records import SOCKET, holder_running, named_dir, read_record
from agentic_sandbox._named import validate_name
from sandbox_common import contract

__all__ = ["HeldBackend"]


class HeldBackend:
    """Backend that reaches a named local sandbox through its holder's socket.

    open() checks the holder runs and returns an Endpoint over its socket; close() releases
    nothing: the sandbox belongs to its name until `agentic-sandbox delete NAME`.
    """

    name = "local"

    def __init__(self, name: str, *, state_dir: str | os.PathLike[str] | None = None) -> None:
        self.sandbox = validate_name(name)
        self.directory = named_dir(state_dir, name)

    def _connect(self) -> socket.socket:
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SandboxConnectionError(f"local sandbox {self.sandbox!r} was deleted") \
                from exc
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET}")
        except OSError as exc:
            sock.close()
            raise SandboxConnectionError(
                f"local sandbox {self.sandbox!r}: its holder does not answer "
                f"({exc.strerror or exc})") from exc
        finally:
            os.close(dir_fd)
        return sock

    def open(self) -> Endpoint:
        record = read_record(self.directory)
        if record is None:
            raise ClaimFailedError(
                f"no local sandbox named {self.sandbox!r} (make one with `agentic-sandbox "
                f"create {self.sandbox}`)", reason="NotFound", claim=self.sandbox)
        if not holder_running(record):
            raise ClaimFailedError(
                f"local sandbox {self.sandbox!r} is gone: its holder process "
                f"{record.get('pid')} ended; `agentic-sandbox delete {self.sandbox}` removes "
                "what is left", reason="HolderGone", claim=self.sandbox)
        if not record.get("sandbox"):
            raise SandboxConnectionError(f"local sandbox {self.sandbox!r} is still starting")
        return Endpoint(base_url=CHANNEL_URL, transport=ChannelTransport(self._connect),
                        async_transport=AsyncChannelTransport(self._connect),
                        headers={contract.SANDBOX_ID_HEADER: self.sandbox},
                        sandbox_name=self.sandbox,
                        description=f"named local sandbox {self.sandbox} "
                                    f"(holder pid {record.get('pid')})")

    def close(self) -> None:
        """Nothing to release: the client closes the transport."""

