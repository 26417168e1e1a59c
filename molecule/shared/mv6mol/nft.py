"""Read the drop counters of the collection's tables: ``bridge mv6_isolation`` (the filter on
the parallel bridge) and ``inet mv6_isolation`` (the host guard), where present."""

from __future__ import annotations

import json
import subprocess

TABLE = ("bridge", "mv6_isolation")


def _nft_json(*args: str) -> list[dict]:
    out = subprocess.run(
        ["nft", "-j", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    return [i for i in json.loads(out)["nftables"] if "metainfo" not in i]


def table_json(family: str = TABLE[0], name: str = TABLE[1]) -> list[dict]:
    """The table's chains, rules, sets and counters, as ``nft -j list table`` lists them but
    without the table object: nft 1.0.6 prints the flags of a table with the owner flag (the
    keeper's) from freed memory, which can break that JSON. CalledProcessError where there is
    no such table."""
    subprocess.run(
        ["nft", "list", "table", family, name], capture_output=True, check=True, timeout=30
    )
    items = []
    for kind in ("chain", "set"):
        for item in _nft_json("list", kind + "s", family):
            if item.get(kind, {}).get("table") == name:
                items += _nft_json("list", kind, family, name, item[kind]["name"])
    return items + _nft_json("list", "counters", "table", family, name)


def drop_counters(family: str = TABLE[0], name: str = TABLE[1]) -> dict[str, int]:
    """Packets counted by every rule that drops, keyed by chain:handle (named counters by name).

    A named counter referenced by several drop rules is counted once.
    """
    items = table_json(family, name)
    named = {
        i["counter"]["name"]: i["counter"].get("packets", 0)
        for i in items
        if "counter" in i and isinstance(i["counter"], dict) and "name" in i["counter"]
    }
    counts: dict[str, int] = {}
    for item in items:
        rule = item.get("rule")
        if not rule:
            continue
        exprs = rule.get("expr", [])
        if not any("drop" in e for e in exprs):
            continue
        for e in exprs:
            c = e.get("counter")
            if isinstance(c, dict) and "packets" in c:
                counts[f"{rule['chain']}:{rule['handle']}"] = c["packets"]
            elif isinstance(c, str) and c in named:
                counts[f"counter {c}"] = named[c]
    return counts


def all_drop_counters() -> dict[str, int]:
    """Drop counters of both collection tables, keyed "family:..."; a missing table adds none."""
    out: dict[str, int] = {}
    for family in ("bridge", "inet"):
        try:
            counts = drop_counters(family, TABLE[1])
        except subprocess.CalledProcessError:
            continue
        out.update({f"{family}:{k}": v for k, v in counts.items()})
    return out


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
