"""The runtime's own multipart parser (POST /upload) on a real server: framing edge cases.

The server reads the body in chunks of `multipart.CHUNK` bytes and looks for the closing
delimiter where each chunk lies, holding back only the bytes that might start one; these
tests put delimiters and near-delimiters across that chunk boundary, and check that every
framing the RFC allows is accepted and everything else is refused with nothing left behind.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from sandbox_runtime import multipart

BOUNDARY = "7MA4YWxkTrZu0gW"


def form(name: str, data: bytes, *, boundary: str = BOUNDARY, preamble: bytes = b"",
         epilogue: bytes = b"\r\n", field: str = "file") -> tuple[bytes, bytes, bytes]:
    head = (preamble + f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n".encode())
    tail = f"\r\n--{boundary}--".encode() + epilogue
    return head, data, tail


def post(runtime, head: bytes, data: bytes, tail: bytes, boundary: str = BOUNDARY):
    return runtime.post("/upload", data=head + data + tail, headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})


def assert_stored(runtime, response, name: str, data: bytes) -> None:
    assert response.status_code == 200, response.text
    assert response.json() == {"path": name, "size": len(data)}
    stored = (runtime.workspace / name).read_bytes()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(data).digest()
    leftovers = [n for n in os.listdir(runtime.workspace) if ".upload-" in n]
    assert leftovers == []


@pytest.mark.parametrize("shift", [-1, 0, 1, 2, 5, len(BOUNDARY) + 3, len(BOUNDARY) + 4,
                                   len(BOUNDARY) + 5])
def test_delimiter_across_the_read_boundary(runtime, shift):
    """The closing delimiter starts `shift` bytes before the end of the first chunk."""
    head, _, tail = form("straddle.bin", b"")
    size = multipart.CHUNK - len(head) - shift
    data = os.urandom(size)
    assert_stored(runtime, post(runtime, head, data, tail), "straddle.bin", data)


@pytest.mark.parametrize("shift", [1, 3, len(BOUNDARY) + 3])
def test_delimiter_prefix_in_the_data_is_data(runtime, shift):
    """Bytes that start like the delimiter (across the chunk end, too) belong to the file."""
    head, _, tail = form("near.bin", b"")
    near = f"\r\n--{BOUNDARY[:-1]}".encode()
    before = multipart.CHUNK - len(head) - shift
    data = os.urandom(before) + near + b"X" + near[:5] + f"--{BOUNDARY}".encode() + b"end"
    assert_stored(runtime, post(runtime, head, data, tail), "near.bin", data)


def test_preamble_epilogue_padding_and_empty_file(runtime):
    head, _, tail = form("empty.txt", b"", preamble=b"ignored preamble\r\n",
                         epilogue=b"\r\nignored epilogue")
    assert_stored(runtime, post(runtime, head, b"", tail), "empty.txt", b"")
    # Transport padding after the first boundary, and no CRLF after the close delimiter.
    body = (f"--{BOUNDARY} \t\r\nContent-Disposition: form-data; name=file; "
            f"filename=pad.txt\r\n\r\nabc\r\n--{BOUNDARY}--").encode()
    assert_stored(runtime, post(runtime, body, b"", b""), "pad.txt", b"abc")


def test_rfc2231_filename_and_folded_header(runtime):
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\";\r\n"
            f" filename*=UTF-8''caf%C3%A9.txt\r\n\r\ncoffee\r\n--{BOUNDARY}--\r\n").encode()
    assert_stored(runtime, post(runtime, body, b"", b""), "café.txt", b"coffee")


@pytest.mark.parametrize(("body", "message"), [
    # A second part after the file.
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"two.txt\""
     f"\r\n\r\none\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
     f"filename=\"two.txt\"\r\n\r\ntwo\r\n--{BOUNDARY}--\r\n", "exactly one"),
    # The file under another field name.
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"two.txt\""
     f"\r\n\r\none\r\n--{BOUNDARY}--\r\n", "'upload'"),
    # No Content-Disposition.
    (f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\none\r\n--{BOUNDARY}--\r\n",
     "Content-Disposition"),
    # Junk right after the delimiter.
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"two.txt\""
     f"\r\n\r\none\r\n--{BOUNDARY}junk", "malformed"),
    # No part at all, only the close delimiter.
    (f"--{BOUNDARY}--\r\n", "no 'file'"),
    # Headers that never end.
    (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"two.txt\""
     + "\r\nX-Pad: " + "p" * 40000, "malformed"),
])
def test_bad_framing_is_400_and_leaves_nothing(runtime, body, message):
    before = set(os.listdir(runtime.workspace))
    response = post(runtime, body.encode(), b"", b"")
    assert response.status_code == 400, response.text
    assert message in response.json()["error"]
    assert set(os.listdir(runtime.workspace)) == before


def test_replacing_a_file_many_times_keeps_the_last(runtime):
    """Replaced files are released after the answer; the newest content always wins."""
    for i in range(20):
        data = os.urandom(64 * 1024) + str(i).encode()
        head, _, tail = form("again.bin", data)
        assert_stored(runtime, post(runtime, head, data, tail), "again.bin", data)
