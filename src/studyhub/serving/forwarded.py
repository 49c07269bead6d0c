"""The client's address behind reverse proxies the operator named (``--trusted-proxy``).

Any client can send ``X-Forwarded-For`` or ``Forwarded``, so without trusted proxies neither is
read. With them, a request whose peer is one of those proxies is attributed to the right-most
hop of the configured header that is not itself a trusted proxy: every proxy appends the
address it saw, so that hop was written by our own proxy, and everything left of it may have
been written by the client. ``Forwarded`` (RFC 7239) is parsed by its grammar — quoted strings
may hold commas and semicolons — not split by hand.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Iterable, Union

from studyhub.errors import ConfigError

X_FORWARDED_FOR = "x-forwarded-for"
FORWARDED = "forwarded"
HEADERS = (X_FORWARDED_FOR, FORWARDED)

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class ForwardedError(ValueError):
    """The forwarded header cannot be read, so the client's address is unknown."""


# RFC 7239 section 4 (with RFC 7230's token and quoted-string).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t !-~\x80-\xff])*"'
_PAIR = re.compile(rf"[ \t]*({_TOKEN})=({_TOKEN}|{_QUOTED})[ \t]*")
_SEPARATOR = re.compile(r"[ \t]*([;,])[ \t]*")
_UNQUOTE = re.compile(r"\\(.)")
# RFC 7239 section 6: node = nodename [ ":" node-port ]
_BRACKETED = re.compile(r"\[([0-9A-Fa-f:.]+)\](?::[0-9]{1,5}|:_[A-Za-z0-9._-]+)?")
_IPV4_PORT = re.compile(r"([0-9.]+)(?::[0-9]{1,5}|:_[A-Za-z0-9._-]+)?")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")


def forwarded_for_values(header: str) -> list[str]:
    """The ``for=`` value of each element of a ``Forwarded`` header, left to right (an element
    without one counts as ``unknown``)."""
    elements: list[dict[str, str]] = [{}]
    pos = 0
    while pos < len(header):
        pair = _PAIR.match(header, pos)
        if pair:
            name, value = pair.group(1).lower(), pair.group(2)
            if value.startswith('"'):
                value = _UNQUOTE.sub(r"\1", value[1:-1])
            if name in elements[-1]:
                raise ForwardedError(f"Forwarded: {name}= twice in one element")
            elements[-1][name] = value
            pos = pair.end()
        else:
            separator = _SEPARATOR.match(header, pos)
            if not separator:
                raise ForwardedError(f"Forwarded: unreadable at character {pos + 1}")
            if separator.group(1) == ",":
                elements.append({})
            pos = separator.end()
    return [e.get("for", "unknown") for e in elements if e]


def x_forwarded_for_values(header: str) -> list[str]:
    """The hops of an ``X-Forwarded-For`` header (a comma-separated list), left to right."""
    hops = [hop.strip() for hop in header.split(",")]
    if any(not hop for hop in hops):
        raise ForwardedError("X-Forwarded-For: an empty hop")
    return hops


def node_address(node: str) -> str | None:
    """A hop's address (port dropped, normalised), an obfuscated identifier (``_abc``, kept
    as it is: RFC 7239 makes it stable per client), or None for ``unknown``."""
    if node.lower() == "unknown":
        return None
    if _OBFUSCATED.fullmatch(node):
        return node
    for form in (_BRACKETED, _IPV4_PORT):
        m = form.fullmatch(node)
        if m:
            node = m.group(1)
            break
    try:
        return str(ipaddress.ip_address(node))
    except ValueError:
        raise ForwardedError(f"not an address: {node[:60]!r}") from None


def parse_proxies(entries: Iterable[str]) -> tuple[Network, ...]:
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"trusted proxy {entry!r} is not an IP address or network "
                              "(e.g. 10.0.0.5 or 10.0.0.0/24)") from None
    return tuple(networks)


@dataclass(frozen=True)
class ProxyTrust:
    """The trusted proxies and the header they set; no proxies = read no header."""

    proxies: tuple[Network, ...] = ()
    header: str = X_FORWARDED_FOR

    @classmethod
    def configure(cls, proxies: Iterable[str], header: str) -> "ProxyTrust":
        name = header.strip().lower()
        if name not in HEADERS:
            raise ConfigError(f"forwarded header {header!r}: choose X-Forwarded-For or Forwarded")
        return cls(parse_proxies(proxies), name)

    @property
    def configured(self) -> bool:
        return bool(self.proxies)

    def trusts(self, address: str | None) -> bool:
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return False
        return any(ip in net for net in self.proxies)

    def client_address(self, peer: str | None, header_values: list[str]) -> str | None:
        """The client's address: the peer unless it is a trusted proxy; then the right-most hop
        of the header (every line of it, in order) that is not a trusted proxy. None when every
        hop is a trusted proxy (or the header is missing) or that hop is ``unknown``. Raises
        ForwardedError when the header, from a trusted proxy, cannot be read."""
        if not self.trusts(peer):
            return peer
        if not header_values:
            return None
        joined = ", ".join(header_values)
        hops = (forwarded_for_values(joined) if self.header == FORWARDED
                else x_forwarded_for_values(joined))
        for hop in reversed(hops):
            address = node_address(hop)
            if address is not None and self.trusts(address):
                continue
            return address
        return None

    def describe(self) -> str:
        name = "Forwarded" if self.header == FORWARDED else "X-Forwarded-For"
        proxies = ", ".join(str(n.network_address) if n.num_addresses == 1 else str(n)
                            for n in self.proxies)
        return f"{name} (trusted proxies {proxies})"
