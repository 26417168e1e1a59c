"""Disks scenario: the guests are the ones the disk checks assume.

The disk checks: molecule/shared/tests/test_disks.py.
"""

from __future__ import annotations

from pathlib import Path

from mv6mol.scenario import assert_planned


def test_the_plan_is_this_scenarios() -> None:
    """The collection planned two guests of one golden image, both non-persistent."""
    scn = assert_planned(native_family="ipv4", parallel_family="ipv6", parallel_peer=False)
    for g in scn.guests:
        layers = Path("/var/lib/mv6/guests", g.name)
        assert (layers / "persistent.qcow2").exists(), g.name
        assert (layers / "session.qcow2").exists(), f"{g.name} is not non-persistent"
