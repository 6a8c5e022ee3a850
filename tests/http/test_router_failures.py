"""Timeouts, unreachable or misbehaving sandboxes, size limits and request smuggling.

Real router process; misbehaving upstreams are raw sockets (router_fixtures.RawUpstream).
Timing bounds here are generous sanity checks only; speed is measured in bench/.
"""

from __future__ import annotations

import time

import pytest
import requests

from tests.http.router_fixtures import TOKEN, raw_request, stack


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # A small default timeout and body limit, so the tests need not wait or send much.
    with stack(tmp_path_factory.mktemp("router-failures"),
               env={"SANDBOX_ROUTER_DEFAULT_TIMEOUT": "1", "SANDBOX_ROUTER_MAX_TIMEOUT": "2",
                    "SANDBOX_ROUTER_MAX_BODY_BYTES": str(1024 * 1024)}) as s:
        yield s


def test_upstream_slower_than_the_timeout_header_is_504(env):
    started = time.monotonic()
    response = requests.get(env.url + "/__sleep?s=10", timeout=15,
                            headers=env.headers(**{"X-Sandbox-Timeout": "0.3"}))
    assert response.status_code == 504
    assert "0.3" in response.json()["error"]
    assert time.monotonic() - started < 8  # sanity: it did not wait for the sleep


def test_server_default_timeout_applies_without_a_header(env):
    response = requests.get(env.url + "/__sleep?s=10", headers=env.headers(), timeout=15)
    assert response.status_code == 504


def test_timeout_header_is_capped_by_the_server_maximum(env):
    started = time.monotonic()
    response = requests.get(env.url + "/__sleep?s=10", timeout=15,
                            headers=env.headers(**{"X-Sandbox-Timeout": "9999"}))
    assert response.status_code == 504
    assert "within 2s" in response.json()["error"]
    assert time.monotonic() - started < 8


def test_fast_enough_upstream_beats_its_timeout(env):
    response = requests.get(env.url + "/__sleep?s=0.1", timeout=15,
                            headers=env.headers(**{"X-Sandbox-Timeout": "1.5"}))
    assert response.status_code == 200
    assert response.json() == {"slept": 0.1}


@pytest.mark.parametrize("value", ["0", "-1", "abc", "1e3", "inf", "nan", "1.2345", "0x10"])
def test_malformed_timeout_header_is_400(env, value):
    response = requests.get(env.url + "/", timeout=10,
                            headers=env.headers(**{"X-Sandbox-Timeout": value}))
    assert response.status_code == 400
    assert "X-Sandbox-Timeout" in response.json()["error"]


def test_stall_after_the_answer_began_cuts_the_client_connection(env):
    # Headers and 100 kB of 1 MB arrive, then silence past the timeout: the client must see
    # a broken body, never a short body that looks complete.
    response = requests.get(env.url + "/__stall?s=5", headers=env.headers(), stream=True,
                            timeout=15)
    assert response.status_code == 200
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        body = response.content
        raise AssertionError(f"body ended cleanly after {len(body)} bytes")


def test_stall_before_a_small_answer_is_whole_is_504(env):
    # Bodies up to the buffer size are read whole before answering, so a stall is still a 504.
    response = requests.get(env.url + "/__stall?s=5&len=1000", headers=env.headers(),
                            timeout=10)
    assert response.status_code == 504
    assert "error" in response.json()


def test_declared_port_with_nothing_listening_is_502(env):
    response = requests.get(env.url + "/", headers=env.headers("dead", port=env.dead_port),
                            timeout=10)
    assert response.status_code == 502
    assert response.json() == {"error": "sandbox unreachable"}


def test_upstream_closing_without_an_answer_is_502(env):
    response = requests.get(env.url + "/close", headers=env.headers("raw"), timeout=10)
    assert response.status_code == 502
    assert "error" in response.json()


def test_upstream_answering_garbage_is_502(env):
    response = requests.get(env.url + "/garbage", headers=env.headers("raw"), timeout=10)
    assert response.status_code == 502


def test_upstream_cutting_a_small_body_short_is_502(env):
    # A small body is read whole before the answer starts, so the router can still say 502.
    response = requests.get(env.url + "/cut", headers=env.headers("raw"), timeout=10)
    assert response.status_code == 502
    assert "error" in response.json()


@pytest.mark.parametrize("path", ["/cut-big", "/cut-chunked"])
def test_upstream_cutting_the_body_short_breaks_the_client_body(env, path):
    with pytest.raises((requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ConnectionError)):
        response = requests.get(env.url + path, headers=env.headers("raw"), timeout=10)
        raise AssertionError(f"got a complete body of {len(response.content)} bytes")


def test_upstream_errors_are_counted_by_status(env):
    requests.get(env.url + "/", headers=env.headers("dead", port=env.dead_port), timeout=10)
    text = requests.get(env.url + "/metrics", timeout=10).text
    assert 'sandbox_router_upstream_errors_total{status="502"}' in text
    assert 'sandbox_router_upstream_errors_total{status="504"}' in text


def test_declared_body_over_the_limit_is_413_before_connecting(env):
    before = len(env.upstream.requests)
    response = requests.post(env.url + "/up", data=b"x" * (1024 * 1024 + 1),
                             headers=env.headers(), timeout=10)
    assert response.status_code == 413
    assert len(env.upstream.requests) == before


def test_chunked_body_over_the_limit_is_cut_off(env):
    def body():
        for _ in range(40):
            yield b"x" * 65536

    try:
        response = requests.post(env.url + "/up", data=body(), headers=env.headers(),
                                 timeout=10)
    except requests.exceptions.ConnectionError:
        return  # the router hung up mid-upload: acceptable, nothing got through whole
    assert response.status_code in (413, 502)
    assert all(r["body_size"] <= 1024 * 1024 for r in env.upstream.requests)


def test_router_still_serves_after_all_that(env):
    assert requests.get(env.url + "/ok", headers=env.headers(), timeout=10).status_code == 200


# Request smuggling: the router's parser must refuse ambiguous framing, and whatever it
# forwards is re-framed by the router itself, so no smuggled request reaches a sandbox.
SMUGGLING = {
    "cl_and_te": b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te_and_cl": b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two_lengths": b"Content-Length: 0\r\nContent-Length: 44\r\n\r\n",
    "length_list": b"Content-Length: 0, 44\r\n\r\n",
    "signed_length": b"Content-Length: +0\r\n\r\n",
    "hex_length": b"Content-Length: 0x0\r\n\r\n",
    "te_list": b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te_unknown": b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te_space_before_colon": b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te_obs_fold": b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad_chunk_size": b"Transfer-Encoding: chunked\r\n\r\n0x0\r\n\r\n",
    "chunk_ext_lf": b"Transfer-Encoding: chunked\r\n\r\n0;\n\r\n",
    "bare_lf_headers": b"Content-Length: 0\n\n",
}


@pytest.mark.parametrize("name", sorted(SMUGGLING))
def test_ambiguous_framing_is_refused_and_smuggles_nothing(env, name):
    smuggled = (f"GET /smuggled-{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"X-Sandbox-ID: echo\r\nX-Sandbox-Port: {env.upstream.port}\r\n\r\n").encode()
    head = (f"POST /front-{name} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"X-Sandbox-ID: echo\r\nX-Sandbox-Port: {env.upstream.port}\r\n").encode()
    answer = raw_request(env.router_port, head + SMUGGLING[name] + smuggled, timeout=3)
    assert answer[:12] in (b"HTTP/1.1 400", b"HTTP/1.0 400"), answer[:200]
    assert not any(p.startswith(f"/smuggled-{name}") for p in env.upstream.paths())
    assert not any(p.startswith(f"/front-{name}") for p in env.upstream.paths())


def test_well_framed_pipelined_requests_stay_separate(env):
    one = (f"POST /pipe-1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
           f"X-Sandbox-ID: echo\r\nX-Sandbox-Port: {env.upstream.port}\r\n"
           f"Content-Length: 5\r\n\r\nhello").encode()
    two = (f"GET /pipe-2 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
           f"X-Sandbox-ID: echo\r\nX-Sandbox-Port: {env.upstream.port}\r\n"
           f"Connection: close\r\n\r\n").encode()
    answer = raw_request(env.router_port, one + two, timeout=5)
    assert answer.count(b"HTTP/1.1 200") == 2
    records = {r["raw_path"]: r for r in env.upstream.requests}
    assert records["/pipe-1"]["body_size"] == 5
    assert records["/pipe-2"]["body_size"] == 0
