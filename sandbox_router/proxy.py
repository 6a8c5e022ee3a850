"""The forwarding handler: one client request in, one request to one sandbox out, streamed.

Installed by ``app.create_app`` as the handler of every request that carries X-Sandbox-ID.
Order matters and is the security argument: authenticate (``auth.TokenCheck``), parse routing
headers, resolve through ``resolve.Resolver`` (which applies the address policy), and only
then connect, to a ``Target`` address and never to anything the caller wrote. Refusals answer
before any connection is opened. Bodies stream both ways; nothing here buffers a whole body
beyond ``buffer_body_bytes``. It must not follow redirects, decode content, or forward the caller's
credentials or hop-by-hop headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from sandbox_common.contract import NOT_FORWARDED_HEADER
from sandbox_router.auth import TokenCheck
from sandbox_router.config import Config
from sandbox_router.headers import (
    ROUTING_HEADERS,
    SANDBOX_ID,
    SANDBOX_NAMESPACE,
    BadRoute,
    parse_route,
)
from sandbox_router.identity import ConnectionMemory
from sandbox_router.idle import Idle
from sandbox_router.metrics import Metrics, method_label
from sandbox_router.resolve import ResolveError, Resolver, Target

log = logging.getLogger(__name__)
access_log = logging.getLogger("sandbox_router.access")

# RFC 9110 section 7.6.1 hop-by-hop fields, plus the ones a proxy re-creates itself.
HOP_BY_HOP = frozenset(h.lower() for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade",
))
# Never forwarded upstream: our own routing headers, the caller's credential for the router,
# and headers aiohttp sets from the request it builds (Host, Content-Length, Expect).
_DROP_REQUEST = HOP_BY_HOP | frozenset(h.lower() for h in (
    *ROUTING_HEADERS, "Authorization", "Host", "Content-Length", "Expect",
))
# Set by our own response writer; the upstream's Content-Length is applied separately. The
# not-forwarded mark is ours alone: a sandbox must not make a client resend a command.
_DROP_RESPONSE = HOP_BY_HOP | frozenset(("content-length", NOT_FORWARDED_HEADER.lower()))
_NO_BODY_STATUS = frozenset((204, 304))
_CHUNK = 256 * 1024
# Set on a request whose caller stopped sending its streamed body.
BODY_STALLED = "sandbox_router.body_stalled"


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@dataclass
class Forwarder:
    """Holds the pooled upstream session; `handle` is the aiohttp handler."""

    config: Config
    resolver: Resolver
    metrics: Metrics
    tokens: TokenCheck | None
    session_factory: Callable[[], aiohttp.ClientSession]
    session: aiohttp.ClientSession | None = None
    idle: Idle | None = None  # activity reports for Sandboxes with an idle timeout
    # What each client connection was told a sandbox name means (name_confirmation
    # "connection"), forgotten with the connection: keyed by its transport, weakly.
    connections: weakref.WeakKeyDictionary[Any, ConnectionMemory] = field(
        default_factory=weakref.WeakKeyDictionary)

    async def start(self) -> None:
        self.session = self.session_factory()

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        method = method_label(request.method)
        self.metrics.in_flight.inc()
        response: web.StreamResponse | None = None
        status = 500
        try:
            response = await self._forward(request, started)
            status = response.status
            return response
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(method, str(status)).inc()
            if self.config.access_log:
                access_log.info("request", extra={
                    "method": request.method, "path": request.path, "status": status,
                    "sandbox": request.headers.get(SANDBOX_ID, ""),
                    "namespace": request.headers.get(SANDBOX_NAMESPACE, ""),
                    "ms": round((time.perf_counter() - started) * 1e3, 3)})

    def _refuse(self, reason: str, status: int, message: str) -> web.Response:
        """An answer of the router's own, before anything was forwarded: marked so, so that
        a client may send the request again (a 503 with Retry-After: a sandbox waking up)."""
        self.metrics.refusals.labels(reason).inc()
        response = error(status, message)
        response.headers[NOT_FORWARDED_HEADER] = "true"
        return response

    def _memory(self, request: web.Request) -> ConnectionMemory | None:
        """This client connection's memory of names, or None to confirm every request."""
        if self.config.name_confirmation != "connection":
            return None
        transport = request.transport
        if transport is None:  # the connection is gone already: nothing to remember for
            return ConnectionMemory()
        memory = self.connections.get(transport)
        if memory is None:
            memory = self.connections[transport] = ConnectionMemory()
        return memory

    async def _forward(self, request: web.Request, started: float) -> web.StreamResponse:
        if self.tokens is not None and not self.tokens.allows(
                request.headers.get("Authorization")):
            response = self._refuse("unauthenticated", 401, "missing or invalid bearer token")
            response.headers["WWW-Authenticate"] = 'Bearer realm="sandbox-router"'
            return response
        config = self.config
        try:
            route = parse_route(request.headers, default_namespace=config.default_namespace,
                                default_port=config.default_port,
                                default_timeout=config.default_timeout,
                                max_timeout=config.max_timeout)
        except BadRoute as exc:
            return self._refuse("bad_route", 400, str(exc))
        raw_path = request.raw_path
        if not raw_path.startswith("/"):
            # Absolute-form or authority-form targets name a host: never ours to follow.
            return self._refuse("bad_target", 400, "request target must be an absolute path")
        length = request.content_length
        if length is not None and length > config.max_body_bytes:
            return self._refuse("too_large", 413, "request body too large")
        try:
            target = await self.resolver.resolve(
                route, connection=self._memory(request) if route.uid is None else None)
        except ResolveError as exc:
            reason = type(exc).__name__
            if exc.status >= 500:
                self.metrics.upstream_errors.labels(str(exc.status)).inc()
            response = self._refuse(reason, exc.status, str(exc))
            if exc.retry_after is not None:
                response.headers["Retry-After"] = str(exc.retry_after)
            return response
        if self.idle is None:
            return await self._send(request, target, route.timeout, raw_path, started)
        self.idle.begin(target.record)
        try:
            return await self._send(request, target, route.timeout, raw_path, started)
        finally:
            self.idle.end(target.record)

    def _upstream_headers(self, request: web.Request) -> CIMultiDict[str]:
        named = {token.strip().lower() for value in request.headers.getall("Connection", [])
                 for token in value.split(",")}
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in request.headers.items():
            lower = key.lower()
            if lower in _DROP_REQUEST or lower in named:
                continue
            headers.add(key, value)
        peer = request.remote or ""
        prior = request.headers.get("X-Forwarded-For")
        headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
        if request.host:
            headers.setdefault("X-Forwarded-Host", request.host)
        return headers

    async def _body(self, request: web.Request,
                    timeout: float) -> bytes | AsyncIterator[bytes] | None:
        if not request.body_exists:
            return None
        length = request.content_length
        if length is not None and length <= self.config.buffer_body_bytes:
            async with _stall_bound(timeout, BodyStalled):
                return await request.read()
        return self._stream_body(request, timeout)

    async def _stream_body(self, request: web.Request, timeout: float) -> AsyncIterator[bytes]:
        """The caller's body as it arrives; a caller that sends nothing for `timeout`
        seconds is given up on, as a sandbox that answers nothing would be."""
        limit, seen = self.config.max_body_bytes, 0
        chunks = request.content.iter_chunked(_CHUNK).__aiter__()
        while True:
            try:
                async with _stall_bound(timeout, BodyStalled):
                    chunk = await chunks.__anext__()
            except StopAsyncIteration:
                return
            except BodyStalled:
                # aiohttp reports an error of the body it sends as its own connection
                # error: the request keeps the reason.
                request[BODY_STALLED] = True
                raise
            seen += len(chunk)
            if seen > limit:
                raise BodyTooLarge()
            yield chunk

    async def _send(self, request: web.Request, target: Target, timeout: float, raw_path: str,
                    started: float) -> web.StreamResponse:
        assert self.session is not None
        headers = self._upstream_headers(request)
        if request.content_length is not None:
            headers["Content-Length"] = str(request.content_length)
        try:
            body = await self._body(request, timeout)
        except BodyStalled:
            return self._stalled(request, timeout)
        client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=min(self.config.connect_timeout, timeout), sock_read=timeout)
        upstream: aiohttp.ClientResponse | None = None
        last_error: Exception | None = None
        for address in target.addresses:
            host = f"[{address}]" if ":" in address else address
            # encoded=True: the caller's raw path and query go out byte for byte.
            url = URL(f"http://{host}:{target.port}{raw_path}", encoded=True)
            try:
                upstream = await self.session.request(
                    request.method, url, headers=headers, data=body, allow_redirects=False,
                    timeout=client_timeout, compress=None, chunked=None)
                break
            except aiohttp.ClientConnectorError as exc:
                # Nothing was sent: the next address of the same sandbox may answer.
                last_error = exc
                continue
            except BodyTooLarge:
                return self._upstream_failed(413, "request body too large", count=False)
            except BodyStalled:
                return self._stalled(request, timeout)
            except aiohttp.ConnectionTimeoutError:
                return self._upstream_failed(504, "connecting to the sandbox timed out")
            except TimeoutError:
                return self._upstream_failed(504, f"sandbox did not answer within {timeout:g}s")
            except (aiohttp.ClientError, OSError) as exc:
                if request.get(BODY_STALLED):
                    return self._stalled(request, timeout)
                log.info("upstream failed", extra={"error": _brief(exc)})
                return self._upstream_failed(502, "sandbox closed the connection")
        if upstream is None:
            log.info("upstream unreachable", extra={"error": _brief(last_error)})
            return self._upstream_failed(502, "sandbox unreachable")
        try:
            return await self._relay(request, upstream, started, timeout)
        finally:
            upstream.release()

    def _stalled(self, request: web.Request, timeout: float) -> web.Response:
        """The caller stopped sending its body: a 408, and the connection ends (the rest of
        the body would be read as the next request)."""
        self.metrics.refusals.labels("body_stalled").inc()
        response = error(408, f"request body stalled: nothing arrived for {timeout:g}s")
        response.force_close()
        return response

    def _upstream_failed(self, status: int, message: str, *, count: bool = True) -> web.Response:
        if count:
            self.metrics.upstream_errors.labels(str(status)).inc()
        return error(status, message)

    async def _relay(self, request: web.Request, upstream: aiohttp.ClientResponse,
                     started: float, timeout: float) -> web.StreamResponse:
        """Stream the sandbox's answer to the caller. Each write may wait `timeout` seconds
        for the caller to take bytes: one that reads nothing for that long is cut, as a
        sandbox that sends nothing would be, so it holds neither connection for good."""
        named = {token.strip().lower() for value in upstream.headers.getall("Connection", [])
                 for token in value.split(",")}
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in upstream.headers.items():
            lower = key.lower()
            if lower not in _DROP_RESPONSE and lower not in named:
                headers.add(key, value)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                      headers=CIMultiDictProxy(headers))
        length = upstream.content_length
        bodiless = request.method == "HEAD" or upstream.status in _NO_BODY_STATUS
        if length is not None and not bodiless:
            response.content_length = length
        elif request.method == "HEAD" and length is not None:
            response.headers["Content-Length"] = str(length)
        method = method_label(request.method)
        try:
            if not bodiless and length is not None and length <= self.config.buffer_body_bytes:
                # A small body goes out in the same write as the headers: one segment.
                data = await upstream.content.readexactly(length) if length else b""
                await response.prepare(request)
                self.metrics.latency.labels(method).observe(time.perf_counter() - started)
                async with _stall_bound(timeout, CallerStalled):
                    await response.write_eof(data)
                return response
            await response.prepare(request)
            self.metrics.latency.labels(method).observe(time.perf_counter() - started)
            if not bodiless:
                async for chunk in upstream.content.iter_any():
                    async with _stall_bound(timeout, CallerStalled):
                        await response.write(chunk)
            async with _stall_bound(timeout, CallerStalled):
                await response.write_eof()
        except CallerStalled as exc:
            return self._abort(request, response, exc)
        except (aiohttp.ClientError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
            if not response.prepared:
                if isinstance(exc, TimeoutError):
                    return self._upstream_failed(504, "sandbox stopped answering")
                return self._upstream_failed(502, "sandbox closed the connection")
            return self._abort(request, response, exc)
        return response

    def _abort(self, request: web.Request, response: web.StreamResponse,
               exc: BaseException) -> web.StreamResponse:
        """The stream broke after the answer began: cut the client's connection too, so a
        truncated body can never look complete (no final chunk is written)."""
        self.metrics.upstream_errors.labels("aborted").inc()
        log.info("stream aborted", extra={"error": _brief(exc)})
        if request.transport is not None:
            request.transport.abort()
        return response


def _brief(exc: BaseException | None) -> str:
    """An exception for a log line: its type and the start of its message (which may quote
    whole upstream bytes)."""
    return f"{type(exc).__name__}: {str(exc)[:200]}"


class BodyTooLarge(Exception):
    """The caller's streamed body passed max_body_bytes."""


class BodyStalled(Exception):
    """The caller sent no byte of its body for the request's timeout."""


class CallerStalled(Exception):
    """The caller took no byte of the answer for the request's timeout."""


@contextlib.asynccontextmanager
async def _stall_bound(timeout: float, stalled: type[Exception]) -> AsyncIterator[None]:
    """A wait on the caller (for its body, or for it to take the answer) longer than
    `timeout` raises `stalled`, not TimeoutError, which would read as the sandbox's fault."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise stalled() from None
