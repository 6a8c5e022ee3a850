"""Kubernetes backend decisions that need no cluster: claim names, Ready judgement, options."""

from __future__ import annotations

import re

import pytest

from agentic_sandbox import ClaimFailedError, TemplateNotFoundError
from agentic_sandbox._backends.claims import (
    TERMINAL_CLAIM_READY_REASONS,
    claim_name,
    judge,
    sandbox_uid,
)
from agentic_sandbox._backends.kubernetes import KubernetesBackend
from agentic_sandbox._options import KubernetesOptions


def claim(status, reason="", sandbox=None):
    st = {"conditions": [{"type": "Ready", "status": status, "reason": reason,
                          "message": "m"}]}
    if sandbox:
        st["sandbox"] = {"name": sandbox}
    return {"status": st}


def backend(**kwargs):
    b = KubernetesBackend("tpl", "ns", options=KubernetesOptions(**kwargs))
    b.claim = "sandbox-claim-1234abcd"
    return b


def judged(obj):
    return judge(obj, "ns", "sandbox-claim-1234abcd")


def test_claim_names_are_unique_dns_labels():
    names = {claim_name() for _ in range(100)}
    assert len(names) == 100
    assert all(re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n) and len(n) <= 63
               for n in names)


def test_ready_gives_the_sandbox_name():
    assert judged(claim("True", "SandboxReady", "sb-1")) == "sb-1"
    assert judged(claim("True")) == "sandbox-claim-1234abcd"


def test_transient_reasons_keep_waiting():
    assert judged({}) is None
    assert judged(claim("False", "SandboxNotReady")) is None


def test_terminal_reasons_fail_fast_naming_the_reason():
    for reason in sorted(TERMINAL_CLAIM_READY_REASONS):
        with pytest.raises(ClaimFailedError) as info:
            judged(claim("False", reason))
        assert info.value.reason == reason and reason in str(info.value)
    with pytest.raises(TemplateNotFoundError):
        judged(claim("False", "TemplateNotFound"))


def test_connection_modes_and_headers(monkeypatch):
    monkeypatch.delenv("AGENTIC_SANDBOX_ROUTER_TOKEN", raising=False)
    assert backend().options.connection == "tunnel"
    direct = backend(api_url="http://gw:8080/", router_token="t0k", server_port=9999)
    direct.sandbox = "sb"
    assert direct.options.connection == "direct" and direct.options.api_url == "http://gw:8080"
    assert direct.headers() == {"X-Sandbox-ID": "sb", "X-Sandbox-Namespace": "ns",
                                "X-Sandbox-Port": "9999", "Authorization": "Bearer t0k"}
    in_cluster = backend(connection="in-cluster")
    assert in_cluster._base_url(0) == "http://sandbox-router-svc.ns.svc.cluster.local:8080"
    with pytest.raises(ValueError):
        backend(connection="carrier-pigeon")
    with pytest.raises(ValueError):
        backend(connection="direct")


def test_token_from_environment(monkeypatch):
    monkeypatch.setenv("AGENTIC_SANDBOX_ROUTER_TOKEN", "envtoken")
    b = backend(api_url="http://r")
    b.sandbox = "s"
    assert b.headers()["Authorization"] == "Bearer envtoken"


CLAIM_UID = "0f8a3c9e-5b1d-4e2a-9c7f-3d6b8e1a2f40"
SANDBOX_UID = "7c1e2d3f-4a5b-4c6d-8e7f-901234567890"


class SandboxReader:
    """The one CustomObjectsApi call claims.sandbox_uid makes, answering with `obj` or raising."""

    def __init__(self, obj=None, status=None):
        self.obj, self.status, self.asked = obj, status, []

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        from kubernetes.client.exceptions import ApiException
        self.asked.append((group, plural, namespace, name))
        if self.status is not None:
            raise ApiException(status=self.status)
        return self.obj


def owned(owner_uid, controller=True):
    return {"metadata": {"name": "sb", "uid": SANDBOX_UID, "ownerReferences": [
        {"kind": "SandboxClaim", "name": "sb", "uid": owner_uid, "controller": controller}]}}


def test_the_claims_sandbox_uid_is_sent_to_the_router(monkeypatch):
    monkeypatch.delenv("AGENTIC_SANDBOX_ROUTER_TOKEN", raising=False)
    b = backend(api_url="http://r")
    b.sandbox, b.claim_uid = "sb", CLAIM_UID
    api = SandboxReader(owned(CLAIM_UID))
    b.sandbox_uid = sandbox_uid(api, "ns", "sb", "sb", CLAIM_UID)
    assert api.asked == [("agents.x-k8s.io", "sandboxes", "ns", "sb")]
    assert b.headers()["X-Sandbox-UID"] == SANDBOX_UID


@pytest.mark.parametrize("obj", [owned("another-claim-uid"), owned(CLAIM_UID, controller=False),
                                 {"metadata": {"name": "sb", "uid": SANDBOX_UID}}])
def test_a_sandbox_the_claim_does_not_own_is_refused(obj):
    with pytest.raises(ClaimFailedError) as info:
        sandbox_uid(SandboxReader(obj), "ns", "sb", "sb", CLAIM_UID)
    assert info.value.reason == "SandboxReplaced"


@pytest.mark.parametrize("status", [403, 404])
def test_an_unreadable_sandbox_leaves_the_name_alone_to_route_by(status):
    b = backend(api_url="http://r")
    b.sandbox, b.claim_uid = "sb", CLAIM_UID
    b.sandbox_uid = sandbox_uid(SandboxReader(status=status), "ns", "sb", "sb", CLAIM_UID)
    assert b.sandbox_uid is None and "X-Sandbox-UID" not in b.headers()


def test_the_router_transport_never_skips_tls_verification():
    """A plain http router URL skips loading the CA store (~80 ms), not verification: a TLS
    server reached through it would be refused."""
    import ssl

    from agentic_sandbox._backends.router import (
        router_async_transport,
        router_transport,
        tls_context,
    )

    for url in ("http://sandbox-router-svc.ns.svc.cluster.local:8080", "https://gw.example"):
        shared = tls_context(url)
        for transport in (router_transport(url), router_async_transport(url),
                          router_transport(url, shared), router_async_transport(url, shared)):
            context = transport._pool._ssl_context
            assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        if url.startswith("https"):
            assert shared.cert_store_stats()["x509_ca"] > 0  # the CA store, loaded once
