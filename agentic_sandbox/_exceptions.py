"""The client's error tree: every failure the client raises is a SandboxError.

Raised by agentic_sandbox._client and the backends; callers catch these, never the
libraries underneath (httpx2, httpcore2, kubernetes), which are re-raised as ours with
`raise ... from exc` so the cause stays in the traceback. Caller mistakes stay
ValueError / TypeError / RuntimeError. This module imports nothing but the standard library.

    SandboxError                       root: catch this to catch everything we raise
      ClaimFailedError                 the claim reported a terminal Ready=False reason
        TemplateNotFoundError          the named SandboxTemplate does not exist
      SandboxTimeoutError              also a TimeoutError: not Ready, or a call ran too long
      SandboxConnectionError           tunnel, router or local runtime unreachable
      SandboxRequestError              the runtime answered an error; has status_code, body
      BackendUnavailableError          no cluster and no runsc: says what is missing

TemplateNotFoundError is also a ClaimFailedError: on Kubernetes a missing template is one
of the claim's terminal reasons (`TemplateNotFound`), so `except ClaimFailedError` sees it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "ClaimFailedError",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxRequestError",
    "SandboxTimeoutError",
    "TemplateNotFoundError",
]


class SandboxError(Exception):
    """Root of every error the client raises."""


class ClaimFailedError(SandboxError):
    """The SandboxClaim reported a terminal Ready=False reason; waiting longer cannot help."""

    def __init__(self, message: str, *, reason: str = "", claim: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        self.claim = claim


class TemplateNotFoundError(ClaimFailedError):
    """The named SandboxTemplate does not exist (in the cluster or the local template folders)."""


class SandboxTimeoutError(SandboxError, TimeoutError):
    """The sandbox did not become ready in time, or a call ran longer than its timeout."""


class SandboxConnectionError(SandboxError):
    """The tunnel, the router or the local runtime could not be reached."""


class SandboxRequestError(SandboxError):
    """The runtime (or the router in front of it) answered with an error status."""

    def __init__(self, message: str, *, status_code: int, body: bytes = b"") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class BackendUnavailableError(SandboxError):
    """The chosen backend cannot run here; the message says what is missing and what to do."""
