"""Scenario 2 of MV6: an IPv6-native host with IPv4-only guests and a legacy IPv4 service.

The isolation checks are shared with v6_parallel: molecule/shared/tests/test_network.py.
"""

from __future__ import annotations

from mv6mol.scenario import assert_planned


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv4 parallel network for an IPv6-native host."""
    assert_planned(native_family="ipv6", parallel_family="ipv4")
