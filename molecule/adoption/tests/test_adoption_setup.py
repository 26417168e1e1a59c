"""Adoption scenario: the host converged with its native configuration in place.

The adoption checks: molecule/shared/tests/test_adoption.py.
"""

from __future__ import annotations

import ipaddress

from mv6mol.scenario import load
from mv6mol.site import bare


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv6 parallel network next to the existing native configuration."""
    scn = load()
    assert scn.plan["native_family"] == "ipv4"
    assert scn.plan["parallel_family"] == "ipv6"
    assert scn.site["native_family"] == "ipv4"
    assert len(scn.guests) == 1, [g.name for g in scn.guests]
    subnet = ipaddress.ip_network(scn.subnet)
    for g in scn.guests:
        assert ipaddress.ip_address(g.address) in subnet, (g.name, g.address, subnet)
    native_peer = ipaddress.ip_address(bare(scn.native["peer_addr"]))
    assert native_peer.version != subnet.version, "the native peer must be of the other family"
    peer = ipaddress.ip_address(bare(scn.peer["peer_addr"]))
    assert peer in subnet, f"the parallel peer {peer} is outside {subnet}"
    assert str(peer) == scn.plan["hosts"][scn.hypervisor]["gateway"], "the peer is the gateway"
    assert str(peer) not in {g.address for g in scn.guests}, "a guest got the peer's address"
