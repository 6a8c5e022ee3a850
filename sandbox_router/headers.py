"""Routing headers: parse and check X-Sandbox-ID / -Namespace / -Port / -Timeout / -UID.

Called by ``proxy`` for every forwarded request, before any lookup. Pure: it takes the raw
header values and returns a ``Route`` or raises ``BadRoute`` (answered 400). It must stay
strict: a sandbox is named by a Kubernetes object name, never by a host, IP, URL or port
range, numbers have exactly one spelling, and a uid is Kubernetes' own lowercase spelling.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox_common.contract import ROUTING_HEADERS as ROUTING_HEADERS
from sandbox_common.contract import SANDBOX_ID_HEADER as SANDBOX_ID
from sandbox_common.contract import SANDBOX_NAMESPACE_HEADER as SANDBOX_NAMESPACE
from sandbox_common.contract import SANDBOX_PORT_HEADER as SANDBOX_PORT
from sandbox_common.contract import SANDBOX_TIMEOUT_HEADER as SANDBOX_TIMEOUT
from sandbox_common.contract import SANDBOX_UID_HEADER as SANDBOX_UID

# DNS-1123 label: what a Sandbox name must be, because its headless Service carries the same
# name (Service names are labels). This refuses dots, so no IP address or FQDN is a name.
_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
_PORT = re.compile(r"[1-9][0-9]{0,4}")
_SECONDS = re.compile(r"(?:0|[1-9][0-9]{0,6})(?:\.[0-9]{1,3})?")
# RFC 4122 text form, 36 characters, lowercase as the API server writes metadata.uid.
_UID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class BadRoute(ValueError):
    """A routing header is missing or malformed; the message says which and why."""


@dataclass(frozen=True)
class Route:
    """Which sandbox and port a request is for, and how long to wait for it."""

    namespace: str
    name: str
    port: int
    timeout: float
    # The Sandbox uid the client expects (X-Sandbox-UID), or None when it sent only a name.
    uid: str | None = None


def is_dns_label(text: str) -> bool:
    return bool(_LABEL.fullmatch(text))


def parse_route(headers: Mapping[str, str], *, default_namespace: str, default_port: int,
                default_timeout: float, max_timeout: float) -> Route:
    """The Route named by `headers`, or BadRoute. Every value is checked before any lookup."""
    name = _single(headers, SANDBOX_ID)
    if name is None or name == "":
        raise BadRoute(f"missing {SANDBOX_ID} header")
    if not is_dns_label(name):
        raise BadRoute(f"{SANDBOX_ID} must be a DNS-1123 label (lowercase letters, digits, '-')")
    namespace = _single(headers, SANDBOX_NAMESPACE)
    if namespace is None or namespace == "":
        namespace = default_namespace
    elif not is_dns_label(namespace):
        raise BadRoute(f"{SANDBOX_NAMESPACE} must be a DNS-1123 label")
    port_text = _single(headers, SANDBOX_PORT)
    if port_text is None or port_text == "":
        port = default_port
    elif _PORT.fullmatch(port_text) and int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise BadRoute(f"{SANDBOX_PORT} must be a decimal port number 1-65535")
    timeout_text = _single(headers, SANDBOX_TIMEOUT)
    if timeout_text is None or timeout_text == "":
        timeout = default_timeout
    else:
        if not _SECONDS.fullmatch(timeout_text):
            raise BadRoute(f"{SANDBOX_TIMEOUT} must be a number of seconds")
        timeout = float(timeout_text)
        if not math.isfinite(timeout) or timeout <= 0:
            raise BadRoute(f"{SANDBOX_TIMEOUT} must be positive")
        # Capped, not refused: the server's maximum is a ceiling the client need not know.
        timeout = min(timeout, max_timeout)
    uid = _single(headers, SANDBOX_UID)
    if uid == "":
        uid = None
    elif uid is not None and not _UID.fullmatch(uid):
        raise BadRoute(f"{SANDBOX_UID} must be a Sandbox's metadata.uid: 36 characters, "
                       "lowercase RFC 4122 (8-4-4-4-12 hex digits)")
    return Route(namespace=namespace, name=name, port=port, timeout=timeout, uid=uid)


def _single(headers: Mapping[str, str], key: str) -> str | None:
    """One header value; a repeated routing header is ambiguous and refused."""
    getall = getattr(headers, "getall", None)
    if getall is not None:
        values = getall(key, [])
        if len(values) > 1:
            raise BadRoute(f"{key} given more than once")
        return values[0] if values else None
    return headers.get(key)
