"""The router's address policy on a corpus of addresses an attacker would try (no sockets)."""

from __future__ import annotations

import pytest

from sandbox_router.addresses import AddressPolicy, AddressRefused, parse_address

POD_ADDRESSES = ["10.244.1.17", "172.16.0.5", "192.168.3.4", "100.64.0.10", "8.8.8.8",
                 "fd00:10:244::17", "2001:db8::1", "2600:1f18::5"]

ALWAYS_REFUSED = {
    "169.254.169.254": "link-local", "169.254.0.1": "link-local", "fe80::1": "link-local",
    "0.0.0.0": "unspecified", "::": "unspecified", "0.1.2.3": "reserved",
    "224.0.0.1": "multicast", "239.255.255.250": "multicast", "ff02::1": "multicast",
    "255.255.255.255": "reserved", "240.0.0.1": "reserved",
    "::ffff:127.0.0.1": "IPv4-embedding", "::ffff:169.254.169.254": "IPv4-embedding",
    "::ffff:10.0.0.1": "IPv4-embedding", "::127.0.0.1": "IPv4-embedding",
    "64:ff9b::a9fe:a9fe": "IPv4-embedding", "2002:7f00:1::1": "IPv4-embedding",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2": "IPv4-embedding",
}

NOT_CANONICAL = ["2130706433", "0x7f000001", "0x7f.0.0.1", "0177.0.0.1", "127.1", "127.0.1",
                 "127.000.000.001", "010.0.0.1", " 10.0.0.1", "10.0.0.1 ", "10.0.0.1\n",
                 "10.0.0.256", "10.0.0", "1.2.3.4.5", "fe80::1%eth0", "[::1]", "localhost",
                 "example.com", "", "::ffff:127.0.0.1:80", "10.0.0.1:8888",
                 "\uff11\uff12\uff17.0.0.1"]


@pytest.mark.parametrize("address", POD_ADDRESSES)
def test_pod_addresses_pass(address):
    assert str(AddressPolicy().check(address)) == address.lower()


@pytest.mark.parametrize("address,reason", sorted(ALWAYS_REFUSED.items()))
def test_dangerous_addresses_are_refused_even_with_loopback_allowed(address, reason):
    for policy in (AddressPolicy(), AddressPolicy(allow_loopback=True)):
        with pytest.raises(AddressRefused, match=reason):
            policy.check(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.255.0.9", "::1"])
def test_loopback_is_refused_by_default(address):
    with pytest.raises(AddressRefused, match="loopback"):
        AddressPolicy().check(address)


@pytest.mark.parametrize("address", ["127.0.0.1", "::1"])
def test_loopback_passes_only_when_asked_for(address):
    assert AddressPolicy.build(allow_loopback=True).check(address)


@pytest.mark.parametrize("text", NOT_CANONICAL)
def test_only_canonical_spellings_parse(text):
    with pytest.raises(AddressRefused):
        parse_address(text)


def test_allowed_cidrs_narrow_the_policy():
    policy = AddressPolicy.build(allowed_cidrs=["10.244.0.0/16", "fd00:10:244::/48"])
    assert policy.check("10.244.9.9")
    assert policy.check("fd00:10:244::9")
    for outside in ("10.245.0.1", "192.168.0.1", "fd00:10:245::1"):
        with pytest.raises(AddressRefused, match="out-of-range"):
            policy.check(outside)


def test_allowed_cidrs_do_not_reopen_what_is_always_refused():
    policy = AddressPolicy.build(allowed_cidrs=["0.0.0.0/0", "::/0"])
    for address in ("169.254.169.254", "127.0.0.1", "::ffff:10.0.0.1"):
        with pytest.raises(AddressRefused):
            policy.check(address)
