"""The address_plan action plugin's helpers: facts to native networks, tagged to plain data."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible.errors import AnsibleFilterError
from ansible_collections.mv6.transition.plugins.action import address_plan as action
from ansible_collections.mv6.transition.plugins.filter import plan as filters
from ansible_collections.mv6.transition.plugins.module_utils import _plan

FACTS = {
    "all_ipv4_addresses": ["198.51.100.7"],
    "all_ipv6_addresses": ["fe80::1", "2001:db8:600::7"],
    "default_ipv4": {
        "address": "198.51.100.7",
        "gateway": "198.51.100.1",
        "network": "198.51.100.0",
        "netmask": "255.255.255.0",
    },
    "default_ipv6": {"address": "2001:db8:600::7", "prefix": "64", "gateway": "fe80::1"},
}


def test_native_facts_become_addresses_and_networks():
    assert action._native_facts(FACTS) == {
        "ansible_all_ipv4_addresses": ["198.51.100.7"],
        "ansible_all_ipv6_addresses": ["fe80::1", "2001:db8:600::7"],
        "ansible_default_ipv4": ["198.51.100.7", "198.51.100.1", "198.51.100.0/255.255.255.0"],
        "ansible_default_ipv6": ["2001:db8:600::7", "fe80::1", "2001:db8:600::7/64"],
    }
    assert action._native_facts({}) == {}
    assert action._native_facts(None) == {}


@pytest.mark.parametrize(
    ("native", "parallel", "message"),
    [
        (
            "ipv6",
            {"prefix": "198.51.100.0/25", "layout": "shared"},
            "mv6_parallel.prefix: 198.51.100.0/25 overlaps 198.51.100.7 of host hv1 "
            "(ansible_all_ipv4_addresses); the parallel network must not touch the native one",
        ),
        (
            "ipv6",
            {"prefix": "198.51.100.128/25", "layout": "shared"},
            "mv6_parallel.prefix: 198.51.100.128/25 overlaps 198.51.100.0/255.255.255.0 of host "
            "hv1 (ansible_default_ipv4); the parallel network must not touch the native one",
        ),
    ],
)
def test_gathered_facts_feed_the_overlap_check(native, parallel, message):
    native_by_host = {"hv1": action._native_facts(FACTS)}
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _plan.build_plan(native, parallel, {"hv1": []}, native_by_host=native_by_host)


class TaggedStr(str):
    """Stands in for ansible-core 2.19's tagged strings, which yaml.safe_dump refuses."""


def test_plain_turns_subclasses_into_plain_types():
    data = {TaggedStr("mv6_guests"): [{TaggedStr("name"): TaggedStr("web6"), "vcpus": 2}]}
    with pytest.raises(yaml.representer.RepresenterError):
        yaml.safe_dump(data)
    plain = action._plain(data)
    assert plain == {"mv6_guests": [{"name": "web6", "vcpus": 2}]}
    assert not isinstance(plain["mv6_guests"][0]["name"], TaggedStr)
    assert yaml.safe_dump(plain)
    assert action._plain((True, None, 1.5)) == [True, None, 1.5]


def test_filters_are_thin_wrappers_that_raise_filter_errors():
    names = sorted(filters.FilterModule().filters())
    assert names == [
        "guest_address",
        "guest_mac",
        "guest_plan",
        "host_plan",
        "parallel_subnet",
        "plan_diagram",
        "plan_site",
    ]
    result = _plan.build_plan("ipv4", {"prefix": "2001:db8:600::/48"}, {"hv1": [{"name": "a"}]})
    assert filters.plan_site(result)["bridge"] == "mv6br0"
    with pytest.raises(AnsibleFilterError, match=r"^mv6_plan: has no site block; it must be"):
        filters.plan_site({"parallel_family": "ipv6", "hosts": {}})
    assert filters.guest_plan(result, "hv1", "a")["mac"] == "02:6d:00:00:00:00"
    assert filters.host_plan(result, "hv1")["subnet"] == "2001:db8:600::/64"
    with pytest.raises(AnsibleFilterError, match=r"^mv6_plan: host hv2 is not in the plan$"):
        filters.host_plan(result, "hv2")
    with pytest.raises(AnsibleFilterError, match=r"^mv6_parallel: must be a dict, got str$"):
        filters.parallel_subnet("2001:db8::/48", 0)
