"""Never an open proxy: every refusal answers before any connection is opened.

The SSRF corpus runs against the real router. A RecordingListener on loopback (the tripwire)
is reachable through each bait sandbox's address (IPv4-mapped, 0.0.0.0, ::, ...) or is named
directly in headers, paths and Host; it must end the module with zero connections.
"""

from __future__ import annotations

import http.client

import pytest
import requests

from tests.http.router_fixtures import TOKEN, raw_request, stack


@pytest.fixture(scope="module")
def env(router_stack):
    """The session's router in front of the test upstreams (tests/http/conftest.py)."""
    yield router_stack
    # The module's last word: nothing, from any test above, reached the tripwire.
    assert router_stack.tripwire.connections == 0, router_stack.tripwire.received


def send(env, headers: dict[str, str], path: str = "/") -> requests.Response:
    full = {"Authorization": f"Bearer {TOKEN}", **headers}
    return requests.get(env.url + path, headers=full, timeout=10)


def test_the_tripwire_would_notice(env):
    # Guard: the listener really records connections (else the corpus proves nothing).
    from tests.http.router_fixtures import RecordingListener

    with RecordingListener() as probe:
        raw_request(probe.port, b"GET / HTTP/1.1\r\n\r\n", timeout=2)
    assert probe.connections == 1


BAD_NAMES = [
    "127.0.0.1", "localhost:{trip}", "http://127.0.0.1:{trip}/", "0x7f.1",
    "0177.0.0.1", "127.1", "[::1]", "::1", "::ffff:127.0.0.1", "169.254.169.254",
    "metadata.google.internal", "echo.default.svc.cluster.local", "echo.default", "ECHO",
    "-echo", "echo-", "echo_1", "echo/../raw", "../echo", "echo%2F..", "echo@127.0.0.1",
    "echo:{trip}", "echo#x", "echo?x", "echo x", "a" * 64, "é", "echo\tx",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_malformed_sandbox_names_are_400(env, name):
    response = send(env, {"X-Sandbox-ID": name.format(trip=env.tripwire.port)})
    assert response.status_code == 400
    assert "X-Sandbox-ID" in response.json()["error"]


# Valid DNS labels that merely look like addresses or hosts: looked up, not found, 404.
@pytest.mark.parametrize("name", ["2130706433", "0x7f000001", "localhost", "kubernetes",
                                  "metadata-server", "0"])
def test_address_like_labels_are_unknown_sandboxes(env, name):
    response = send(env, {"X-Sandbox-ID": name})
    assert response.status_code == 404
    assert "no sandbox" in response.json()["error"]


@pytest.mark.parametrize("namespace", ["kube-system", "other", "team2"])
def test_other_namespaces_sandboxes_are_unknown(env, namespace):
    response = send(env, {"X-Sandbox-ID": "echo", "X-Sandbox-Namespace": namespace,
                          "X-Sandbox-Port": str(env.upstream.port)})
    assert response.status_code == 404


@pytest.mark.parametrize("namespace", ["default/x", "../default", "Default", "default.svc",
                                       "a" * 64, "kube_system"])
def test_malformed_namespaces_are_400(env, namespace):
    response = send(env, {"X-Sandbox-ID": "echo", "X-Sandbox-Namespace": namespace})
    assert response.status_code == 400
    assert "X-Sandbox-Namespace" in response.json()["error"]


@pytest.mark.parametrize("port", ["08888", "+8888", "-1", "0", "65536", "99999", "0x22b8",
                                  "8888.0", "1e3", "8888,9999", "8888 9999", "port"])
def test_malformed_ports_are_400(env, port):
    response = send(env, {"X-Sandbox-ID": "echo", "X-Sandbox-Port": port})
    assert response.status_code == 400
    assert "X-Sandbox-Port" in response.json()["error"]


def test_undeclared_port_is_404_even_when_something_listens_there(env):
    response = send(env, {"X-Sandbox-ID": "echo", "X-Sandbox-Port": str(env.tripwire.port)})
    assert response.status_code == 404
    assert "declares no port" in response.json()["error"]


def test_declared_port_of_a_sandbox_is_the_only_way_through(env):
    response = send(env, {"X-Sandbox-ID": "echo", "X-Sandbox-Port": str(env.upstream.port)})
    assert response.status_code == 200


@pytest.mark.parametrize("bait", ["mapped", "zero", "zero6", "compat", "metadata",
                                  "linklocal6", "multicast", "broadcast", "nat64"])
def test_sandbox_addresses_the_policy_forbids_are_never_dialled(env, bait):
    port = "80" if bait == "metadata" else str(env.tripwire.port)
    response = send(env, {"X-Sandbox-ID": bait, "X-Sandbox-Port": port})
    assert response.status_code == 502
    assert "refused by policy" in response.json()["error"]
    assert env.tripwire.connections == 0


def test_sandbox_without_an_address_is_502(env):
    response = send(env, {"X-Sandbox-ID": "noaddr", "X-Sandbox-Port": str(env.tripwire.port)})
    assert response.status_code == 502
    assert "no pod address" in response.json()["error"]


def test_host_header_does_not_choose_the_target(env):
    conn = http.client.HTTPConnection("127.0.0.1", env.router_port, timeout=10)
    conn.putrequest("GET", "/via-host", skip_host=True)
    conn.putheader("Host", f"127.0.0.1:{env.tripwire.port}")
    for key, value in {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": "echo",
                       "X-Sandbox-Port": str(env.upstream.port),
                       "X-Forwarded-Host": f"127.0.0.1:{env.tripwire.port}"}.items():
        conn.putheader(key, value)
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 200
    assert env.upstream.paths()[-1] == "/via-host"


@pytest.mark.parametrize("target", ["http://127.0.0.1:{trip}/x", "127.0.0.1:{trip}",
                                    "http://127.0.0.1:{trip}"])
def test_absolute_and_authority_form_targets_are_refused(env, target):
    line = target.format(trip=env.tripwire.port)
    method = "CONNECT" if "://" not in line else "GET"
    payload = (f"{method} {line} HTTP/1.1\r\nHost: 127.0.0.1:{env.tripwire.port}\r\n"
               f"Authorization: Bearer {TOKEN}\r\nX-Sandbox-ID: echo\r\n"
               f"X-Sandbox-Port: {env.upstream.port}\r\nConnection: close\r\n\r\n").encode()
    answer = raw_request(env.router_port, payload)
    status = int(answer.split(b" ", 2)[1])
    assert status == 400
    assert env.tripwire.connections == 0


def test_repeated_routing_headers_are_ambiguous(env):
    conn = http.client.HTTPConnection("127.0.0.1", env.router_port, timeout=10)
    conn.putrequest("GET", "/")
    conn.putheader("Authorization", f"Bearer {TOKEN}")
    conn.putheader("X-Sandbox-ID", "echo")
    conn.putheader("X-Sandbox-ID", "raw")
    conn.endheaders()
    assert conn.getresponse().status == 400


def test_refusals_are_counted_not_connected(env):
    send(env, {"X-Sandbox-ID": "zero", "X-Sandbox-Port": str(env.tripwire.port)})
    text = requests.get(env.url + "/metrics", timeout=10).text
    assert 'sandbox_router_refusals_total{reason="NoAddress"}' in text
    assert 'sandbox_router_refusals_total{reason="bad_route"}' in text


def test_default_policy_refuses_loopback(tmp_path):
    # Same sandboxes, but the static file does not opt in to loopback: the secure default.
    with stack(tmp_path, allow_loopback=False) as s:
        response = requests.get(s.url + "/", headers=s.headers(), timeout=10)
        assert response.status_code == 502
        assert "refused by policy" in response.json()["error"]
        assert s.upstream.requests == []
