"""Routing-header parsing of the router (pure; no sockets)."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from sandbox_router.headers import BadRoute, Route, parse_route

DEFAULTS = {"default_namespace": "default", "default_port": 8888, "default_timeout": 60.0,
            "max_timeout": 600.0}


def parse(**headers: str) -> Route:
    return parse_route(CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()}),
                       **DEFAULTS)


def test_defaults_fill_in_namespace_port_and_timeout():
    assert parse(**{"X_Sandbox_ID": "my-sandbox"}) == Route("default", "my-sandbox", 8888, 60.0)


def test_every_header_is_read():
    route = parse(X_Sandbox_ID="sb1", X_Sandbox_Namespace="team-a", X_Sandbox_Port="9000",
                  X_Sandbox_Timeout="2.5")
    assert route == Route("team-a", "sb1", 9000, 2.5)


def test_header_names_are_case_insensitive():
    headers = CIMultiDict({"x-sandbox-id": "sb", "X-SANDBOX-PORT": "1"})
    assert parse_route(headers, **DEFAULTS).port == 1


def test_timeout_is_capped_by_the_maximum():
    assert parse(X_Sandbox_ID="sb", X_Sandbox_Timeout="9999999").timeout == 600.0


@pytest.mark.parametrize("name", ["", "A", "a.b", "a_b", "-a", "a-", "a" * 64, "10.0.0.1",
                                  "a/b", "a:1", "ä"])
def test_bad_names_are_refused(name):
    with pytest.raises(BadRoute):
        parse(X_Sandbox_ID=name) if name else parse()


@pytest.mark.parametrize("name", ["a", "0", "a" * 63, "my-sandbox-1", "2130706433"])
def test_dns_labels_are_names(name):
    assert parse(X_Sandbox_ID=name).name == name


@pytest.mark.parametrize("port", ["0", "65536", "08888", "+1", "-1", "1.0", "0x10", "\uff11"])
def test_bad_ports_are_refused(port):
    with pytest.raises(BadRoute, match="Port"):
        parse(X_Sandbox_ID="sb", X_Sandbox_Port=port)


@pytest.mark.parametrize("port", ["1", "80", "8888", "65535"])
def test_ports_in_range_parse(port):
    assert parse(X_Sandbox_ID="sb", X_Sandbox_Port=port).port == int(port)


@pytest.mark.parametrize("value", ["0", "0.0", "-1", "1e2", "inf", "nan", "1.", ".5", "1.2345",
                                   "99999999"])
def test_bad_timeouts_are_refused(value):
    with pytest.raises(BadRoute, match="Timeout"):
        parse(X_Sandbox_ID="sb", X_Sandbox_Timeout=value)


def test_repeated_routing_header_is_refused():
    headers = CIMultiDict([("X-Sandbox-ID", "a"), ("X-Sandbox-ID", "b")])
    with pytest.raises(BadRoute, match="more than once"):
        parse_route(headers, **DEFAULTS)


UID = "0f8a3c9e-5b1d-4e2a-9c7f-3d6b8e1a2f40"


def test_a_sandbox_uid_is_read_and_optional():
    assert parse(X_Sandbox_ID="sb").uid is None
    assert parse(X_Sandbox_ID="sb", X_Sandbox_UID="").uid is None
    assert parse(X_Sandbox_ID="sb", X_Sandbox_UID=UID).uid == UID


@pytest.mark.parametrize("uid", [
    UID.upper(), UID[:-1], UID + "0", "{" + UID + "}", "urn:uuid:" + UID, UID.replace("-", ""),
    " " + UID, UID + " ", UID.replace("-", "_"), UID[:8] + UID[9] + "-" + UID[10:], "g" + UID[1:],
    "0f8a3c9e-5b1d-4e2a-9c7f-3d6b8e1a2f4\u0660", "../" + UID[3:], "*", "00000000",
])
def test_a_sandbox_uid_in_any_other_spelling_is_refused(uid):
    with pytest.raises(BadRoute, match="UID"):
        parse(X_Sandbox_ID="sb", X_Sandbox_UID=uid)


def test_a_repeated_sandbox_uid_is_refused():
    headers = CIMultiDict([("X-Sandbox-ID", "sb"), ("X-Sandbox-UID", UID),
                           ("x-sandbox-uid", UID)])
    with pytest.raises(BadRoute, match="more than once"):
        parse_route(headers, **DEFAULTS)
