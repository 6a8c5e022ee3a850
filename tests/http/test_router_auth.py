"""Authentication: a bearer token, required by default, checked before anything else.

Real router processes with the token in the environment, in a file (a mounted Secret), or
explicitly disabled with --insecure-no-auth.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import requests

from testbed.support import free_port
from tests.http.router_fixtures import (
    TOKEN,
    router_argv,
    start_router,
    write_static,
)


@pytest.fixture
def upstream(router_stack):
    return router_stack.upstream


@pytest.fixture
def static(router_stack, tmp_path):
    return write_static(tmp_path / "sandboxes.yaml",
                        {"echo": {"addresses": ["127.0.0.1"],
                                  "ports": [router_stack.upstream.port]}},
                        allow_loopback=True)


@pytest.fixture
def router(router_stack):
    """The session's router (tests/http/conftest.py): its token is router_fixtures.TOKEN."""
    return router_stack.url


def routed(upstream, **extra: str) -> dict[str, str]:
    return {"X-Sandbox-ID": "echo", "X-Sandbox-Port": str(upstream.port), **extra}


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", "Bearer ", "Bearer wrong", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
    f"Basic {TOKEN}", TOKEN, f"Token {TOKEN}", f"Bearer  {TOKEN} extra",
])
def test_missing_or_wrong_credentials_are_401(router, upstream, authorization):
    headers = routed(upstream)
    if authorization is not None:
        headers["Authorization"] = authorization
    before = len(upstream.requests)
    response = requests.get(router + "/secret", headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.json() == {"error": "missing or invalid bearer token"}
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert len(upstream.requests) == before


def test_the_right_token_passes(router, upstream):
    response = requests.get(router + "/secret", timeout=10,
                            headers=routed(upstream, Authorization=f"Bearer {TOKEN}"))
    assert response.status_code == 200


def test_scheme_is_case_insensitive(router, upstream):
    response = requests.get(router + "/secret", timeout=10,
                            headers=routed(upstream, Authorization=f"bearer {TOKEN}"))
    assert response.status_code == 200


def test_authentication_comes_before_routing(router):
    # No token and garbage routing headers: 401, so an anonymous caller learns nothing
    # about which sandboxes exist.
    for headers in ({"X-Sandbox-ID": "Not Valid"}, {"X-Sandbox-ID": "unknown"}, {}):
        assert requests.get(router + "/", headers=headers, timeout=10).status_code == 401


def test_health_is_open_but_says_nothing_about_sandboxes_names(router):
    response = requests.get(router + "/healthz", timeout=10)
    assert response.status_code == 200
    assert "echo" not in response.text


def test_router_refuses_to_start_without_a_token(static):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_ROUTER_")}
    result = subprocess.run(router_argv(port, "--static-file", str(static)), env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "insecure-no-auth" in result.stderr


def test_insecure_no_auth_is_explicit_and_warned(static, upstream, tmp_path):
    log = tmp_path / "router.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_ROUTER_")}
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            router_argv(port, "--static-file", str(static), "--insecure-no-auth"),
            env=env, stdout=subprocess.DEVNULL, stderr=sink, start_new_session=True)
        try:
            from testbed.support import wait_for_port

            wait_for_port(port, process=process)
            response = requests.get(f"http://127.0.0.1:{port}/", headers=routed(upstream),
                                    timeout=10)
            assert response.status_code == 200
        finally:
            from testbed.support import stop_process

            stop_process(process)
    assert "authentication disabled" in log.read_text()


def test_token_from_a_file_is_read_and_rotation_is_picked_up(static, upstream, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    with start_router(static, "--token-file", str(token_file), token=None,
                      env={"SANDBOX_ROUTER_TOKEN_RELOAD_SECONDS": "0.1"}) as url:
        ok = requests.get(url + "/", timeout=10,
                          headers=routed(upstream, Authorization="Bearer first-token"))
        assert ok.status_code == 200
        token_file.write_text("second-token\n")
        # mtime granularity and the reload interval: poll briefly (a sanity bound, not a SLA)
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            status = requests.get(url + "/", timeout=10, headers=routed(
                upstream, Authorization="Bearer second-token")).status_code
            if status == 200:
                break
            time.sleep(0.2)
            os.utime(token_file)  # make the change visible even on coarse mtime clocks
        assert status == 200
        old = requests.get(url + "/", timeout=10,
                           headers=routed(upstream, Authorization="Bearer first-token"))
        assert old.status_code == 401
