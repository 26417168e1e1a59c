"""Scenario 1 of MV6: an IPv4-native host with IPv6-only guests.

The isolation checks are shared with v4_parallel: molecule/shared/tests/test_network.py.
"""

from __future__ import annotations

from mv6mol.scenario import assert_planned


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv6 parallel network for an IPv4-native host."""
    assert_planned(native_family="ipv4", parallel_family="ipv6")
