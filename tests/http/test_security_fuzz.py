"""Fuzzing the three HTTP surfaces (hooks, runtime, router) with hypothesis, on a small budget.

Each example is one hostile request to a real server on 127.0.0.1; it must get a clean answer:
a status below 500, a JSON body where the API promises one, within the client's timeout (so no
hang), and the server must still answer its health check after each test. Examples are
derandomized (the same inputs every run: the suite stays green or red for a reason) and the
whole module takes well under 60 s. Each example records through `hostile`
(tests/security_report.py).

Runtime commands are never random shell: the fuzzed command is `printf %s <quoted text>`, so
the quoting, encodings and sizes are exercised without running arbitrary programs as the
test's user.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from urllib.parse import quote

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.hookrequests import SEED_POD_TEMPLATE, resource, sync_request
from tests.http.router_fixtures import TOKEN

BUDGET = settings(max_examples=50, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))

# The servers are tests/http/conftest.py's: hooks_url, runtime, and runtime_router in front
# of that runtime.


SESSION = requests.Session()


def clean(response: requests.Response, *, json_body: bool = True) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    if json_body:
        response.json()  # raises if the answer is not JSON


# ---- strategies ---------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=20)
header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=70)
names = st.text(max_size=70) | st.from_regex(r"[a-z][-a-z0-9]{0,70}", fullmatch=True)
# Validated now, at collection: that imports hypothesis' regex module, which it otherwise does
# inside the first test, while the servers' threads run, and CPython 3.11's parser is not
# safe to run beside other threads' imports ("AST constructor recursion depth mismatch").
names.validate()
paths = st.text(max_size=200)


# ---- hooks --------------------------------------------------------------------------------


@BUDGET
@given(body=json_values)
def test_fuzz_hooks_any_json_body(hostile, hooks_url, body):
    with hostile("hooks", "fuzz: any JSON body to /sync/sandbox"):
        response = SESSION.post(f"{hooks_url}/sync/sandbox", data=json.dumps(body), timeout=15,
                                headers={"Content-Type": "application/json"})
        clean(response)
        assert response.status_code != 200 or isinstance(response.json().get("children"), list)


@BUDGET
@given(kind=st.sampled_from(["Sandbox", "SandboxClaim", "SandboxWarmPool", "SandboxTemplate"]),
       name=names, spec=json_values, labels=st.dictionaries(st.text(max_size=80),
                                                             st.text(max_size=80), max_size=4))
def test_fuzz_hooks_hostile_specs_and_names(hostile, hooks_url, kind, name, spec, labels):
    parent = resource(kind, "x", {})
    parent["metadata"]["name"] = name
    parent["metadata"]["labels"] = labels
    parent["spec"] = spec
    template = resource("SandboxTemplate", "t", {"podTemplate": SEED_POD_TEMPLATE})
    with hostile("hooks", f"fuzz: hostile {kind} spec and name"):
        response = SESSION.post(f"{hooks_url}/sync/{kind.lower()}", timeout=15,
                                data=json.dumps(sync_request(parent, related=[template])),
                                headers={"Content-Type": "application/json"})
        clean(response)
        assert response.status_code == 200  # a well-formed envelope: an answer, not an error
        answer = response.json()
        assert isinstance(answer["children"], list)
        assert answer["status"]["conditions"]


def test_fuzz_hooks_server_still_healthy(hostile, hooks_url):
    with hostile("hooks", "fuzz: /healthz after the hook fuzzing"):
        assert requests.get(f"{hooks_url}/healthz", timeout=10).status_code == 200


# ---- runtime ------------------------------------------------------------------------------


@BUDGET
@given(body=st.dictionaries(st.sampled_from(["command", "timeout", "env", "cwd", "extra"]),
                            json_values, max_size=5))
def test_fuzz_runtime_execute_bodies_without_a_runnable_command(hostile, runtime, body):
    if isinstance(body.get("command"), str):
        body["command"] = 5  # never run arbitrary text; the printf test below covers strings
    with hostile("runtime", "fuzz: /execute body fields"):
        # json.dumps, not requests' json=: NaN and Infinity are hostile inputs too.
        response = SESSION.post(f"{runtime.url}/execute", data=json.dumps(body), timeout=30,
                                headers={"Content-Type": "application/json"})
        clean(response)
        assert response.status_code in (400, 403, 404, 413)


@BUDGET
@given(text=st.text(max_size=300), env=st.dictionaries(
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True),
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)),
            max_size=30), max_size=3))
def test_fuzz_runtime_printf_round_trips_any_text(hostile, runtime, text, env):
    if "\0" in text:
        text = text.replace("\0", "")
    with hostile("runtime", "fuzz: /execute quoting and encodings"):
        response = SESSION.post(f"{runtime.url}/execute", timeout=30, json={
            "command": f"printf %s {shlex.quote(text)}", "env": env, "timeout": 10})
        clean(response)
        assert response.status_code == 200
        out = response.json()
        assert out["exit_code"] == 0
        expected = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        assert out["stdout"] == expected


@BUDGET
@given(route=st.sampled_from(["download", "list", "exists"]), path=paths)
def test_fuzz_runtime_file_paths(hostile, runtime, route, path):
    with hostile("runtime", f"fuzz: /{route}/<path>"):
        response = SESSION.get(f"{runtime.url}/{route}/{quote(path, safe='/')}", timeout=15)
        clean(response, json_body=not (route == "download" and response.status_code == 200))
        if response.status_code == 200 and route == "download":
            assert len(response.content) == int(response.headers["Content-Length"])


@BUDGET
@given(filename=st.text(max_size=120), payload=st.binary(max_size=2000))
def test_fuzz_runtime_upload_names(hostile, runtime, filename, payload):
    workspace = Path(runtime.workspace).resolve()
    with hostile("runtime", "fuzz: /upload filename"):
        try:
            encoded = filename.encode("utf-8")
        except UnicodeEncodeError:
            encoded = filename.encode("utf-8", "replace")
        response = SESSION.post(f"{runtime.url}/upload", timeout=15, files={
            "file": (encoded.decode("utf-8"), payload)})
        clean(response)
        if response.status_code == 200:
            stored = (workspace / response.json()["path"]).resolve()
            assert stored.is_relative_to(workspace)
            assert stored.read_bytes() == payload


def test_fuzz_runtime_server_still_healthy(hostile, runtime):
    with hostile("runtime", "fuzz: health after the runtime fuzzing"):
        assert runtime.alive()


# ---- router (in front of the real runtime) -----------------------------------------------


@BUDGET
@given(sandbox=header_text, namespace=st.none() | header_text, port=st.none() | header_text,
       timeout=st.none() | header_text)
def test_fuzz_router_routing_headers(hostile, runtime_router, sandbox, namespace, port, timeout):
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": sandbox}
    for key, value in (("X-Sandbox-Namespace", namespace), ("X-Sandbox-Port", port),
                       ("X-Sandbox-Timeout", timeout)):
        if value is not None:
            headers[key] = value
    with hostile("router", "fuzz: routing header values"):
        response = SESSION.get(f"{runtime_router.url}/", headers=headers, timeout=30)
        clean(response)


@BUDGET
@given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
       path=paths, body=st.binary(max_size=3000),
       extra=st.dictionaries(st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True),
                             header_text, max_size=3))
def test_fuzz_router_forwarded_requests(hostile, runtime_router, method, path, body, extra):
    headers = {"Authorization": f"Bearer {TOKEN}", "X-Sandbox-ID": runtime_router.sandbox, **extra}
    headers = {k: v for k, v in headers.items()
               if k.lower() not in ("x-sandbox-namespace", "x-sandbox-port",
                                    "x-sandbox-timeout") or k == "X-Sandbox-ID"}
    with hostile("router", "fuzz: forwarded method, path, headers and body"):
        response = SESSION.request(method, f"{runtime_router.url}/{quote(path, safe='/?=&')}",
                                   data=body or None, headers=headers, timeout=30)
        clean(response, json_body=method != "HEAD" and response.status_code != 200)


@BUDGET
@given(authorization=st.none() | header_text)
def test_fuzz_router_credentials(hostile, runtime_router, authorization):
    headers = {"X-Sandbox-ID": runtime_router.sandbox}
    if authorization is not None:
        headers["Authorization"] = authorization
    with hostile("router", "fuzz: Authorization values"):
        response = SESSION.get(f"{runtime_router.url}/", headers=headers, timeout=30)
        clean(response)
        assert response.status_code == 401


def test_fuzz_router_still_healthy(hostile, runtime_router):
    with hostile("router", "fuzz: /healthz after the router fuzzing"):
        assert requests.get(f"{runtime_router.url}/healthz", timeout=10).status_code == 200
