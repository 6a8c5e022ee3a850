"""The local backend's launcher-side pieces of the runtime that need no sandbox."""

from urllib.parse import unquote_to_bytes as reference

from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox_runtime.stdio import unquote_to_bytes

PIECES = st.sampled_from(["%", "%2e", "%2E", "%2", "%zz", "%%", "a", "/", "..", "+", " ",
                          "\xe9", "\u20ac", "%c3%a9", "%0"])


@settings(max_examples=500, deadline=None)
@given(st.lists(PIECES, max_size=12).map("".join))
def test_unquote_matches_urllib(text):
    assert unquote_to_bytes(text) == reference(text)


def test_unquote_examples():
    assert unquote_to_bytes("/files/%2e%2e/etc") == b"/files/../etc"
    assert unquote_to_bytes("100%") == b"100%"
    assert unquote_to_bytes("%C3%A9") == "\xe9".encode()
