"""Read the drop counters of the collection's ``bridge mv6_isolation`` table."""

from __future__ import annotations

import json
import subprocess

TABLE = ("bridge", "mv6_isolation")


def table_json(family: str = TABLE[0], name: str = TABLE[1]) -> list[dict]:
    out = subprocess.run(
        ["nft", "-j", "list", "table", family, name],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    return json.loads(out)["nftables"]


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


def drop_total(family: str = TABLE[0], name: str = TABLE[1]) -> int:
    return sum(drop_counters(family, name).values())


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }
