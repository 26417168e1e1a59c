"""Scenario 2 of MV6: an IPv6-native host with IPv4-only guests and a legacy IPv4 service.

The isolation checks are shared with v6_parallel: molecule/shared/tests/test_network.py.
"""

from __future__ import annotations

import ipaddress

from mv6mol.scenario import load
from mv6mol.site import bare


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv4 parallel network for an IPv6-native host."""
    scn = load()
    assert scn.plan["native_family"] == "ipv6"
    assert scn.plan["parallel_family"] == "ipv4"
    assert scn.site["native_family"] == "ipv6"
    assert len(scn.guests) == 2, [g.name for g in scn.guests]
    subnet = ipaddress.ip_network(scn.subnet)
    for g in scn.guests:
        assert ipaddress.ip_address(g.address) in subnet, (g.name, g.address, subnet)
    native_peer = ipaddress.ip_address(bare(scn.native["peer_addr"]))
    assert native_peer.version != subnet.version, "the native peer must be of the other family"
    peer = ipaddress.ip_address(bare(scn.peer["peer_addr"]))
    assert peer in subnet, f"the parallel peer {peer} is outside {subnet}"
    assert str(peer) == scn.plan["hosts"][scn.hypervisor]["gateway"], "the peer is the gateway"
    assert str(peer) not in {g.address for g in scn.guests}, "a guest got the peer's address"
