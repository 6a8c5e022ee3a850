"""A raw asyncio HTTP/1.1 keep-alive client for load: many connections, little overhead.

Used by bench_router.py (requests/s at 16 connections, 500 connections held). It speaks just
enough HTTP/1.1 for small answers with a Content-Length, so the client costs as little CPU as
possible on a machine it shares with the server it measures.
"""

from __future__ import annotations

import asyncio
import time


async def open_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
              request: bytes) -> int:
    """Send one request on a kept-alive connection; its status, once its body is read."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status


def get_request(headers: dict[str, str]) -> bytes:
    """`GET /` with `headers`, as bytes for get()."""
    lines = ["GET / HTTP/1.1", "Host: bench", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def throughput(port: int, request: bytes, connections: int, seconds: float) -> tuple[
        float, int]:
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done, errors
        reader, writer = await open_connection(port)
        try:
            while time.perf_counter() < stop:
                if await get(reader, writer, request) == 200:
                    done += 1
                else:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return done / (time.perf_counter() - started), errors


async def hold(port: int, request: bytes, connections: int) -> tuple[int, int, float]:
    """Open `connections` keep-alive connections, use each, hold them all, use each again."""
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors = ok = 0
    started = time.perf_counter()
    try:
        for batch in range(0, connections, 100):
            opened += await asyncio.gather(*(open_connection(port) for _ in range(
                min(100, connections - batch))))
        for _ in range(2):
            results = await asyncio.gather(*(get(r, w, request) for r, w in opened),
                                           return_exceptions=True)
            ok += sum(1 for x in results if x == 200)
            errors += sum(1 for x in results if x != 200)
    finally:
        for _, writer in opened:
            writer.close()
    return ok, errors, time.perf_counter() - started
