"""sandbox_common.serving's pure parts: where a request head ends, how its body is framed,
when a chunked body has ended, and the pace that cuts a stalled or trickled body.

The worker itself (the main loop reading heads and bodies) is tested over TCP in
tests/http/test_serving.py; these pin the rules it decides with, case by case.
"""

from __future__ import annotations

import socket
import time

import pytest

from sandbox_common import paced as pacing
from sandbox_common.serving import ChunkScan, Framing, PacedSocket, framing, head_end

HEAD = b"POST /x HTTP/1.1\r\nHost: h\r\n"


def test_head_end_is_after_the_first_blank_line_either_spelling():
    head = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    assert head_end(head + b"body") == len(head)
    assert head_end(b"GET / HTTP/1.1\nHost: h\n\nbody") == len(b"GET / HTTP/1.1\nHost: h\n\n")
    assert head_end(b"GET / HTTP/1.1\r\nHost: h\r\n") is None


@pytest.mark.parametrize(("headers", "expected"), [
    (b"", Framing()),
    (b"Content-Length: 0\r\n", Framing(length=0)),
    (b"content-length:  12 \r\n", Framing(length=12)),
    (b"Content-Length: 5\r\nExpect: 100-Continue\r\n", Framing(length=5, expects_continue=True)),
    (b"Content-Length: 0\r\nExpect: 100-continue\r\n", Framing(length=0)),
    (b"Transfer-Encoding: chunked\r\n", Framing(chunked=True)),
    (b"Transfer-Encoding: gzip, chunked\r\n", Framing(chunked=True)),
    (b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n",
     Framing(chunked=True, expects_continue=True)),
    # What gunicorn refuses with a 400 or 501 before reading any body: nothing to wait for.
    (b"Content-Length: 5\r\nContent-Length: 5\r\n", Framing()),
    (b"Content-Length: +5\r\n", Framing()),
    (b"Content-Length: 0x5\r\n", Framing()),
    (b"Content-Length: \xb2\r\n", Framing()),
    (b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", Framing()),
    (b"Transfer-Encoding: chunked, gzip\r\n", Framing()),
    (b"Transfer-Encoding: chunked, chunked\r\n", Framing()),
    (b"Transfer-Encoding: foo, chunked\r\n", Framing()),
])
def test_framing_reads_a_head_as_gunicorn_does(headers, expected):
    assert framing(HEAD + headers + b"\r\n") == expected


def test_http10_chunked_is_refused_and_its_expectation_ignored():
    head = b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert framing(head) == Framing()
    assert framing(b"POST /x HTTP/1.0\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n") \
        == Framing(length=3)


def scan(body: bytes, pieces: int = 1) -> list[str]:
    """ChunkScan's answer after each of `pieces` growing prefixes of a request with `body`."""
    head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
    scanner = ChunkScan(len(head))
    cuts = [len(body) * (i + 1) // pieces for i in range(pieces)]
    return [scanner.feed(head + body[:cut]) for cut in cuts]


@pytest.mark.parametrize("body", [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5;ext=1\r\nhello\r\n3\r\nabc\r\n0\r\nX-T: 1\r\nY-T: 2\r\n\r\n",
    b"A\r\n0123456789\r\n0\r\n\r\n",
])
def test_a_chunked_body_ends_with_its_last_chunk_and_trailers(body):
    assert scan(body) == [ChunkScan.DONE]
    # Arriving a byte at a time, it ends only at its last byte.
    answers = scan(body, pieces=len(body))
    assert answers == [ChunkScan.MORE] * (len(body) - 1) + [ChunkScan.DONE]


@pytest.mark.parametrize("body", [b"", b"5\r\nhel", b"5\r\nhello\r", b"5\r\nhello\r\n",
                                  b"0\r\n", b"0\r\nX: 1\r\n", b"5\nhello\n0\n\n"])
def test_a_chunked_body_not_ended_is_awaited(body):
    assert scan(body) == [ChunkScan.MORE]


@pytest.mark.parametrize("body", [b"zz\r\n", b"\r\n", b"-1\r\n", b"0x5\r\nhello\r\n",
                                  b" 5\r\nhello\r\n", b"5\r\nhelloXX0\r\n\r\n",
                                  b"5\r\nhello\r\nzz\r\n"])
def test_a_malformed_chunked_body_is_bad_at_once(body):
    assert scan(body) == [ChunkScan.BAD]  # answered 400 by the worker, no app involved
    assert scan(body + b"0\r\n\r\n") == [ChunkScan.BAD]


def test_a_chunk_size_line_too_long_to_judge_is_left_to_gunicorn():
    assert scan(b"5" * 5000) == [ChunkScan.DONE]


def test_pace_grows_with_what_arrived():
    assert pacing.pace(100.0, 0) == 100.0 + pacing.GRACE_S
    assert pacing.pace(100.0, pacing.MIN_RATE * 10) == 100.0 + pacing.GRACE_S + 10


def test_a_paced_socket_reads_while_on_pace_and_ends_the_body_after(monkeypatch):
    monkeypatch.setattr(pacing, "GRACE_S", 0.3)
    monkeypatch.setattr(pacing, "MIN_RATE", 100)  # each byte buys 10 ms
    ours, theirs = socket.socketpair()
    with ours, theirs:
        paced = PacedSocket(ours)
        paced.restart(time.monotonic(), 0)
        theirs.sendall(b"x" * 20)  # 200 ms more
        assert paced.recv(100) == b"x" * 20
        start = time.monotonic()
        assert paced.recv(100) == b""  # the client stalls: the body ends at its pace
        waited = time.monotonic() - start
        assert 0.3 <= waited < 5, waited
        assert ours.recv(100) == b""  # shut for reading: no late byte is read as body
        assert paced.fileno() == ours.fileno()  # the rest is the socket's own


def test_a_paced_socket_writes_to_a_reader_and_gives_up_on_one_that_stops(monkeypatch, tmp_path):
    monkeypatch.setattr(pacing, "SEND_GRACE_S", 0.3)
    source = tmp_path / "file"
    source.write_bytes(b"f" * 100_000)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        paced = PacedSocket(ours)
        paced.sendall(b"head")
        with source.open("rb") as f:
            assert paced.sendfile(f, 10, 50) == 50
            assert f.tell() == 60  # socket.sendfile's contract: the position after it
        assert ours.gettimeout() is None  # blocking again, as the thread had it
        received = b""
        while len(received) < 54:
            received += theirs.recv(100)
        assert received == b"head" + b"f" * 50
        began = time.monotonic()
        with pytest.raises(OSError):  # the peer reads nothing more: cut at its pace
            paced.sendall(b"x" * (64 << 20))
        assert time.monotonic() - began < 30
