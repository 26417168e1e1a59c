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


IMAGES = {
    "debian12": True,
    "debian12_v2-x": True,
    "a" * 40: True,
    "a" * 41: False,
    "Debian12": False,
    "-deb": False,
    "deb/../x": False,
    "deb</mv6:image>": False,
    "": False,
    None: False,
}


@pytest.mark.parametrize(("name", "valid"), IMAGES.items(), ids=[repr(n) for n in IMAGES])
def test_image_name_rule(name, valid):
    assert _names.is_image_name(name) is valid
    assert TESTS["image_name"](name) is valid


CMDLINES = {
    "": True,
    "root=/dev/vda console=ttyS0,115200n8 rw": True,
    "ipv6.disable_ipv6=1 systemd.unit=multi-user.target": True,
    "quiet  splash": False,  # an empty word
    " quiet": False,
    "init=/bin/sh'": False,
    "a</cmdline></os><devices><interface type='user'/>": False,
    'x="two words"': False,
    "a;b": False,
    "a\nb": False,
    "a\tb": False,
    None: False,
}


@pytest.mark.parametrize(("line", "valid"), CMDLINES.items(), ids=[repr(c) for c in CMDLINES])
def test_kernel_cmdline_rule(line, valid):
    assert _names.is_kernel_cmdline(line) is valid
    assert TESTS["kernel_cmdline"](line) is valid
