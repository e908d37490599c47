"""Where the rate limiter's client address comes from (keyserver.client_address): the peer, and a
forwarded header only from a configured trusted proxy, read from the right so that whatever a
client writes into it is never believed; end to end, a spoofed header does not earn a fresh
registration allowance."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from aiohttp.test_utils import TestClient, make_mocked_request

from keyserver.app import create_app
from keyserver.client_address import client_address, trusted_networks
from keyserver.config import ConfigError, build
from tests.keyserver.keys_harness import Clock

PROXY = "10.0.0.5"
INGRESS = trusted_networks("10.0.0.0/24, 192.0.2.7")


def address(
    headers: dict[str, str] | list[tuple[str, str]],
    *,
    peer: str = PROXY,
    trusted: str = "10.0.0.0/24, 192.0.2.7",
    header: str = "x-forwarded-for",
) -> str:
    transport = mock.Mock()
    transport.get_extra_info.side_effect = lambda name, default=None: (
        (peer, 40000) if name == "peername" else default
    )
    request = make_mocked_request("POST", "/v1/accounts", headers=headers, transport=transport)
    return client_address(request, trusted_networks(trusted), header)


def test_without_trusted_proxies_the_peer_is_the_client_whatever_the_headers_say() -> None:
    spoofed = {"X-Forwarded-For": "198.51.100.1", "Forwarded": "for=198.51.100.2"}
    assert address(spoofed, trusted="") == PROXY
    assert address(spoofed, peer="203.0.113.9") == "203.0.113.9"  # an untrusted peer


def test_a_trusted_proxy_names_the_client_it_forwarded_for() -> None:
    assert address({"X-Forwarded-For": "198.51.100.1"}) == "198.51.100.1"
    # two trusted hops (an edge proxy, then the ingress): the first untrusted from the right
    assert address({"X-Forwarded-For": "198.51.100.1, 192.0.2.7"}) == "198.51.100.1"
    # two header lines are one list, in order
    lines = [("X-Forwarded-For", "198.51.100.1"), ("X-Forwarded-For", "192.0.2.7")]
    assert address(lines) == "198.51.100.1"
    assert address({"X-Forwarded-For": "198.51.100.1:5123"}) == "198.51.100.1"


def test_what_a_client_writes_to_the_left_of_its_own_address_is_never_read() -> None:
    # the client sent "X-Forwarded-For: 203.0.113.66"; the proxy appended the real address
    assert address({"X-Forwarded-For": "203.0.113.66, 198.51.100.1"}) == "198.51.100.1"
    # ... even claiming to be a trusted proxy itself
    assert address({"X-Forwarded-For": "10.0.0.9, 198.51.100.1"}) == "198.51.100.1"


def test_an_unreadable_hop_leaves_the_last_trusted_proxy_as_the_client() -> None:
    for garbage in ("not-an-address", "unknown", "", "fe80::1%eth0", "[2001:db8::1"):
        assert address({"X-Forwarded-For": garbage}) == PROXY, garbage
        assert address({"X-Forwarded-For": f"198.51.100.1, {garbage}"}) == PROXY, garbage
    assert address({}) == PROXY  # a trusted proxy that sent no header at all


def test_only_the_configured_header_is_read() -> None:
    forwarded = {"Forwarded": 'for=198.51.100.1;proto=https, for="[2001:db8:1:2::3]:4711"'}
    assert address(forwarded) == PROXY  # x-forwarded-for is configured: Forwarded is a spoof
    assert address(forwarded, header="forwarded") == "2001:db8:1:2::/64"
    both = {"X-Forwarded-For": "203.0.113.66", "Forwarded": "for=198.51.100.1"}
    assert address(both, header="forwarded") == "198.51.100.1"
    assert address({"Forwarded": "for=_hidden"}, header="forwarded") == PROXY
    assert address({"Forwarded": "proto=https"}, header="forwarded") == PROXY


def test_ipv6_clients_are_counted_by_their_64_network() -> None:
    assert address({}, peer="2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert address({}, peer="2001:db8:1:2:bbbb::7") == "2001:db8:1:2::/64"
    assert address({}, peer="::ffff:198.51.100.1") == "198.51.100.1"


def test_bad_proxy_settings_stop_start_up() -> None:
    with pytest.raises(ConfigError, match="trusted_proxies"):
        build({"trusted_proxies": "10.0.0.0/33"})
    with pytest.raises(ConfigError, match="trusted_proxies"):
        build({"trusted_proxies": "ingress.local"})
    with pytest.raises(ConfigError, match="forwarded_header"):
        build({"forwarded_header": "x-real-ip"})
    assert build({"trusted_proxies": " 10.0.0.0/8 , ::1 "}).trusted_proxies


@pytest.mark.parametrize(("trusted", "allowances"), [("", 1), ("127.0.0.1", 3)])
async def test_registrations_count_the_forwarded_client_only_from_a_trusted_proxy(
    tmp_path: Path, aiohttp_client: Any, clock: Clock, trusted: str, allowances: int
) -> None:
    # the clock stands still (tests/conftest.py): the three requests are in one window
    config = build(
        {"data_dir": str(tmp_path), "registrations_per_hour": 1, "trusted_proxies": trusted}
    )
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config))
    statuses = []
    for n in range(3):  # the test client (127.0.0.1) claims three different clients
        body = {"email": f"p{n}@example.com", "password": "correct horse battery"}
        headers = {"X-Forwarded-For": f"198.51.100.{n}"}
        statuses.append((await client.post("/v1/accounts", json=body, headers=headers)).status)
    assert statuses == [201] * allowances + [429] * (3 - allowances)
