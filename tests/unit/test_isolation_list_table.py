"""isolation_facts.list_table on nft's JSON as nft 1.0.6 prints it (shapes taken from a real
owned table here), with a fake run_command: what it keeps, what it leaves out, and a table
that goes while it is read."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _isolation as iso
from ansible_collections.mv6.transition.plugins.modules import isolation_facts

META = {"metainfo": {"version": "1.0.6", "json_schema_version": 1}}
T = "mv6_isolation"


def chain(name, table=T, hook=None):
    c = {"family": "bridge", "table": table, "name": name, "handle": 1}
    if hook:
        c.update(type="filter", hook=hook, prio=0, policy="accept")
    return {"chain": c}


def nft_out(*items):
    return json.dumps({"nftables": [META, *items]})


PORT_SET_ALONE = {
    "set": {
        "family": "bridge",
        "name": iso.PORT_SET,
        "table": T,
        "type": "ifname",
        "elem": ["mv6p0", "mv6p1"],
    }
}
LISTINGS = {
    ("list", "table", "bridge", T): "table bridge mv6_isolation {\n\tflags owner\n}\n",
    ("-j", "list", "chains", "bridge"): nft_out(
        chain("forward", hook="forward"), chain("guest_mv6p0"), chain("input", table="other")
    ),
    ("-j", "list", "counters", "table", "bridge", T): nft_out(
        {"counter": {"family": "bridge", "name": "drop_input", "table": T, "packets": 3}}
    ),
    ("-j", "list", "sets", "bridge"): nft_out(
        {"set": {"family": "bridge", "name": iso.PORT_SET, "table": T, "type": "ifname"}},
        {"set": {"family": "bridge", "name": "uplink_macs", "table": T, "type": "ether_addr"}},
        {"set": {"family": "bridge", "name": "theirs", "table": "other", "type": "ifname"}},
    ),
    ("-j", "list", "set", "bridge", T, iso.PORT_SET): nft_out(PORT_SET_ALONE),
}


class FakeModule:
    def __init__(self, listings, gone_after=None):
        self.listings = listings
        self.calls = []
        self.gone_after = gone_after

    def run_command(self, argv, check_rc=False):
        key = tuple(argv[1:])
        self.calls.append(key)
        if self.gone_after is not None and len(self.calls) > self.gone_after:
            return 1, "", "Error: No such file or directory"
        if key not in self.listings:
            return 1, "", "Error: No such file or directory"
        return 0, self.listings[key], ""

    def fail_json(self, **kw):
        raise AssertionError(kw)


def test_keeps_the_tables_chains_counters_and_the_port_set_with_its_elements():
    module = FakeModule(LISTINGS)
    listed, text = isolation_facts.list_table(module, "nft", "bridge", T)
    assert "flags owner" in text and iso.table_is_owned(text)
    items = listed["nftables"]
    assert not any("metainfo" in i for i in items)
    assert all(next(iter(i.values()))["table"] == T for i in items)
    assert [i["chain"]["name"] for i in items if "chain" in i] == ["forward", "guest_mv6p0"]
    sets = [i["set"] for i in items if "set" in i]
    assert sorted(s["name"] for s in sets) == [iso.PORT_SET, "uplink_macs"]
    assert [s.get("elem") for s in sets if s["name"] == iso.PORT_SET] == [["mv6p0", "mv6p1"]]
    # No listing prints the table object (whose flags nft prints from freed memory), and no
    # name found in the table is passed back to nft but the port set's own.
    assert not any("table" in i for i in items)
    assert ("-j", "list", "table", "bridge", T) not in module.calls
    assert ("-j", "list", "chain", "bridge", T, "guest_mv6p0") not in module.calls


def test_what_it_lists_is_what_the_checks_read():
    listed, _text = isolation_facts.list_table(FakeModule(LISTINGS), "nft", "bridge", T)
    found, counters = iso.check_nft_table(listed, T, ["mv6p0", "mv6p1"])
    assert [v["check"] for v in found if v["check"] == "nft_set"] == []
    assert counters["drop_input"]["packets"] == 3
    found, _counters = iso.check_nft_table(listed, T, ["mv6p2"])
    assert [(v["check"], v["object"]) for v in found if v["check"] == "nft_set"] == [
        ("nft_set", "mv6p2")
    ]


def test_a_missing_port_set_is_left_for_the_check_to_report():
    listings = {k: v for k, v in LISTINGS.items() if k[:3] != ("-j", "list", "set")}
    listed, _text = isolation_facts.list_table(FakeModule(listings), "nft", "bridge", T)
    assert not any(i["set"]["name"] == iso.PORT_SET for i in listed["nftables"] if "set" in i)
    found, _counters = iso.check_nft_table(listed, T, [])
    assert ("nft_set", f"bridge {T} {iso.PORT_SET}") in [(v["check"], v["object"]) for v in found]


def test_no_table_is_none():
    assert isolation_facts.list_table(FakeModule({}), "nft", "bridge", T) == (None, None)


@pytest.mark.parametrize("gone_after", [1, 2, 3])
def test_a_table_that_goes_while_it_is_read_is_missing_not_a_failure(gone_after):
    module = FakeModule(LISTINGS, gone_after=gone_after)
    assert isolation_facts.list_table(module, "nft", "bridge", T) == (None, None)


def test_the_inet_guard_lists_no_port_set():
    listings = {
        ("list", "table", "inet", T): "table inet mv6_isolation {\n\tflags owner\n}\n",
        ("-j", "list", "chains", "inet"): nft_out(
            {"chain": {"family": "inet", "table": T, "name": "parallel_input", "hook": "input"}}
        ),
        ("-j", "list", "counters", "table", "inet", T): nft_out(),
        ("-j", "list", "sets", "inet"): nft_out(),
    }
    module = FakeModule(listings)
    listed, _text = isolation_facts.list_table(module, "nft", "inet", T)
    assert [i["chain"]["name"] for i in listed["nftables"]] == ["parallel_input"]
    assert not any(call[:3] == ("-j", "list", "set") for call in module.calls)
