"""One name rule (module_utils/_names.py): the planner, the disk core and the roles' Jinja
tests accept and refuse the same guest and interface names. Before, ``Web6`` was refused by
the planner and accepted by the guest role and guest_disk, and the planner took interface
names (``-x``, ``br:0``) that the hypervisor role refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _disk, _names, _plan
from ansible_collections.mv6.transition.plugins.test import names as tests_plugin

TESTS = tests_plugin.TestModule().tests()

GUESTS = {
    "web6": True,
    "a": True,
    "0": True,
    "lab-6-v4": True,
    "a" * 63: True,
    "a" * 64: False,
    "Web6": False,
    "web_6": False,
    "web.6": False,
    "-web": False,
    "web-": False,
    "": False,
    "../x": False,
    "a b": False,
    "a\nb": False,
    None: False,
    6: False,
}
INTERFACES = {
    "mv6br0": True,
    "_x": True,
    "eth0.100": True,
    "br-lan": True,
    "a" * 15: True,
    "a" * 16: False,
    "-x": False,
    ".x": False,
    "br:0": False,
    "a/b": False,
    "a b": False,
    "": False,
    None: False,
}


def planner_accepts_guest(name) -> bool:
    try:
        _plan.parse_guests("hv1", [{"name": name}])
    except ValueError:
        return False
    return True


def planner_accepts_bridge(name) -> bool:
    try:
        _plan._parse_ifname("mv6_parallel.bridge", name)
    except ValueError:
        return False
    return True


def disk_accepts(name) -> bool:
    try:
        _disk.validate_guest_name(name)
    except ValueError:
        return False
    return True


@pytest.mark.parametrize(("name", "valid"), GUESTS.items(), ids=[repr(n) for n in GUESTS])
def test_every_guest_name_rule_agrees(name, valid):
    assert _names.is_guest_name(name) is valid
    assert TESTS["guest_name"](name) is valid
    assert planner_accepts_guest(name) is valid
    assert disk_accepts(name) is valid


@pytest.mark.parametrize(("name", "valid"), INTERFACES.items(), ids=[repr(n) for n in INTERFACES])
def test_every_interface_name_rule_agrees(name, valid):
    assert _names.is_interface_name(name) is valid
    assert TESTS["interface_name"](name) is valid
    assert planner_accepts_bridge(name) is valid
