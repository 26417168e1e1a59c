"""Scenario 1 of MV6: an IPv4-native host with IPv6-only guests.

Its checks are shared, in molecule/shared/tests/, and run in this order: test_adoption.py
(the host already runs things), test_network.py (with v4_parallel), test_storage.py (disks
are files), test_teardown.py (the teardown leaves the host as it started). This file runs
after them (Molecule sorts the verify files by path), so it reads only what the teardown
keeps: the scenario's plan file and site description in its ephemeral directory.
"""

from __future__ import annotations

from mv6mol.scenario import assert_planned


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv6 parallel network for an IPv4-native host."""
    assert_planned(native_family="ipv4", parallel_family="ipv6")
