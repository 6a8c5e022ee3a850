"""The router forwards method, raw path, query, headers and body, and answers as the sandbox.

Real `sandbox-router` process in front of a real upstream on loopback (router_fixtures).
"""

from __future__ import annotations

import gzip
import hashlib

import pytest
import requests

from sandbox_common import contract
from tests.http.router_fixtures import TOKEN


@pytest.fixture
def env(router_stack):
    """The session's router in front of the test upstreams (tests/http/conftest.py)."""
    return router_stack


def echoed(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers.get("X-Echo") == "1"
    return response.json()


def header_values(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_method_is_forwarded(env, method):
    record = echoed(requests.request(method, env.url + "/m", headers=env.headers(), timeout=10))
    assert record["method"] == method


def test_unusual_method_is_forwarded(env):
    record = echoed(requests.request("PROPFIND", env.url + "/dav", headers=env.headers(),
                                     timeout=10))
    assert record["method"] == "PROPFIND"


def test_raw_path_and_query_go_out_byte_for_byte(env):
    path = "/a%2Fb/../c;x/%7E%20sp?q=1&q=2&e=%20&u=%E2%9C%93&empty="
    # requests would normalise; a prepared request keeps the path exactly.
    session = requests.Session()
    prepared = requests.Request("GET", env.url + "/", headers=env.headers()).prepare()
    prepared.url = env.url + path
    record = echoed(session.send(prepared, timeout=10))
    assert record["raw_path"] == path


def test_double_slash_path_is_a_path_not_a_host(env):
    session = requests.Session()
    prepared = requests.Request("GET", env.url + "/", headers=env.headers()).prepare()
    prepared.url = f"{env.url}//127.0.0.1:{env.tripwire.port}/x"
    record = echoed(session.send(prepared, timeout=10))
    assert record["raw_path"] == f"//127.0.0.1:{env.tripwire.port}/x"
    assert env.tripwire.connections == 0


def test_body_and_its_length_are_forwarded(env):
    body = b"\x00binary\xffpayload" * 1000
    record = echoed(requests.post(env.url + "/upload", data=body, headers=env.headers(),
                                  timeout=10))
    assert record["body_size"] == len(body)
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(record, "Content-Length") == [str(len(body))]


def test_large_body_with_length_streams_with_its_length(env):
    body = b"z" * (8 * 1024 * 1024 + 3)
    record = echoed(requests.post(env.url + "/upload", data=body, headers=env.headers(),
                                  timeout=30))
    assert record["body_size"] == len(body)
    assert record["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert header_values(record, "Content-Length") == [str(len(body))]
    assert not record["chunked"]


def test_chunked_body_is_forwarded_chunked(env):
    parts = [b"first-part ", b"second-part ", b"x" * 100_000]
    record = echoed(requests.post(env.url + "/upload", data=iter(parts),
                                  headers=env.headers(), timeout=10))
    joined = b"".join(parts)
    assert record["body_size"] == len(joined)
    assert record["body_sha256"] == hashlib.sha256(joined).hexdigest()
    assert record["chunked"]


def test_end_to_end_headers_are_preserved(env):
    headers = env.headers(**{"X-Custom": "value; with=stuff", "User-Agent": "agent/1.0",
                             "Cookie": "session=abc", "Accept-Encoding": "identity",
                             "Content-Type": "application/json"})
    record = echoed(requests.post(env.url + "/h", data=b"{}", headers=headers, timeout=10))
    assert header_values(record, "X-Custom") == ["value; with=stuff"]
    assert header_values(record, "User-Agent") == ["agent/1.0"]
    assert header_values(record, "Cookie") == ["session=abc"]
    assert header_values(record, "Content-Type") == ["application/json"]
    assert header_values(record, "Accept-Encoding") == ["identity"]
    assert header_values(record, "X-Forwarded-For") == ["127.0.0.1"]


def test_no_header_is_invented(env):
    # http.client sends only what we give it (plus Host and Accept-Encoding we cannot drop).
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", env.router_port, timeout=10)
    conn.putrequest("GET", "/bare", skip_accept_encoding=True)
    for key, value in env.headers().items():
        conn.putheader(key, value)
    conn.endheaders()
    record = echoed_raw(conn.getresponse())
    names = {k.lower() for k, _ in record["headers"]}
    assert names == {"host", "x-forwarded-for", "x-forwarded-host"}


def echoed_raw(response) -> dict:
    import json

    assert response.status == 200
    return json.loads(response.read())


def test_routing_credentials_and_hop_by_hop_headers_are_stripped(env):
    headers = env.headers(**{
        "X-Sandbox-Namespace": "default", "X-Sandbox-Timeout": "10",
        "Connection": "keep-alive, X-Secret-Hop", "X-Secret-Hop": "drop me",
        "Keep-Alive": "timeout=5", "TE": "trailers", "Upgrade": "websocket",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==", "Trailer": "X-Foo",
    })
    record = echoed(requests.get(env.url + "/strip", headers=headers, timeout=10))
    names = {k.lower() for k, _ in record["headers"]}
    for dropped in ("authorization", "x-sandbox-id", "x-sandbox-namespace", "x-sandbox-port",
                    "x-sandbox-timeout", "connection", "x-secret-hop", "keep-alive", "te",
                    "upgrade", "proxy-authorization", "trailer"):
        assert dropped not in names, dropped
    assert TOKEN not in str(record["headers"])


def test_repeated_headers_keep_every_value(env):
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", env.router_port, timeout=10)
    conn.putrequest("GET", "/multi")
    for key, value in env.headers().items():
        conn.putheader(key, value)
    conn.putheader("X-Repeat", "1")
    conn.putheader("X-Repeat", "2")
    conn.endheaders()
    record = echoed_raw(conn.getresponse())
    assert header_values(record, "X-Repeat") == ["1", "2"]


def test_response_status_headers_and_body_come_back(env):
    response = requests.get(env.url + "/__headers", headers=env.headers(), timeout=10)
    assert response.status_code == 200
    assert response.raw.headers.getlist("X-Multi") == ["one", "two"]
    assert response.headers["X-Upstream"] == "yes"
    # Hop-by-hop response headers, and those the upstream's Connection names, stay behind.
    assert "X-Private" not in response.headers
    assert "Keep-Alive" not in response.headers


def test_only_the_router_s_own_refusals_say_nothing_was_forwarded(env):
    """The mark lets a client resend even a command (tests/unit/test_client_retry.py): the
    router's refusals carry it; a sandbox's own answer never does, even when it sends it."""
    mark = contract.NOT_FORWARDED_HEADER
    unknown = requests.get(env.url + "/", headers=env.headers("nosuch"), timeout=10)
    assert unknown.status_code == 404 and unknown.headers[mark] == "true"
    unauthenticated = requests.get(env.url + "/", timeout=10, headers={
        **env.headers(), "Authorization": "Bearer wrong"})
    assert unauthenticated.status_code == 401 and unauthenticated.headers[mark] == "true"
    forged = requests.get(env.url + "/__status?code=503&forge=1", headers=env.headers(),
                          timeout=10)
    assert forged.status_code == 503 and forged.json() == {"upstream": 503}
    assert forged.headers["Retry-After"] == "1"
    assert mark not in forged.headers


@pytest.mark.parametrize("code", [201, 204, 301, 404, 409, 500, 503])
def test_upstream_status_passes_through(env, code):
    response = requests.get(env.url + f"/__status?code={code}", headers=env.headers(),
                            timeout=10, allow_redirects=False)
    assert response.status_code == code
    if code != 204:
        assert response.json() == {"upstream": code}


def test_set_cookie_passes_through_and_is_not_kept(env):
    response = requests.get(env.url + "/__cookie", headers=env.headers(), timeout=10)
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    # The router keeps no cookie jar: the next request, to another sandbox, carries none.
    record = echoed(requests.get(env.url + "/after", timeout=10,
                                 headers=env.headers(**{"X-Sandbox-Namespace": "team"})))
    assert header_values(record, "Cookie") == []


def test_compressed_bodies_pass_through_untouched(env):
    response = requests.get(env.url + "/__gzip", headers=env.headers(), stream=True, timeout=10)
    raw = response.raw.read(decode_content=False)
    assert response.headers["Content-Encoding"] == "gzip"
    assert int(response.headers["Content-Length"]) == len(raw)
    assert gzip.decompress(raw) == b"hello " * 1000


def test_redirects_are_returned_not_followed(env):
    to = f"http://127.0.0.1:{env.tripwire.port}/stolen"
    response = requests.get(env.url + f"/__redirect?to={to}", headers=env.headers(),
                            allow_redirects=False, timeout=10)
    assert response.status_code == 302
    assert response.headers["Location"] == to
    assert env.tripwire.connections == 0


def test_head_answers_headers_only(env):
    response = requests.head(env.url + "/__big?size=5000", headers=env.headers(), timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "5000"
    assert response.content == b""


def test_namespace_header_selects_the_namespace(env):
    headers = env.headers(**{"X-Sandbox-Namespace": "team"})
    echoed(requests.get(env.url + "/ns", headers=headers, timeout=10))
    headers = env.headers(**{"X-Sandbox-Namespace": "other"})
    response = requests.get(env.url + "/ns", headers=headers, timeout=10)
    assert response.status_code == 404
    assert "other/echo" in response.json()["error"]


def test_own_endpoints_answer_without_sandbox_header(env):
    health = requests.get(env.url + "/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert requests.get(env.url + "/readyz", timeout=10).status_code == 200
    metrics = requests.get(env.url + "/metrics", timeout=10)
    assert metrics.status_code == 200
    assert "sandbox_router_requests_total" in metrics.text
    assert "sandbox_router_request_duration_seconds_bucket" in metrics.text


def test_sandbox_healthz_is_forwarded_when_a_sandbox_is_named(env):
    record = echoed(requests.get(env.url + "/healthz", headers=env.headers(), timeout=10))
    assert record["raw_path"] == "/healthz"


def test_metrics_count_requests_by_status(env):
    requests.get(env.url + "/__status?code=418", headers=env.headers(), timeout=10)
    text = requests.get(env.url + "/metrics", timeout=10).text
    assert 'sandbox_router_requests_total{method="GET",status="418"}' in text
    assert "sandbox_router_known_sandboxes" in text


def test_many_requests_reuse_upstream_connections(env):
    session = requests.Session()
    for index in range(50):
        record = echoed(session.get(env.url + f"/k{index}", headers=env.headers(), timeout=10))
        assert record["raw_path"] == f"/k{index}"
