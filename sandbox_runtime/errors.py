"""The runtime's error answers, without werkzeug: an exception per status we answer with.

Raised by route handlers and the modules they call (commands.py, confine.py, files.py,
multipart.py, web.py's routing); web.py turns each into `{"error": description}` with its
`code`, in one place (web.error_answer). Kept free of Flask and werkzeug so the `--stdio`
server starts without importing them (seconds under gVisor's ptrace platform). Nothing here
may carry a stack trace or internal detail into `description`: it is sent to the client.
"""

from __future__ import annotations

REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 413: "Request Entity Too Large",
           429: "Too Many Requests", 500: "Internal Server Error",
           503: "Service Unavailable"}


class HTTPError(Exception):
    """An answer other than 2xx: `code` and a client-safe `description`."""

    code = 500

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class BadRequest(HTTPError):
    code = 400


class BodyUnreadable(BadRequest):
    """The request's body could not be read to its end (broken chunked framing, or the
    client stopped sending it): answered with `Connection: close`, since nothing after it
    on the connection can be read as a request."""


class Forbidden(HTTPError):
    code = 403


class NotFound(HTTPError):
    code = 404


class MethodNotAllowed(HTTPError):
    """The path is served, not with this method; `allowed` goes to the Allow header."""

    code = 405

    def __init__(self, description: str, allowed: list[str]) -> None:
        super().__init__(description)
        self.allowed = allowed


class RequestEntityTooLarge(HTTPError):
    code = 413


class TooManyRequests(HTTPError):
    code = 429


class ServiceUnavailable(HTTPError):
    code = 503


def status_line(code: int) -> str:
    return f"{code} {REASONS.get(code, 'Error')}"
