"""The router's client-connection bound (sandbox_router.connections), on fake connections.

The real router under idle, slow-header and held connections is tests/http/test_security_router.py.
"""

from __future__ import annotations

import asyncio

import pytest

from sandbox_router.connections import REFUSAL, ConnectionGuard, descriptor_budget


class FakeTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)


class FakeHandler:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def force_close(self) -> None:
        self.closed = True


def open_many(guard: ConnectionGuard, count: int) -> list[FakeHandler]:
    handlers = [FakeHandler(str(index)) for index in range(count)]
    for handler in handlers:
        guard.opened(handler, FakeTransport())
    return handlers


def test_the_longest_idle_connection_makes_room():
    closed: list[str] = []
    guard = ConnectionGuard(3, on_close=closed.append)
    first, second, third = open_many(guard, 3)
    with guard.serving(first):
        pass  # first answered a request: now the most recently active
    (fourth,) = open_many(guard, 1)
    assert second.closed and not first.closed and not third.closed and not fourth.closed
    assert closed == ["evicted_idle"] and len(guard) == 3


def test_a_connection_serving_a_request_is_never_closed_for_room():
    guard = ConnectionGuard(2)
    first, second = open_many(guard, 2)
    with guard.serving(first):
        (third,) = open_many(guard, 1)
        assert second.closed and not first.closed and not third.closed


def test_when_every_connection_is_busy_the_new_one_gets_the_503():
    closed: list[str] = []
    guard = ConnectionGuard(2, on_close=closed.append)
    first, second = open_many(guard, 2)
    with guard.serving(first), guard.serving(second):
        newcomer, transport = FakeHandler("new"), FakeTransport()
        guard.opened(newcomer, transport)
        assert newcomer.closed and transport.written == REFUSAL
        assert not first.closed and not second.closed
    assert closed == ["refused"] and len(guard) == 2
    assert REFUSAL.startswith(b"HTTP/1.1 503 ") and REFUSAL.endswith(b'"}')


def test_closed_connections_leave_the_count():
    guard = ConnectionGuard(5)
    handlers = open_many(guard, 4)
    for handler in handlers[:3]:
        guard.closed(handler)
    assert len(guard) == 1


@pytest.mark.parametrize(("nofile", "limit", "backlog"), [
    (1 << 20, 4096, 1024), (20000, 4096, 1024), (2048, 608, 256), (1024, 288, 128),
    (64, 1, 16),
])
def test_the_bound_fits_the_descriptor_limit(nofile, limit, backlog):
    assert descriptor_budget(4096, nofile) == (limit, backlog)
