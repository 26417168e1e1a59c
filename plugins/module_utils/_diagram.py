# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The plan as a picture: an SVG document drawn from a version 2 plan (docs/diagram.md).

Written here rather than with a graph library: Graphviz and its Python bindings lay out a
graph by a heuristic that moves boxes when one host is added and needs the ``dot`` binary on
the controller (an AWX execution environment has none); what a plan needs is a fixed grid, the
same bytes for the same plan, and thousands of hosts in well under a second. Only the standard
library is used, so the filter runs on any controller.

The two networks are drawn in two colours and never joined by a line: the native network as a
bus above each row of hypervisors, reaching each host's top edge; the parallel network inside
each host (its bridge, ports and guests) and, where the site has an uplink, as a bus below the
row. The unit tests check, segment by segment, that no native line meets a parallel one.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape, quoteattr

from ansible_collections.mv6.transition.plugins.module_utils import _plan

NATIVE = "#1565c0"  # blue
PARALLEL = "#e65100"  # orange
MUTED = "#6b6b6b"
SUMMARY_OVER = 40  # more hosts than this: one table row per host instead of boxes
COLUMNS = 3
HOST_W = 540
GUEST_H = 40
HEAD_H = 110
GAP = 40
BUS_H = 46
CHAR_W = 6.7  # the width of one character of the 11 px monospace font, for text widths

# The second line of every picture: a file at the diagram's path without it is not replaced.
MARK = "<!-- mv6.transition plan diagram: written by mv6.transition.address_plan -->"

FAMILY = {"ipv4": "IPv4", "ipv6": "IPv6"}


# Characters XML 1.0 does not allow (control characters, lone surrogates, U+FFFE/U+FFFF): a
# plan's host name or a caller's string may hold one, and the picture must still parse.
NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def clean(value: str) -> str:
    return NOT_XML.sub("\ufffd", str(value))


def fit(value: str, width: float) -> str:
    """value cut to what width pixels of the 11 px font hold, with an ellipsis."""
    most = max(4, int(width / CHAR_W))
    return value if len(value) <= most else value[: most - 1] + "…"


class Svg:
    """An SVG document built as lines of text, in drawing order."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def line(self, x1, y1, x2, y2, net: str, dashed: bool = False) -> None:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.parts.append(f'<line class="{net}" x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}"{dash}/>')

    def rect(self, x, y, w, h, cls: str, dashed: bool = False) -> None:
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        self.parts.append(
            f'<rect class="{cls}" x="{x}" y="{y}" width="{w}" height="{h}" rx="6"{dash}/>'
        )

    def text(
        self, x, y, value: str, cls: str = "t", anchor: str = "start", width: float = 0
    ) -> None:
        """A line of text; cut to width pixels (the whole text then in its tooltip)."""
        end = ' text-anchor="end"' if anchor == "end" else ""
        value = clean(value)
        shown = fit(value, width) if width else value
        tip = f"<title>{escape(value)}</title>" if shown != value else ""
        self.parts.append(f'<text class="{cls}" x="{x}" y="{y}"{end}>{tip}{escape(shown)}</text>')

    def group(self, kind: str, name: str) -> None:
        self.parts.append(f'<g class="{kind}" data-name={quoteattr(clean(name))}>')

    def end(self) -> None:
        self.parts.append("</g>")

    def document(self, width: int, height: int, title: str) -> str:
        head = [
            '<?xml version="1.0" encoding="UTF-8"?>',
            MARK,
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img">',
            f"<title>{escape(title)}</title>",
            "<style>"
            "text{font-family:'DejaVu Sans Mono',monospace;font-size:11px;fill:#1a1a1a}"
            ".h{font-size:14px;font-weight:bold}.s{fill:" + MUTED + "}"
            ".n{fill:" + NATIVE + "}.p{fill:" + PARALLEL + "}"
            ".native{stroke:" + NATIVE + ";stroke-width:4}"
            ".parallel{stroke:" + PARALLEL + ";stroke-width:3}"
            ".host{fill:#fafafa;stroke:#444;stroke-width:1.5}"
            ".guest{fill:#fff3e8;stroke:" + PARALLEL + ";stroke-width:1.2}"
            ".router{fill:#ffe0c2;stroke:" + PARALLEL + ";stroke-width:2}"
            ".released{opacity:.45}"
            ".key-n{fill:" + NATIVE + "}.key-p{fill:" + PARALLEL + "}"
            ".row{fill:#f3f3f3}"
            "</style>",
            f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
        ]
        return "\n".join([*head, *self.parts, "</svg>", ""])


def drawn_here(text: str) -> bool:
    """Whether text is a picture this module drew (so that it may be replaced)."""
    return text.split("\n", 2)[1:2] == [MARK]


def _details(value: object, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(
            f"{name}: must be a mapping of host name to value, got a {type(value).__name__}"
        )
    return {str(k): v for k, v in value.items()}


def _natives(value: object) -> dict:
    natives = _details(value, "native_addresses")
    for host, address in natives.items():
        if address is not None and not isinstance(address, str):
            raise ValueError(
                f"native_addresses[{host}]: must be an address as text, got a "
                f"{type(address).__name__}"
            )
    return natives


def _persistence(value: object, default: str) -> dict:
    """{host: {guest: persistence}} from either form the filter takes for each host: a
    mapping of guest to persistence, or the host's mv6_guests (entries without a
    persistence have the role's default)."""
    out = {}
    for host, given in _details(value, "persistence").items():
        if isinstance(given, list):
            kept = {}
            for i, guest in enumerate(given):
                if not isinstance(guest, dict) or not isinstance(guest.get("name"), str):
                    raise ValueError(
                        f"persistence[{host}][{i}]: an mv6_guests entry needs a name, got "
                        f"{type(guest).__name__}"
                    )
                kept[guest["name"]] = guest.get("persistence") or default
            given = kept
        if not isinstance(given, dict):
            raise ValueError(
                f"persistence[{host}]: must be a mapping of guest to persistence or the "
                f"host's mv6_guests list, got a {type(given).__name__}"
            )
        for guest, persistence in given.items():
            if not isinstance(persistence, str):
                raise ValueError(
                    f"persistence[{host}][{guest}]: must be text, got a "
                    f"{type(persistence).__name__}"
                )
        out[host] = {str(g): p for g, p in given.items()}
    return out


def render(
    plan: object,
    native_addresses: object = None,
    persistence: object = None,
    summary_over: int = SUMMARY_OVER,
    default_persistence: str = "persistent",
) -> str:
    """The SVG text of ``plan``. native_addresses maps a host to its native address, and
    persistence a host to ``{guest: persistence}`` or to its mv6_guests list (entries without
    one have default_persistence): both are optional (the plan holds neither) and shown where
    given. Raises ValueError, naming what is wrong."""
    if not isinstance(plan, dict) or plan.get("version") != _plan.PLAN_VERSION:
        version = plan.get("version") if isinstance(plan, dict) else None
        raise ValueError(
            f"plan: a version {_plan.PLAN_VERSION} plan is needed (mv6_plan, as the planner "
            f"sets it), got {'version ' + repr(version) if version else 'no plan'}"
        )
    _plan.check_plan(plan)
    if isinstance(summary_over, bool) or not isinstance(summary_over, int) or summary_over < 0:
        raise ValueError(f"summary_over: must be 0 or more hosts, got {summary_over!r}")
    natives = _natives(native_addresses)
    kept = _persistence(persistence, default_persistence)
    hosts = sorted(plan["hosts"].items(), key=lambda item: item[1]["slot"])
    if len(hosts) > summary_over:
        return _summary(plan["site"], hosts, natives)
    return _detailed(plan["site"], hosts, natives, kept)


def _text_width(text: str) -> int:
    return 2 * GAP + int(len(text) * CHAR_W + 0.5)


def _legend(svg: Svg, site: dict, y: int) -> None:
    native, parallel = FAMILY[site["native_family"]], FAMILY[site["parallel_family"]]
    svg.rect(GAP, y, 14, 14, "key-n")
    svg.text(GAP + 22, y + 11, f"native network ({native}): the hosts' own, left as it is", "n")
    svg.rect(GAP + 470, y, 14, 14, "key-p")
    svg.text(GAP + 492, y + 11, f"parallel network ({parallel}): only in guests, never joined", "p")


def _site_line(site: dict) -> str:
    uplink = f"uplink {site['uplink']}" if site["uplink"] else "no uplink"
    guard = "host guard on" if site["host_guard"] else "host guard off"
    return (
        f"parallel prefix {site['prefix']} · layout {site['layout']} · /{site['host_prefixlen']}"
        f" per {'host' if site['layout'] == 'per_host' else 'site'} · {site['address_mode']}"
        f" · bridge {site['bridge']} · {uplink} · nft table {site['nft_table']} · {guard}"
    )


def _router_of(site: dict, hosts: list) -> str:
    routers = [
        f"{g} on {h}"
        for h, e in hosts
        if not e["released"]
        for g, ge in sorted(e["guests"].items(), key=lambda item: item[1]["slot"])
        if ge.get("router") and not ge["released"]
    ]
    return (
        "parallel router: "
        + (", ".join(routers[:4]) if routers else "none in the plan")
        + (f" and {len(routers) - 4} more" if len(routers) > 4 else "")
    )


def _detailed(site: dict, hosts: list, natives: dict, kept: dict) -> str:
    svg = Svg()
    native, parallel = FAMILY[site["native_family"]], FAMILY[site["parallel_family"]]
    svg.text(
        GAP, 30, f"MV6 plan: {len(hosts)} hypervisor(s), {native} native, {parallel} parallel", "h"
    )
    svg.text(GAP, 50, _site_line(site), "s")
    svg.text(GAP, 68, _router_of(site, hosts), "s")
    _legend(svg, site, 80)
    columns = max(1, min(COLUMNS, len(hosts)))
    width = max(GAP + columns * (HOST_W + GAP), _text_width(_site_line(site)), 1000)
    y = 120
    for start in range(0, len(hosts), COLUMNS) if hosts else ():
        row = hosts[start : start + COLUMNS]
        height = max(HEAD_H + max(1, len(e["guests"])) * GUEST_H + 30 for _name, e in row)
        y = _row(svg, site, row, natives, kept, y, height, width)
    if not hosts:
        svg.text(GAP, y + 20, "no hypervisor is in the plan yet", "s")
        y += 40
    return svg.document(width, y + 10, f"MV6 plan, {len(hosts)} hypervisor(s)")


def _row(svg, site, row, natives, kept, y, height, width) -> int:
    native = FAMILY[site["native_family"]]
    # The native bus of this row, above the boxes.
    bus = y + 18
    svg.line(GAP, bus, width - GAP, bus, "native")
    svg.text(GAP, bus - 8, f"native {native} network", "n")
    top = y + BUS_H
    for i, (host, entry) in enumerate(row):
        x = GAP + i * (HOST_W + GAP)
        _host(svg, site, host, entry, natives.get(host), kept.get(host) or {}, x, top, height)
        svg.line(x + 30, bus, x + 30, top, "native")
    bottom = top + height
    if site["uplink"]:
        pbus = bottom + 28
        svg.line(GAP, pbus, width - GAP, pbus, "parallel")
        svg.text(
            GAP,
            pbus + 18,
            f"parallel {FAMILY[site['parallel_family']]} network, "
            f"over each host's uplink {site['uplink']} (its own link, not a native one)",
            "p",
        )
        for i in range(len(row)):
            x = GAP + i * (HOST_W + GAP) + 60
            svg.line(x, bottom - 30, x, pbus, "parallel")
        return pbus + 40
    return bottom + 30


def _host(svg, site, host, entry, native_address, kept, x, y, height) -> None:
    released = entry["released"]
    svg.group("hv released" if released else "hv", host)
    svg.rect(x, y, HOST_W, height, "host", dashed=released)
    title = host + (" (released)" if released else "")
    inner = HOST_W - 24
    # 14 px bold: wider characters than the 11 px of the width measure
    svg.text(x + 44, y + 20, title, "h", width=(HOST_W - 130) * 11 / 14)
    svg.text(x + HOST_W - 12, y + 20, f"slot {entry['slot']}", "s", "end")
    address = native_address if native_address else "address not given"
    svg.text(
        x + 44, y + 38, f"native {FAMILY[site['native_family']]}: {address}", "n", width=inner - 32
    )
    guard = ", host guard" if site["host_guard"] else ""
    svg.text(
        x + 12, y + 56, f"isolation: nft bridge/inet {site['nft_table']}{guard}", "s", width=inner
    )
    svg.text(x + 12, y + 74, f"bridge {site['bridge']} · {entry['subnet']}", "p", width=inner)
    router = entry["router"]
    routed = [f"router {router}" if router else "no router guest"]
    gateway = entry["gateway"]
    if gateway and not (router and entry["guests"][router]["address"] == gateway):
        routed.append(f"gateway {gateway}")
    pool = entry.get("dhcp4_pool")
    if pool:
        routed.append(f"DHCPv4 pool {pool['first']} to {pool['last']}")
    svg.text(x + 12, y + 92, " · ".join(routed), "p", width=inner)
    # The bridge: a vertical bus inside the box, with one port line per guest.
    bx, top = x + 60, y + HEAD_H - 6
    bottom = y + height - 30
    svg.line(bx, top, bx, bottom, "parallel")
    guests = sorted(entry["guests"].items(), key=lambda item: item[1]["slot"])
    if site["uplink"]:
        svg.text(bx + 8, bottom + 14, f"uplink {site['uplink']}", "p")
    for j, (name, guest) in enumerate(guests):
        gy = y + HEAD_H + j * GUEST_H
        _guest(svg, name, guest, kept.get(name), bx, gy)
    if not guests:
        svg.text(bx + 12, y + HEAD_H + 18, "no guests", "s")
    svg.end()


def _guest(svg, name, guest, persistence, bx, gy) -> None:
    released = guest["released"]
    cls = "router" if guest["router"] else "guest"
    svg.group("vm released" if released else "vm", name)
    svg.line(bx, gy + 16, bx + 40, gy + 16, "parallel", dashed=released)
    svg.text(bx + 4, gy + 12, guest["port"], "p")
    svg.rect(bx + 40, gy + 2, HOST_W - 120, GUEST_H - 6, cls, dashed=released)
    flags = [persistence if persistence else "persistence not given"]
    if guest["router"]:
        flags.insert(0, "router")
    if released:
        flags.insert(0, "released")
    inner = HOST_W - 136
    svg.text(bx + 48, gy + 16, f"{name} · {' · '.join(flags)}", width=inner)
    svg.text(
        bx + 48,
        gy + 30,
        f"{guest['address']}/{guest['prefixlen']} · {guest['mac']}",
        "s",
        width=inner,
    )
    svg.end()


def _summary(site: dict, hosts: list, natives: dict) -> str:
    """Past summary_over hosts: one row per host, the two networks in two columns."""
    svg = Svg()
    native, parallel = FAMILY[site["native_family"]], FAMILY[site["parallel_family"]]
    guests = sum(len(e["guests"]) for _name, e in hosts)
    svg.text(
        GAP,
        30,
        f"MV6 plan (summary): {len(hosts)} hypervisors, {guests} guest slots, "
        f"{native} native, {parallel} parallel",
        "h",
    )
    svg.text(GAP, 50, _site_line(site), "s")
    svg.text(GAP, 68, _router_of(site, hosts), "s")
    _legend(svg, site, 80)
    cols = (
        ("hypervisor", 0),
        ("slot", 260),
        (f"native {native}", 320),
        (f"parallel subnet ({parallel})", 640),
        ("guests", 980),
        ("router guest", 1080),
    )
    width = GAP * 2 + 1380
    y = 130
    for label, dx in cols:
        svg.text(GAP + dx, y, label, "h")
    y += 10
    for i, (host, entry) in enumerate(hosts):
        y += 20
        if i % 2 == 0:
            svg.rect(GAP - 6, y - 14, width - 2 * GAP + 12, 20, "row")
        svg.group("hv released" if entry["released"] else "hv", host)
        live = sum(1 for g in entry["guests"].values() if not g["released"])
        released = len(entry["guests"]) - live
        cells = (
            (host + (" (released)" if entry["released"] else ""), "t"),
            (str(entry["slot"]), "s"),
            (str(natives.get(host) or "not given"), "n"),
            (entry["subnet"], "p"),
            (f"{live}" + (f" (+{released} released)" if released else ""), "t"),
            (entry["router"] or "—", "p"),
        )
        for i, (value, cls) in enumerate(cells):
            room = (cols[i + 1][1] if i + 1 < len(cols) else width - 2 * GAP) - cols[i][1] - 12
            svg.text(GAP + cols[i][1], y, value, cls, width=room)
        svg.end()
    return svg.document(width, y + 30, f"MV6 plan summary, {len(hosts)} hypervisors")
