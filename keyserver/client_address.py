"""Which address a request comes from, for rate limits: the TCP peer, or — only when the peer is
one of the configured trusted proxies — the address that proxy says it was forwarding for.

Behind a proxy or an ingress every request arrives from the proxy, so per-address limits would
count every client together; a forwarded header says who the client was. Anyone can send that
header, so it is believed only from a peer listed in ``trusted_proxies`` (addresses or networks;
the default is none: the peer address, whatever the headers say), and only in the one header
the proxy is configured to write (``forwarded_header``: ``x-forwarded-for`` or ``forwarded``,
RFC 7239). A client-supplied value of the other header is never read.

Proxies append the address they received from, so the chain is read from the right: each hop
that is itself a trusted proxy passes the question one step to the left, and the first address
that is not a trusted proxy is the client. Whatever a client writes to the left of that is never
reached. A hop that cannot be read (garbage, ``unknown``, an obfuscated RFC 7239 name) stops the
walk at the last trusted proxy, which is then the address counted: a malformed header never earns
a fresh address.

IPv6 clients are counted by their /64 network: one subscriber commonly holds a whole /64, so a
single address would let one client count as 2^64.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HEADERS = {"x-forwarded-for": "X-Forwarded-For", "forwarded": "Forwarded"}
IPV6_SUBSCRIBER_PREFIX = 64


def trusted_networks(value: str) -> tuple[IPNetwork, ...]:
    """``trusted_proxies`` ("10.0.0.0/8, 192.0.2.7") as networks; ValueError names a bad item."""
    networks = []
    for item in value.split(","):
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text[:64]!r} is not an address or a network") from None
    return tuple(networks)


def client_address(request: web.Request, trusted: Sequence[IPNetwork], header: str) -> str:
    """The client's address as the rate limiter counts it (module docstring)."""
    peer = _address(request.remote or "")
    if peer is None:  # not an IP peer (a Unix socket): all such clients are one
        return request.remote or "unknown"
    client = peer
    if _trusted(peer, trusted):
        values = request.headers.getall(HEADERS[header], [])
        hops = _forwarded_for(values) if header == "forwarded" else _x_forwarded_for(values)
        for hop in reversed(hops):
            address = None if hop is None else _address(hop)
            if address is None:
                break  # unreadable: the last trusted proxy stands for the client
            client = address
            if not _trusted(address, trusted):
                break
    return _counted(client)


def _trusted(address: IPAddress, trusted: Sequence[IPNetwork]) -> bool:
    return any(address in network for network in trusted)


def _counted(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, IPV6_SUBSCRIBER_PREFIX), strict=False)
        return str(network)
    return str(address)


def _address(text: str) -> IPAddress | None:
    """An address from a hop as proxies write it: ``192.0.2.1``, ``192.0.2.1:4711``,
    ``2001:db8::1``, ``[2001:db8::1]:4711``; None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text, bracket, _ = text[1:].partition("]")
        if not bracket:
            return None
    elif text.count(":") == 1:  # IPv4 with a port
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return address


def _x_forwarded_for(values: Sequence[str]) -> list[str | None]:
    return [hop.strip() for value in values for hop in value.split(",")]


def _forwarded_for(values: Sequence[str]) -> list[str | None]:
    """The ``for=`` of each RFC 7239 element; None for an element without one."""
    hops: list[str | None] = []
    for value in values:
        for element in value.split(","):
            found: str | None = None
            for pair in element.split(";"):
                name, equals, raw = pair.strip().partition("=")
                if equals and name.strip().lower() == "for":
                    found = raw.strip().removeprefix('"').removesuffix('"')
            hops.append(found)
    return hops
