"""Property tests of the planner (hypothesis): whatever the fleet, allocations never collide,
every address lies in its host's subnet, eui64 addresses are their MACs' SLAAC addresses, and
edits never move what was given."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

import netaddr
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _plan

SITES = [
    ("ipv4", {"prefix": "2001:db8:600::/48"}),
    ("ipv4", {"prefix": "2001:db8::/32", "host_prefixlen": 64}),
    ("ipv4", {"prefix": "2001:db8:600::/56", "address_mode": "sequential", "host_prefixlen": 120}),
    ("ipv4", {"prefix": "2001:db8:600:6::/64", "layout": "shared"}),
    ("ipv4", {"prefix": "2001:db8:600:6::/64", "layout": "shared", "address_mode": "sequential"}),
    ("ipv6", {"prefix": "198.51.100.0/24", "host_prefixlen": 27}),
    ("ipv6", {"prefix": "198.51.100.0/24", "layout": "shared"}),
    ("ipv6", {"prefix": "203.0.113.0/24", "layout": "shared", "gateway": "203.0.113.9"}),
]

names = st.from_regex(r"[a-z][a-z0-9-]{0,6}[a-z0-9]", fullmatch=True)
hosts = st.from_regex(r"hv[0-9]{1,2}", fullmatch=True)
guest_lists = st.lists(names, max_size=6, unique=True)
fleets = st.dictionaries(hosts, guest_lists, min_size=1, max_size=6)


def qualified(host, name):
    """Guest names are unique across the fleet (they are inventory names): drawn per host,
    they are qualified with their host."""
    return f"{host}-{name}"


def as_guests(fleet, routers=()):
    return {
        h: [{"name": qualified(h, n), "router": (h, n) in routers} for n in ns]
        for h, ns in fleet.items()
    }


def check_plan_invariants(native, parallel, result, explicit=()):
    site = _plan.parse_site(native, parallel)
    macs, addresses, seen_slots = set(), set(), set()
    for host, entry in result["hosts"].items():
        subnet = netaddr.IPNetwork(entry["subnet"])
        assert subnet.prefixlen == site.host_prefixlen
        assert subnet in netaddr.IPNetwork(result["site"]["prefix"])
        pool = entry["dhcp4_pool"]
        if pool is not None:
            pool = netaddr.IPRange(pool["first"], pool["last"])
            assert pool.last == int(subnet.broadcast) - 1
        ports = set()
        for name, guest in entry["guests"].items():
            mac = netaddr.EUI(guest["mac"])
            first_octet = mac.words[0]
            assert first_octet & 0x02, f"{host}/{name}: not locally administered"
            assert not first_octet & 0x01, f"{host}/{name}: multicast"
            assert guest["mac"] not in macs, f"{host}/{name}: MAC collision"
            macs.add(guest["mac"])
            address = netaddr.IPAddress(guest["address"])
            assert address in subnet, f"{host}/{name}: {address} outside {subnet}"
            if pool is not None:
                assert address not in pool, f"{host}/{name}: {address} in the DHCPv4 pool"
            assert address != subnet.network
            if site.family == "ipv4":
                assert address != subnet.broadcast
            assert guest["address"] == ipaddress.ip_address(guest["address"]).compressed
            assert guest["address"] not in addresses, f"{host}/{name}: address collision"
            addresses.add(guest["address"])
            assert guest["port"] == f"mv6p{guest['slot']}" and len(guest["port"]) <= 15
            assert guest["port"] not in ports
            ports.add(guest["port"])
            if site.layout == "shared":
                assert guest["slot"] not in seen_slots
                seen_slots.add(guest["slot"])
            if site.family == "ipv6":
                assert netaddr.IPAddress(guest["link_local"]) == mac.ipv6_link_local()
                assert guest["link_local"] == ipaddress.ip_address(guest["link_local"]).compressed
            else:
                assert "link_local" not in guest
            if site.address_mode == "eui64" and (host, name) not in explicit:
                # what SLAAC gives this MAC in this /64
                assert address == mac.ipv6(int(subnet.network))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=st.sampled_from(SITES), fleet=fleets, data=st.data())
def test_no_collisions_and_every_address_in_its_subnet(site, fleet, data):
    native, parallel = site
    everyone = [(h, n) for h, ns in fleet.items() for n in ns]
    routers = set()
    if everyone and data.draw(st.booleans()) and "gateway" not in parallel:
        routers.add(data.draw(st.sampled_from(everyone)))
    result = _plan.build_plan(native, parallel, as_guests(fleet, routers))
    check_plan_invariants(native, parallel, result)
    for h, n in routers:
        host = result["hosts"][h]
        assert host["guests"][qualified(h, n)]["router"] is True
        assert host["gateway"] == host["guests"][qualified(h, n)]["address"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=st.sampled_from(SITES), data=st.data())
def test_explicit_addresses_are_honoured_or_refused(site, data):
    native, parallel = site
    fleet = data.draw(fleets)
    guests = as_guests(fleet)
    fresh = _plan.build_plan(native, parallel, guests)
    # ask for an address inside the host's subnet by offset (small, or near the top)
    host = data.draw(st.sampled_from(sorted(fleet)))
    assume(guests[host])
    subnet = netaddr.IPNetwork(fresh["hosts"][host]["subnet"])
    offset = data.draw(st.integers(min_value=0, max_value=min(subnet.size - 1, 40)))
    wanted = str(netaddr.IPAddress(int(subnet.network) + offset))
    guests[host][0]["address"] = wanted
    try:
        result = _plan.build_plan(native, parallel, guests, fresh)
    except ValueError as e:
        # refused for a reason that names the guest's address variable
        assert str(e).startswith(f"mv6_guests[0].address on host {host}: {wanted} ")
        return
    first = guests[host][0]["name"]
    check_plan_invariants(native, parallel, result, {(host, first)})
    assert result["hosts"][host]["guests"][first]["address"] == wanted


KEYS = ("slot", "mac", "address", "link_local", "port")

edits = st.lists(
    st.tuples(
        st.sampled_from(["add_guest", "remove_guest", "add_host", "limit", "prune"]),
        names,
        hosts,
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=st.sampled_from(SITES), fleet=fleets, steps=edits)
def test_edits_never_move_an_allocation(site, fleet, steps):
    native, parallel = site
    fleet = {h: list(ns) for h, ns in fleet.items()}
    current = _plan.build_plan(native, parallel, as_guests(fleet))
    for action, name, host in steps:
        play = fleet
        prune = False
        if action == "add_guest":
            target = sorted(fleet)[hash(name) % len(fleet)]
            if name not in fleet[target]:
                fleet[target].append(name)
        elif action == "remove_guest":
            target = sorted(fleet)[hash(name) % len(fleet)]
            if fleet[target]:
                fleet[target].pop(0)
        elif action == "add_host":
            fleet.setdefault(host, [name])
        elif action == "limit":
            play = {h: ns for h, ns in fleet.items() if h == host} or {host: []}
            fleet.setdefault(host, [])
        else:
            prune = True
        try:
            after = _plan.build_plan(native, parallel, as_guests(play), current, prune=prune)
        except ValueError as e:
            assert "pool exhausted" in str(e) or "do not fit" in str(e)
            return
        check_plan_invariants(native, parallel, after)
        for h, entry in current["hosts"].items():
            if h not in after["hosts"]:
                assert prune and entry["released"]
                continue
            assert after["hosts"][h]["slot"] == entry["slot"]
            assert after["hosts"][h]["subnet"] == entry["subnet"]
            for n, guest in entry["guests"].items():
                if n not in after["hosts"][h]["guests"]:
                    assert prune and guest["released"]
                    continue
                new = after["hosts"][h]["guests"][n]
                assert [new.get(k) for k in KEYS] == [guest.get(k) for k in KEYS]
                if h in play:
                    assert new["released"] == (n not in [qualified(h, x) for x in play[h]])
        # planning the same input again writes the same bytes
        again = _plan.build_plan(native, parallel, as_guests(play), after)
        if not prune:
            assert _plan.dump_plan(again) == _plan.dump_plan(after)
        current = after


@pytest.mark.parametrize("slot", [0, 1, 0xFF, 0x100, 0xFFFF])
def test_fast_text_path_matches_the_generic_one(slot):
    # The per_host eui64 loop builds address text from a cached head; compare with inet_ntop.
    for prefix in (
        "2001:db8::/32",
        "2001:db8::/48",
        "2001:db8:6::/48",
        "2001::/48",
        "2001:0:0:100::/56",
    ):
        site = _plan.parse_site("ipv4", {"prefix": prefix})
        if slot > site.max_host_slot:
            continue
        result = _plan.build_plan("ipv4", {"prefix": prefix}, {"h": [{"name": "g"}]})
        entry = result["hosts"]["h"]["guests"]["g"]
        assert entry["address"] == _plan._text("ipv6", site.slot_address(0, 0))
        got = _plan._guest_entries(
            site,
            slot,
            site.subnet_base(slot),
            _plan.parse_guests("h", [{"name": "g"}]),
            [slot],
            {},
            False,
        )["g"]
        assert got["address"] == _plan._text("ipv6", site.slot_address(slot, slot))
        assert got["link_local"] == _plan._text(
            "ipv6", 0xFE80 << 112 | _plan.eui64_iid(site.mac_int(slot, slot))
        )
