"""Scenario 1 of MV6: an IPv4-native host with IPv6-only guests.

Its checks are shared: molecule/shared/tests/test_network.py (with v4_parallel), then
test_storage.py (disks are files), with test_adoption.py first and test_teardown.py last
(the host already runs things, and the teardown leaves it as it started).
"""

from __future__ import annotations

from mv6mol.scenario import assert_planned


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv6 parallel network for an IPv4-native host."""
    assert_planned(native_family="ipv4", parallel_family="ipv6")
