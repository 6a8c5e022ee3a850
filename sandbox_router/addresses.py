"""Address policy: which IP addresses the router may ever open a connection to.

Called by ``resolve`` on every address a source yields, just before ``proxy`` connects. Pure:
no sockets, no DNS. It must never accept an address in a spelling other than the canonical
one (no decimal, octal, hex or shortened IPv4, no IPv6 zone), and by default refuses the
addresses an attacker would aim a proxy at: loopback, link-local (cloud metadata at
169.254.169.254), unspecified, multicast, broadcast, reserved, and IPv6 forms that embed an
IPv4 address (mapped, compatible, NAT64, 6to4, Teredo). Pod addresses (RFC 1918, ULA, global)
pass. Loopback is allowed only when a local/test configuration asks for it explicitly.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Four decimal octets 0-255 without leading zeros: the only IPv4 spelling we accept, so
# "0177.0.0.1", "0x7f.1", "2130706433" and "127.1" never reach a parser that might read them.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_IPV6_CHARS = re.compile(r"[0-9a-fA-F:.]+")

# IPv6 ranges that carry an IPv4 address inside; the embedded address could be anything.
_EMBEDDING_V6 = tuple(ipaddress.IPv6Network(net) for net in (
    "::ffff:0:0/96",      # IPv4-mapped
    "::/96",              # IPv4-compatible (deprecated), also covers :: and ::1 spellings
    "64:ff9b::/96",       # NAT64 well-known prefix
    "64:ff9b:1::/48",     # NAT64 local-use prefix
    "2002::/16",          # 6to4
    "2001::/32",          # Teredo
))
# "::" and "::1" sit inside ::/96 but are named by their own rules (unspecified, loopback).
_PLAIN_V6 = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))
_EXTRA_V4 = tuple(ipaddress.IPv4Network(net) for net in (
    "0.0.0.0/8",          # "this network": 0.x.y.z reaches the local host on Linux
    "255.255.255.255/32",
))


class AddressRefused(ValueError):
    """An address the policy forbids; the message names the rule, never a connection is made."""


def parse_address(text: str) -> IPAddress:
    """Parse one address in canonical notation only, or raise AddressRefused."""
    if not isinstance(text, str) or not text or len(text) > 45:
        raise AddressRefused("not an IP address")
    if _IPV4.fullmatch(text):
        return ipaddress.IPv4Address(text)
    if ":" in text and _IPV6_CHARS.fullmatch(text):
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise AddressRefused(f"not an IP address: {text!r}") from None
    raise AddressRefused(f"not an IP address in canonical form: {text!r}")


@dataclass(frozen=True)
class AddressPolicy:
    """The rules; the defaults are the secure ones. `allow_loopback` is for local/test use."""

    allow_loopback: bool = False
    allowed_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @classmethod
    def build(cls, *, allow_loopback: bool = False,
              allowed_cidrs: Iterable[str] = ()) -> AddressPolicy:
        networks = tuple(ipaddress.ip_network(cidr, strict=True) for cidr in allowed_cidrs)
        return cls(allow_loopback=allow_loopback, allowed_networks=networks)

    def check(self, text: str) -> IPAddress:
        """The parsed address if the policy allows connecting to it, else AddressRefused."""
        address = parse_address(text)
        reason = self.refusal(address)
        if reason:
            raise AddressRefused(f"{reason} address refused: {text}")
        return address

    def refusal(self, address: IPAddress) -> str:
        """Why `address` is refused ("" when it is allowed)."""
        if isinstance(address, ipaddress.IPv6Address):
            if address.scope_id:
                return "scoped IPv6"
            # Before the loopback rule: some Python versions call ::ffff:127.0.0.1 loopback,
            # and allow_loopback must never open an IPv4-embedding form.
            if address not in _PLAIN_V6 and any(address in net for net in _EMBEDDING_V6):
                return "IPv4-embedding IPv6"
        if address.is_loopback:
            if not self.allow_loopback:
                return "loopback"
        else:
            reason = _category(address)
            if reason:
                return reason
        if self.allowed_networks and not any(
                address.version == net.version and address in net
                for net in self.allowed_networks):
            return "out-of-range"
        return ""


def _category(address: IPAddress) -> str:
    if address.is_unspecified:
        return "unspecified"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if isinstance(address, ipaddress.IPv4Address) and any(address in n for n in _EXTRA_V4):
        return "reserved"
    if address.is_reserved:
        return "reserved"
    return ""
