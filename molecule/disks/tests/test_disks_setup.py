"""Disks scenario: the guests are the ones the disk checks assume.

The disk checks: molecule/shared/tests/test_disks.py.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from mv6mol.scenario import load
from mv6mol.site import bare


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned two guests of one golden image, both non-persistent."""
    scn = load()
    assert scn.plan["native_family"] == "ipv4"
    assert scn.plan["parallel_family"] == "ipv6"
    assert scn.site["native_family"] == "ipv4"
    assert len(scn.guests) == 2, [g.name for g in scn.guests]
    subnet = ipaddress.ip_network(scn.subnet)
    for g in scn.guests:
        assert ipaddress.ip_address(g.address) in subnet, (g.name, g.address, subnet)
    native_peer = ipaddress.ip_address(bare(scn.native["peer_addr"]))
    assert native_peer.version != subnet.version, "the native peer must be of the other family"
    for g in scn.guests:
        layers = Path("/var/lib/mv6/guests", g.name)
        assert (layers / "persistent.qcow2").exists(), g.name
        assert (layers / "session.qcow2").exists(), f"{g.name} is not non-persistent"
