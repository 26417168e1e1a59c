"""Adoption scenario: the host converged with its native configuration in place.

The adoption checks: molecule/shared/tests/test_adoption.py.
"""

from __future__ import annotations

from mv6mol.scenario import assert_planned


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned an IPv6 parallel network next to the existing native configuration."""
    assert_planned(native_family="ipv4", parallel_family="ipv6", guests=1)
