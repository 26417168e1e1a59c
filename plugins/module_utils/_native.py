# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The native state of a host: normalise, filter and compare.

PRIVATE to the collection: no compatibility promise. Pure functions over the JSON that
``ip -j`` and ``nft -j`` print and over a ``/proc/sys`` tree; no Ansible imports.

A *state* is ``{"version": 1, "sections": {SECTION: {KEY: VALUE}}}``. Every entry has a
stable, readable key, so that a difference can be named by its key alone. Volatile fields
(counters, lifetimes, indices, handles, cache data) are dropped when a state is built, so
two reads of an unchanged host give equal states.
"""

from __future__ import annotations

import fnmatch
import grp
import json
import os
import pwd
import stat

STATE_VERSION = 1
SECTIONS = ("links", "addresses", "routes", "rules", "ruleset", "sysctls", "devices")
# Sections a record of an earlier version of this module may lack.
OPTIONAL_SECTIONS = ("devices",)
# Device nodes whose owner, group and mode are part of the native state: roles/hypervisor
# may give /dev/kvm the udev rule's group and mode on a host without udev, and restores it.
DEVICES = ("/dev/kvm",)

# Fields that change without anyone changing the host's configuration.
VOLATILE_KEYS = frozenset(
    {
        "ifindex",
        "link_index",
        "link_netnsid",
        "valid_life_time",
        "preferred_life_time",
        "expires",
        "used",
        "cache",
        "stats",
        "stats64",
        "handle",
        "tentative",
    }
)
# Fields that hold traffic totals inside nft objects and statements.
_NFT_TOTALS = {"counter": ("packets", "bytes"), "quota": ("used", "used_unit")}

# Where a route, a rule or a sysctl names an interface.
_SYSCTL_IFACE_PARENTS = ("conf", "neigh")
_ROUTE_FIELDS = (
    "type",
    "dst",
    "from",
    "table",
    "gateway",
    "via",
    "dev",
    "protocol",
    "scope",
    "prefsrc",
    "metric",
)
_RULE_FIELDS = ("priority", "not", "src", "dst", "iif", "oif", "fwmark", "table", "action")


def _clean(value, parent=None):
    """Drop volatile fields and traffic totals, recursively."""
    if isinstance(value, dict):
        totals = _NFT_TOTALS.get(parent, ())
        return {
            k: _clean(v, k)
            for k, v in sorted(value.items())
            if k not in VOLATILE_KEYS and k not in totals
        }
    if isinstance(value, list):
        return [_clean(v, parent) for v in value]
    return value


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def links_and_addresses(ip_addr: list) -> tuple[dict, dict]:
    """Split ``ip -j addr show`` into links (by name) and addresses (by name + address)."""
    links: dict = {}
    addresses: dict = {}
    for link in ip_addr:
        name = link["ifname"]
        links[name] = _clean({k: v for k, v in link.items() if k != "addr_info"})
        for addr in link.get("addr_info", []):
            key = f"{name} {addr['local']}/{addr['prefixlen']}"
            addresses[key] = dict(_clean(addr), ifname=name)
    return links, addresses


def _render(entry: dict, fields: tuple[str, ...]) -> str:
    parts = []
    for name in fields:
        if name in entry:
            parts.append(f"{name} {entry[name]}")
    for name in sorted(set(entry) - set(fields)):
        value = entry[name]
        if value in ([], {}, None):
            continue
        parts.append(f"{name} {value if isinstance(value, str | int) else _compact(value)}")
    return " ".join(parts)


def routes(family: str, ip_route: list) -> dict:
    """Key each route of ``ip -j -4|-6 route show table all`` by its full description."""
    result: dict = {}
    for route in ip_route:
        entry = _clean(route)
        entry.setdefault("type", "unicast")
        entry.setdefault("table", "main")
        key = f"{family} {_render(entry, _ROUTE_FIELDS)}"
        result[key] = entry
    return result


def rules(family: str, ip_rule: list) -> dict:
    """Key each policy-routing rule of ``ip -j -4|-6 rule show``."""
    return {f"{family} {_render(_clean(r), _RULE_FIELDS)}": _clean(r) for r in ip_rule}


def excluded_table(family: str, table: str, exclude_tables) -> bool:
    return _matches(f"{family} {table}", exclude_tables)


_excluded_table = excluded_table


def ruleset(nft: dict, exclude_tables=()) -> dict:
    """Key the objects of ``nft -j list ruleset`` as ``FAMILY TABLE KIND NAME``.

    Rules are keyed by their chain and their statements; a chain's rule order is an entry of
    its own (``FAMILY TABLE order CHAIN``), so a reordering is a difference too.
    """
    result: dict = {}
    order: dict = {}
    for item in nft.get("nftables", []):
        ((kind, body),) = item.items()
        if kind == "metainfo":
            continue
        family = body.get("family", "")
        table = body.get("name") if kind == "table" else body.get("table", "")
        if _excluded_table(family, table, exclude_tables):
            continue
        body = _clean(body, kind)
        if kind == "table":
            result[f"{family} {table} table"] = body
        elif kind == "rule":
            chain = body["chain"]
            base = f"{family} {table} rule {chain}: {_compact(body.get('expr', []))}"
            key, n = base, 1
            while key in result:
                n += 1
                key = f"{base} (#{n})"
            result[key] = body
            order.setdefault(f"{family} {table} order {chain}", []).append(key)
        else:
            result[f"{family} {table} {kind} {body.get('name', '')}".rstrip()] = body
    for key, keys in order.items():
        result[key] = keys
    return result


def read_sysctls(root: str = "/proc/sys", subtrees=("net/ipv4", "net/ipv6")) -> dict:
    """Read every readable sysctl below ``root/subtree`` as ``net.ipv4.x`` -> value.

    Interface names keep their dots as ``/`` (as sysctl(8) prints them), so that a key splits
    on ``.`` unambiguously. Write-only and unreadable entries are skipped.
    """
    values: dict = {}
    for subtree in subtrees:
        top = os.path.join(root, subtree)
        for directory, dirs, files in os.walk(top):
            dirs.sort()
            rel = os.path.relpath(directory, root)
            segments = [s.replace(".", "/") for s in rel.split(os.sep)]
            for name in sorted(files):
                try:
                    with open(os.path.join(directory, name), encoding="utf-8") as handle:
                        text = handle.read()
                except (OSError, UnicodeDecodeError):
                    continue
                values[".".join([*segments, name])] = " ".join(text.split())
    return values


def _name(lookup, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def read_devices(paths=DEVICES) -> dict:
    """Owner, group, mode and kind of each device node that exists, by path."""
    values: dict = {}
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            continue
        kind = (
            "char"
            if stat.S_ISCHR(info.st_mode)
            else "block"
            if stat.S_ISBLK(info.st_mode)
            else "other"
        )
        values[path] = {
            "kind": kind,
            "owner": _name(pwd.getpwuid, info.st_uid),
            "group": _name(grp.getgrgid, info.st_gid),
            "mode": f"{stat.S_IMODE(info.st_mode):04o}",
        }
    return values


def sysctl_interface(key: str) -> str | None:
    """The interface a sysctl key belongs to (``net.ipv6.conf.eth0.x`` -> ``eth0``)."""
    parts = key.split(".")
    if len(parts) >= 5 and parts[0] == "net" and parts[2] in _SYSCTL_IFACE_PARENTS:
        if parts[3] in ("all", "default"):
            return None
        return parts[3].replace("/", ".")
    return None


def entry_interfaces(section: str, key: str, value) -> list[str]:
    """The interfaces an entry belongs to; an entry of an excluded interface is dropped."""
    if section == "links":
        return [key]
    if section == "addresses":
        return [value["ifname"]]
    if section == "routes":
        names = [value.get("dev")]
        names += [hop.get("dev") for hop in value.get("nexthops", []) if isinstance(hop, dict)]
        return [n for n in names if n]
    if section == "rules":
        return [value[k] for k in ("iif", "oif") if value.get(k)]
    if section == "sysctls":
        name = sysctl_interface(key)
        return [name] if name else []
    return []


def build_state(
    ip_addr: list,
    ip_routes: dict,
    ip_rules: dict,
    nft: dict | None,
    sysctls: dict,
    exclude_interfaces=(),
    exclude_tables=(),
    devices: dict | None = None,
    exclude_devices=(),
) -> dict:
    """Assemble a state from the raw reads; ``ip_routes``/``ip_rules`` map family -> JSON."""
    links, addresses = links_and_addresses(ip_addr)
    sections = {
        "links": links,
        "addresses": addresses,
        "routes": {
            k: v for fam, rs in sorted(ip_routes.items()) for k, v in routes(fam, rs).items()
        },
        "rules": {k: v for fam, rs in sorted(ip_rules.items()) for k, v in rules(fam, rs).items()},
        "ruleset": ruleset(nft or {}, exclude_tables),
        "sysctls": dict(sysctls),
        "devices": dict(devices or {}),
    }
    return filter_state(
        {"version": STATE_VERSION, "sections": sections},
        exclude_interfaces,
        exclude_tables,
        exclude_devices,
    )


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def filter_state(state: dict, exclude_interfaces=(), exclude_tables=(), exclude_devices=()) -> dict:
    """Drop every entry that belongs to an excluded interface, nft table or device.

    A record written before the ``devices`` section existed has none: it stays absent, so
    that comparing with it skips that section instead of reporting it added. Any other
    missing section is an error (a truncated record must not compare as clean).
    """
    if state.get("version") != STATE_VERSION:
        raise ValueError(
            f"native state: unsupported version {state.get('version')!r}, expected {STATE_VERSION}"
        )
    sections = {}
    for section in SECTIONS:
        if section not in state["sections"]:
            if section in OPTIONAL_SECTIONS:
                continue
            raise ValueError(f"native state: section {section!r} is missing")
        entries = state["sections"][section]
        kept = {}
        for key, value in entries.items():
            if _matches_any_interface(section, key, value, exclude_interfaces):
                continue
            if section == "ruleset" and _matches(" ".join(key.split(" ")[:2]), exclude_tables):
                continue
            if section == "devices" and _matches(key, exclude_devices):
                continue
            if section == "links":
                value = _link_settings(value)
            kept[key] = value
        sections[section] = kept
    return {"version": STATE_VERSION, "sections": sections}


def _link_settings(link: dict) -> dict:
    """A link as compared. The qdisc of a link that is administratively down is left out:
    the kernel shows ``noop`` until the link first goes up, attaches the link's default
    qdisc then, and keeps it after the link goes down again. A spare uplink that MV6 brought
    up and put down again as recorded differs in nothing else, and a down link sends nothing.
    """
    if "qdisc" in link and "UP" not in link.get("flags", []):
        return {k: v for k, v in link.items() if k != "qdisc"}
    return link


def _matches_any_interface(section, key, value, patterns) -> bool:
    return any(_matches(name, patterns) for name in entry_interfaces(section, key, value))


def _short(value) -> str:
    return value if isinstance(value, str) else _compact(value)


def diff_states(before: dict, after: dict) -> list[str]:
    """Every difference between two states, one readable line each, in a stable order.

    An empty list means identical.
    """
    lines: list[str] = []
    old_links = before["sections"].get("links", {})
    new_links = after["sections"].get("links", {})
    # The per-interface sysctls of an interface that came or went are one line, not ~100.
    gone = old_links.keys() - new_links.keys()
    came = new_links.keys() - old_links.keys()
    for section in SECTIONS:
        if section in OPTIONAL_SECTIONS and (
            section not in before["sections"] or section not in after["sections"]
        ):
            continue
        old = before["sections"][section]
        new = after["sections"][section]
        for verb, keys, links in (
            ("removed", old.keys() - new.keys(), gone),
            ("added", new.keys() - old.keys(), came),
        ):
            grouped: dict[str, int] = {}
            for key in sorted(keys):
                iface = sysctl_interface(key) if section == "sysctls" else None
                if iface in links:
                    grouped[iface] = grouped.get(iface, 0) + 1
                else:
                    lines.append(f"{section}: {verb} {key}")
            for iface, n in sorted(grouped.items()):
                lines.append(f"{section}: {verb} {n} per-interface keys of {iface}")
        for key in sorted(old.keys() & new.keys()):
            if old[key] == new[key]:
                continue
            if section == "ruleset" and " order " in key and set(old[key]) != set(new[key]):
                continue  # the added or removed rules are reported on their own
            lines.append(f"{section}: changed {key}: {_describe_change(old[key], new[key])}")
    return lines


def _describe_change(old, new) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        parts = []
        for field in sorted(old.keys() | new.keys()):
            if old.get(field) != new.get(field):
                was = _short(old[field]) if field in old else "(unset)"
                now = _short(new[field]) if field in new else "(unset)"
                parts.append(f"{field} {was} -> {now}")
        return "; ".join(parts)
    return f"{_short(old)} -> {_short(new)}"
