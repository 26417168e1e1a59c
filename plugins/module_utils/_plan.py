# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The fleet address planner of mv6.transition.

PRIVATE to the collection: the filters and the address_plan action plugin are its only users,
and its interface may change without notice.

Pure functions over plain data (dicts, lists, str, int, bool). netaddr parses and validates
the site's input; the allocation loop itself is plain integer arithmetic, so a plan never
enumerates an address range. Every bad input raises ValueError whose message starts with the
name of the offending variable. docs/planner.md explains the rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import json
import os
import re
import socket
import tempfile
import time
import urllib.parse
from operator import itemgetter

from ansible_collections.mv6.transition.plugins.module_utils import _names

try:
    import netaddr
except ImportError:  # pragma: no cover - reported by require_netaddr()
    netaddr = None

try:
    import yaml
except ImportError:  # pragma: no cover - ansible-core always ships PyYAML
    yaml = None

PLAN_VERSION = 2
PLAN_HEADER = (
    "# mv6.transition address plan (version 2), written by mv6.transition.address_plan.\n"
    "# The site block is here; each host's guests are in {hosts_dir}/HOST.json.\n"
    "# Slots never move: a removed host or guest stays, released, until pruned on purpose.\n"
)
HOST_HEADER_KEY = "mv6_plan_host"

FAMILIES = ("ipv4", "ipv6")
LAYOUTS = ("per_host", "shared")
ADDRESS_MODES = ("eui64", "sequential")
PERSISTENCE = ("persistent", "non_persistent")
STATES = ("running", "stopped", "absent")
PARALLEL_KEYS = frozenset(
    (
        "prefix",
        "layout",
        "host_prefixlen",
        "address_mode",
        "bridge",
        "uplink",
        "gateway",
        "dns",
        "nft_table",
        "host_guard",
        "dhcp4_pool_size",
    )
)
GUEST_KEYS = frozenset(
    (
        "name",
        "vcpus",
        "memory_mib",
        "image",
        "persistence",
        "state",
        "router",
        "address",
        "disk_gib",
    )
)
# Inclusive integer ranges of the guest sizing keys.
GUEST_INT_RANGES = {"vcpus": (1, 256), "memory_mib": (32, 4194304), "disk_gib": (1, 65536)}
DEFAULT_BRIDGE = "mv6br0"
DEFAULT_NFT_TABLE = "mv6_isolation"
TAP_PREFIX = "mv6p"
# The site block's keys that name what MV6 creates on every host: changing one would leave
# the old one behind on every adopted host, so a plan keeps them (teardown first to rename).
SITE_NAMES = ("bridge", "nft_table", "tap_prefix")
# The allocation keys: changing one would move every allocation.
SITE_ALLOCATION = (
    "native_family",
    "parallel_family",
    "prefix",
    "layout",
    "host_prefixlen",
    "address_mode",
)
# The DHCPv4 pool of an IPv4 subnet (served by its router guest) is the top of the subnet,
# below the broadcast address: by default a quarter of the subnet, at most 64 addresses, none
# in a subnet smaller than 16. The allocator never gives a guest an address in it.
DHCP4_POOL_MAX = 64
DHCP4_POOL_MIN_SUBNET = 16

# Every planned MAC is 02:6d:xx:xx:xx:xx. 0x02 = locally administered, unicast; 0x6d ("m")
# marks MV6. per_host: host slot in bytes 3-4, guest slot in bytes 5-6. shared: the fleet-wide
# guest slot in bytes 3-6.
MAC_HEAD = "02:6d:"
MAC_PER_HOST_SLOTS = 1 << 16
MAC_SHARED_SLOTS = 1 << 32

# Offsets inside a subnet: 0 is the network (v4) or subnet-router anycast (v6) address, 1 is
# kept for the gateway (the router guest, or nobody), guests in sequential mode start at 2.
GATEWAY_OFFSET = 1
FIRST_GUEST_OFFSET = 2

_NTOP = socket.inet_ntop
_AF = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}
_BITS = {"ipv4": 32, "ipv6": 128}
# Ranges no parallel network may use: unspecified/loopback/mapped, link-local, multicast and
# reserved space.
_FORBIDDEN = {
    "ipv4": ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/3"),
    "ipv6": ("::/8", "fe80::/10", "ff00::/8"),
}

_PORTS: list[str] = []
_HEX: list[str] = []
_HEX_PAIR: list[str] = []


def _port(slot: int) -> str:
    while len(_PORTS) <= slot:
        _PORTS.append(f"mv6p{len(_PORTS)}")
    return _PORTS[slot]


def _hex(n: int) -> str:
    while len(_HEX) <= n:
        _HEX.append(f"{len(_HEX):x}")
    return _HEX[n]


def _hex_pair(n: int) -> str:
    """'hh:hh' of a 16-bit value (the last two bytes of a per_host MAC)."""
    while len(_HEX_PAIR) <= n:
        i = len(_HEX_PAIR)
        _HEX_PAIR.append(f"{i >> 8:02x}:{i & 255:02x}")
    return _HEX_PAIR[n]


def require_netaddr() -> None:
    if netaddr is None:
        raise ValueError("netaddr: the Python library netaddr is required on the controller")


def _type_name(value: object) -> str:
    return type(value).__name__


def _is_int(value: object) -> bool:
    """An int that is not a bool (YAML's true is not a number of CPUs)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_a(value: object, kind: type) -> bool:
    return _is_int(value) if kind is int else isinstance(value, kind)


def _pton(family: str, text: str) -> int:
    """An address from the plan file as int; the plan file was checked by check_plan."""
    try:
        return int.from_bytes(socket.inet_pton(_AF[family], text), "big")
    except (OSError, TypeError):
        raise ValueError(f"mv6_plan_file: {text!r} is not an {family} address") from None


def _text(family: str, value: int) -> str:
    return _NTOP(_AF[family], value.to_bytes(_BITS[family] // 8, "big"))


class Site:
    """The site's parallel network, validated: mv6_native_family plus mv6_parallel."""

    __slots__ = (
        "address_mode",
        "bits",
        "bridge",
        "dhcp4_pool_given",
        "dhcp4_pool_size",
        "dns",
        "family",
        "gateway",
        "host_guard",
        "host_prefixlen",
        "host_size",
        "layout",
        "max_guest_slot",
        "max_host_slot",
        "native_family",
        "nft_table",
        "prefix",
        "prefix_text",
        "prefixlen",
        "uplink",
    )

    def to_site_block(self) -> dict:
        """The plan's site block: every name the pieces share, and what MV6 owns on a host."""
        block = {
            "native_family": self.native_family,
            "parallel_family": self.family,
            "prefix": self.prefix_text,
            "layout": self.layout,
            "host_prefixlen": self.host_prefixlen,
            "address_mode": self.address_mode,
            "bridge": self.bridge,
            "uplink": self.uplink,
            "tap_prefix": TAP_PREFIX,
            "nft_table": self.nft_table,
            "host_guard": self.host_guard,
            "dns": list(self.dns),
        }
        block["owned"] = _owned(block)
        return block

    def default_pool(self, base: int) -> tuple[int, int] | None:
        """(first, last) of the DHCPv4 pool a new IPv4 subnet at base gets, or None."""
        if self.family != "ipv4" or not self.dhcp4_pool_size or self.gateway is not None:
            return None
        last = base + self.host_size - 2
        return last - self.dhcp4_pool_size + 1, last

    def subnet_base(self, host_slot: int) -> int:
        if self.layout == "shared":
            return self.prefix
        return self.prefix + (host_slot << (self.bits - self.host_prefixlen))

    def subnet_text(self, host_slot: int) -> str:
        return f"{_text(self.family, self.subnet_base(host_slot))}/{self.host_prefixlen}"

    def mac_int(self, host_slot: int, guest_slot: int) -> int:
        if self.layout == "shared":
            return 0x026D << 32 | guest_slot
        return 0x026D << 32 | host_slot << 16 | guest_slot

    def slot_address(self, host_slot: int, guest_slot: int, router: bool = False) -> int:
        """The address a slot gets when the guest gives none (ints in, int out)."""
        base = self.subnet_base(host_slot)
        if self.address_mode == "eui64":
            return base | eui64_iid(self.mac_int(host_slot, guest_slot))
        if router and self.gateway is None:
            return base + GATEWAY_OFFSET
        return base + FIRST_GUEST_OFFSET + guest_slot


def _owned(site: dict) -> dict:
    """What MV6 owns on every host, from the site block's names: created by MV6 (the bridge,
    the taps, the tables) or taken by it (the uplink, made L2 only)."""
    uplink = [site["uplink"]] if site.get("uplink") else []
    table = site["nft_table"]
    return {
        "interfaces": [site["bridge"], site["tap_prefix"] + "*", *uplink],
        "nft_tables": [f"bridge {table}", f"inet {table}"],
    }


def mac_text(mac: int) -> str:
    b = mac.to_bytes(6, "big")
    return ":".join(f"{x:02x}" for x in b)


def eui64_iid(mac: int) -> int:
    """Modified EUI-64 interface identifier of a 48-bit MAC (RFC 4291, appendix A)."""
    high = (mac >> 24) ^ 0x020000
    return high << 40 | 0xFFFE << 24 | (mac & 0xFFFFFF)


def _parse_family(native_family: object) -> str:
    if native_family not in FAMILIES:
        raise ValueError(f"mv6_native_family: must be ipv4 or ipv6, got {native_family!r}")
    return str(native_family)


def _parse_ifname(name: str, value: object) -> str:
    if not _names.is_interface_name(value):
        raise ValueError(
            f"{name}: must be an interface name ({_names.INTERFACE_NAME_RULE}), got {value!r}"
        )
    return value


def _parse_address(name: str, value: object, family: str) -> int:
    """An address of the parallel family as int; name is the variable to blame."""
    require_netaddr()
    if not isinstance(value, str) or "/" in value:
        raise ValueError(f"{name}: must be an IP address without prefix length, got {value!r}")
    try:
        addr = netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"{name}: {value!r} is not an IP address") from None
    got = f"ipv{addr.version}"
    if got != family:
        raise ValueError(
            f"{name}: {value} is an {got} address, but mv6_parallel.prefix is {family}"
        )
    return int(addr)


def parse_site(native_family: object, parallel: object) -> Site:
    """Validate mv6_native_family and mv6_parallel; return the normalised Site.

    native_family may be None for one-off filter use: the native family is then taken to be the
    family the prefix is not.
    """
    require_netaddr()
    if not isinstance(parallel, dict):
        raise ValueError(f"mv6_parallel: must be a dict, got {_type_name(parallel)}")
    unknown = sorted(str(k) for k in parallel if k not in PARALLEL_KEYS)
    if unknown:
        raise ValueError(
            f"mv6_parallel: unknown key(s) {', '.join(unknown)}; known keys: "
            f"{', '.join(sorted(PARALLEL_KEYS))}"
        )
    site = Site()
    raw_prefix = parallel.get("prefix")
    if raw_prefix is None:
        raise ValueError("mv6_parallel.prefix: is required (the parallel network's site block)")
    if not isinstance(raw_prefix, str) or "/" not in raw_prefix:
        raise ValueError(
            f"mv6_parallel.prefix: must be a network in CIDR notation such as "
            f"2001:db8:600::/48, got {raw_prefix!r}"
        )
    try:
        net = netaddr.IPNetwork(raw_prefix)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ValueError(f"mv6_parallel.prefix: {raw_prefix!r} is not an IP network") from None
    family = f"ipv{net.version}"
    native = "ipv6" if family == "ipv4" else "ipv4"
    if native_family is not None:
        native = _parse_family(native_family)
    if family == native:
        raise ValueError(
            f"mv6_parallel.prefix: {raw_prefix} is {family}, the same family as "
            f"mv6_native_family; the parallel network must run the other family"
        )
    if net.ip != net.network:
        raise ValueError(
            f"mv6_parallel.prefix: {raw_prefix} is not a network address (host bits are set); "
            f"the network is {net.cidr}"
        )
    for forbidden in _FORBIDDEN[family]:
        other = netaddr.IPNetwork(forbidden)
        if net.first <= other.last and other.first <= net.last:
            raise ValueError(
                f"mv6_parallel.prefix: {raw_prefix} overlaps reserved range {forbidden}"
            )
    site.native_family = native
    site.family = family
    site.bits = _BITS[family]
    site.prefix = int(net.network)
    site.prefixlen = net.prefixlen
    site.prefix_text = f"{_text(family, site.prefix)}/{net.prefixlen}"

    layout = parallel.get("layout", "per_host")
    if layout not in LAYOUTS:
        raise ValueError(f"mv6_parallel.layout: must be per_host or shared, got {layout!r}")
    site.layout = layout

    mode = parallel.get("address_mode", "eui64" if family == "ipv6" else "sequential")
    if mode not in ADDRESS_MODES:
        raise ValueError(f"mv6_parallel.address_mode: must be eui64 or sequential, got {mode!r}")
    if mode == "eui64" and family == "ipv4":
        raise ValueError(
            "mv6_parallel.address_mode: eui64 needs an ipv6 parallel network; "
            "mv6_parallel.prefix is ipv4, use sequential"
        )
    site.address_mode = mode

    hpl = parallel.get("host_prefixlen")
    if layout == "shared":
        if hpl is not None and hpl != net.prefixlen:
            raise ValueError(
                f"mv6_parallel.host_prefixlen: must be left out or equal the prefix length "
                f"({net.prefixlen}) with layout shared, got {hpl!r}"
            )
        hpl = net.prefixlen
    elif hpl is None:
        hpl = 64 if family == "ipv6" else 24
    if not _is_int(hpl) or not 1 <= hpl <= site.bits:
        raise ValueError(
            f"mv6_parallel.host_prefixlen: must be an integer from 1 to {site.bits}, got {hpl!r}"
        )
    if layout == "per_host" and hpl <= net.prefixlen:
        raise ValueError(
            f"mv6_parallel.host_prefixlen: /{hpl} is not longer than mv6_parallel.prefix "
            f"{site.prefix_text}; each host needs a slice of it"
        )
    if mode == "eui64" and hpl != 64:
        what = "mv6_parallel.prefix" if layout == "shared" else "mv6_parallel.host_prefixlen"
        raise ValueError(
            f"{what}: address_mode eui64 needs a /64 subnet (the length SLAAC works on), got /{hpl}"
        )
    # network/anycast, gateway and (v4) broadcast take 3 addresses.
    if (1 << (site.bits - hpl)) < 4:
        raise ValueError(
            f"mv6_parallel.host_prefixlen: /{hpl} leaves no address for a guest "
            f"(network, gateway and broadcast come first); use /{site.bits - 2} or shorter"
        )
    site.host_prefixlen = hpl
    site.host_size = 1 << (site.bits - hpl)
    mac_slots = MAC_SHARED_SLOTS if layout == "shared" else MAC_PER_HOST_SLOTS
    if mode == "eui64":
        site.max_guest_slot = mac_slots - 1
    else:
        reserved = 4 if family == "ipv4" else 3  # network, gateway, first guest, broadcast
        site.max_guest_slot = min(mac_slots, site.host_size - reserved + 1) - 1
    if layout == "shared":
        site.max_host_slot = MAC_PER_HOST_SLOTS - 1
    else:
        site.max_host_slot = min(1 << (hpl - net.prefixlen), MAC_PER_HOST_SLOTS) - 1

    site.bridge = _parse_ifname("mv6_parallel.bridge", parallel.get("bridge", DEFAULT_BRIDGE))
    if site.bridge.startswith(TAP_PREFIX):
        raise ValueError(
            f"mv6_parallel.bridge: {site.bridge} starts with {TAP_PREFIX}, the prefix of the "
            f"guests' taps; choose another name"
        )
    uplink = parallel.get("uplink")
    site.uplink = None if uplink is None else _parse_ifname("mv6_parallel.uplink", uplink)
    if site.uplink is not None and (
        site.uplink in (site.bridge, "lo") or site.uplink.startswith(TAP_PREFIX)
    ):
        raise ValueError(
            f"mv6_parallel.uplink: {site.uplink} is the bridge, lo or a guest tap's name; the "
            f"uplink is a NIC or VLAN of the host"
        )
    table = parallel.get("nft_table", DEFAULT_NFT_TABLE)
    if not _names.is_nft_name(table):
        raise ValueError(
            f"mv6_parallel.nft_table: must be an nftables table name ({_names.NFT_NAME_RULE}), "
            f"got {table!r}"
        )
    site.nft_table = table
    guard = parallel.get("host_guard", True)
    if guard is not True and guard is not False:
        raise ValueError(f"mv6_parallel.host_guard: must be true or false, got {guard!r}")
    site.host_guard = guard
    pool_default = 0
    if family == "ipv4" and site.host_size >= DHCP4_POOL_MIN_SUBNET:
        pool_default = min(site.host_size // 4, DHCP4_POOL_MAX)
    pool = parallel.get("dhcp4_pool_size", pool_default)
    room = site.host_size - 4  # network, gateway, one guest, broadcast
    if family != "ipv4" and "dhcp4_pool_size" in parallel and pool:
        raise ValueError(
            f"mv6_parallel.dhcp4_pool_size: the parallel network is {family}; a DHCPv4 pool "
            f"needs an ipv4 prefix (leave it out or set 0)"
        )
    if not _is_int(pool) or not 0 <= pool <= max(room, 0):
        raise ValueError(
            f"mv6_parallel.dhcp4_pool_size: must be an integer from 0 to {max(room, 0)} (a "
            f"/{hpl} leaves room for one guest beside it), got {pool!r}"
        )
    site.dhcp4_pool_size = pool
    site.dhcp4_pool_given = "dhcp4_pool_size" in parallel

    gateway = parallel.get("gateway")
    site.gateway = None
    if gateway is not None:
        if layout == "per_host":
            raise ValueError(
                "mv6_parallel.gateway: only allowed with layout shared; with layout per_host "
                "each host's guest marked router: true is its subnet's gateway"
            )
        gw = _parse_address("mv6_parallel.gateway", gateway, family)
        _check_in_subnet("mv6_parallel.gateway", gw, site, site.prefix, family)
        site.gateway = gw

    if site.gateway is not None and site.dhcp4_pool_given and site.dhcp4_pool_size:
        raise ValueError(
            "mv6_parallel.dhcp4_pool_size: mv6_parallel.gateway is a router outside MV6, and no "
            "guest may be the router that would serve the pool; leave it out or set 0"
        )
    dns = parallel.get("dns", [])
    if dns is None:
        dns = []
    if not isinstance(dns, list):
        raise ValueError(f"mv6_parallel.dns: must be a list of addresses, got {_type_name(dns)}")
    site.dns = [
        _text(family, _parse_address(f"mv6_parallel.dns[{i}]", d, family))
        for i, d in enumerate(dns)
    ]
    return site


def _check_in_subnet(name: str, addr: int, site: Site, base: int, family: str) -> None:
    size = site.host_size
    subnet = f"{_text(family, base)}/{site.host_prefixlen}"
    text = _text(family, addr)
    if not base <= addr < base + size:
        raise ValueError(f"{name}: {text} is outside its subnet {subnet}")
    if addr == base:
        what = "network address" if family == "ipv4" else "subnet-router anycast address"
        raise ValueError(f"{name}: {text} is the {what} of {subnet}")
    if family == "ipv4" and addr == base + size - 1:
        raise ValueError(f"{name}: {text} is the broadcast address of {subnet}")


_STATE_RELEASED = {"running": False, "stopped": False, "absent": True}
# Every name of a host's guests at once (one match over the joined names is much faster at
# fleet scale than one per guest): the guest-name rule of _names, once per line.
_NAMES = re.compile(f"(?:{_names.GUEST_NAME.pattern}\n)*")


class HostGuests:
    """One host's validated mv6_guests, as columns: names sorted, the rest by name."""

    __slots__ = ("explicit", "names", "released", "routers")

    def __init__(self, names: list, routers: frozenset, explicit: dict, released: frozenset):
        self.names = names
        self.routers = routers
        self.explicit = explicit  # name -> (address as given, index in mv6_guests)
        self.released = released


_EMPTY: frozenset = frozenset()
_NO_GUESTS = HostGuests([], frozenset(), {}, frozenset())


def parse_guests(host: str, guests: object) -> HostGuests:
    """Validate one host's mv6_guests. Addresses are checked later, against the subnet.

    This runs over every guest of the fleet, so it checks column by column with C-level
    builtins; when anything is off, _guest_error() walks the guests one by one to name the
    first bad one.
    """
    if guests is None:
        return _NO_GUESTS
    if not isinstance(guests, list):
        raise ValueError(f"mv6_guests on host {host}: must be a list, got {_type_name(guests)}")
    if not guests:
        return _NO_GUESTS
    try:
        names, present = _columns_ok(guests) or (None, None)
    except (KeyError, TypeError, ValueError):
        names = None
    if names is None:
        for i, g in enumerate(guests):
            _guest_error(host, i, g)
        raise ValueError(f"mv6_guests on host {host}: is not valid")  # pragma: no cover
    if len(set(names)) != len(names):
        first: dict[str, int] = {}
        for i, name in enumerate(names):
            if name in first:
                raise ValueError(
                    f"mv6_guests[{i}].name on host {host}: duplicate guest name {name} "
                    f"(also mv6_guests[{first[name]}])"
                )
            first[name] = i
    routers: frozenset = frozenset()
    released: frozenset = frozenset()
    explicit: dict = {}
    if "router" in present:
        routers = frozenset(g["name"] for g in guests if g.get("router"))
    if "state" in present:
        released = frozenset(g["name"] for g in guests if g.get("state") == "absent")
    if "address" in present:
        explicit = {
            g["name"]: (g["address"], i)
            for i, g in enumerate(guests)
            if g.get("address") is not None
        }
    names.sort()
    return HostGuests(names, routers, explicit, released)


_DICT_ONLY = {dict}
_INT_ONLY = {int}
_STR_ONLY = {str}
_BOOL_ONLY = {bool}


def _column(guests: list, key: str, default: object) -> list:
    """Every guest's value of key (default where it is left out)."""
    try:
        return list(map(itemgetter(key), guests))
    except KeyError:
        return [g.get(key, default) for g in guests]


def _columns_ok(guests: list) -> tuple[list, set] | None:
    """(names, keys used) if every guest is valid (duplicates aside), else None."""
    if set(map(type, guests)) != _DICT_ONLY:
        return None
    present = set().union(*guests)
    if not present <= GUEST_KEYS:
        return None
    names = list(map(_NAME_OF, guests))
    joined = "\n".join(names) + "\n"  # TypeError unless every name is a str
    if joined.count("\n") != len(names) or _NAMES.fullmatch(joined) is None:
        return None
    for key, (low, high) in GUEST_INT_RANGES.items():
        if key in present:
            values = _column(guests, key, low)
            if set(map(type, values)) != _INT_ONLY or min(values) < low or max(values) > high:
                return None
    if "router" in present and set(map(type, _column(guests, "router", False))) != _BOOL_ONLY:
        return None
    if "state" in present and not set(_column(guests, "state", "running")) <= _STATES:
        return None
    if "persistence" in present and not (
        set(_column(guests, "persistence", "persistent")) <= _PERSISTENCE
    ):
        return None
    if "image" in present:
        values = _column(guests, "image", "x")
        if set(map(type, values)) != _STR_ONLY or not all(map(_names.is_image_name, values)):
            return None
    return names, present


_NAME_OF = itemgetter("name")
_STATES = frozenset(STATES)
_PERSISTENCE = frozenset(PERSISTENCE)


def _guest_error(host: str, i: int, g: object) -> None:
    """Find what is wrong with guest i of host, raise ValueError; return if nothing is."""
    where = f"on host {host}"
    if not isinstance(g, dict):
        raise ValueError(
            f"mv6_guests[{i}] {where}: must be a dict with at least name, got {_type_name(g)}"
        )
    unknown = sorted(str(k) for k in g if k not in GUEST_KEYS)
    if unknown:
        raise ValueError(
            f"mv6_guests[{i}] {where}: unknown key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(GUEST_KEYS))}"
        )
    name = g.get("name")
    if not _names.is_guest_name(name):
        raise ValueError(
            f"mv6_guests[{i}].name {where}: {name!r} is not a valid hostname "
            f"({_names.GUEST_NAME_RULE})"
        )
    for key, (low, high) in GUEST_INT_RANGES.items():
        v = g.get(key, low)
        if not _is_int(v) or not low <= v <= high:
            raise ValueError(
                f"mv6_guests[{i}].{key} {where}: must be an integer from {low} to {high}, got {v!r}"
            )
    router = g.get("router", False)
    if router is not True and router is not False:
        raise ValueError(f"mv6_guests[{i}].router {where}: must be true or false, got {router!r}")
    for key, choices, default in (
        ("state", STATES, "running"),
        ("persistence", PERSISTENCE, "persistent"),
    ):
        v = g.get(key, default)
        if v not in choices:
            raise ValueError(
                f"mv6_guests[{i}].{key} {where}: must be one of {', '.join(choices)}, got {v!r}"
            )
    image = g.get("image", "x")
    if not _names.is_image_name(image):
        raise ValueError(
            f"mv6_guests[{i}].image {where}: must be an image name ({_names.IMAGE_NAME_RULE}), "
            f"got {image!r}"
        )


def _native_overlaps(site: Site, host: str, native: dict) -> None:
    """Fail when the parallel prefix overlaps an address, gateway or network the host has."""
    require_netaddr()
    first, last = site.prefix, site.prefix + (1 << (site.bits - site.prefixlen)) - 1
    for source, values in sorted(native.items()):
        for value in values or []:
            try:
                net = netaddr.IPNetwork(str(value).split("%", maxsplit=1)[0])
            except (netaddr.AddrFormatError, ValueError, TypeError):
                continue
            if f"ipv{net.version}" != site.family:
                continue
            if net.first <= last and first <= net.last:
                raise ValueError(
                    f"mv6_parallel.prefix: {site.prefix_text} overlaps {value} of host {host} "
                    f"({source}); the parallel network must not touch the native one"
                )


_HOST_KEYS = {"slot": int, "released": bool, "subnet": str, "dns": list, "guests": dict}
_SITE_KEYS = {
    "native_family": str,
    "parallel_family": str,
    "prefix": str,
    "layout": str,
    "host_prefixlen": int,
    "address_mode": str,
    "bridge": str,
    "tap_prefix": str,
    "nft_table": str,
    "host_guard": bool,
    "dns": list,
    "owned": dict,
}
_GUEST_ENTRY_KEYS = {
    "slot": int,
    "released": bool,
    "mac": str,
    "address": str,
    "prefixlen": int,
    "port": str,
    "router": bool,
}


def check_plan(plan: object) -> dict:
    """Check the shape of a plan (version 2, or a version 1 plan file's content, which
    build_plan() migrates); ValueError says what is wrong."""
    if not isinstance(plan, dict):
        raise ValueError(f"the plan is a {_type_name(plan)}, not a mapping")
    version = plan.get("version")
    if version == 1:
        header = plan
    elif version == PLAN_VERSION:
        header = plan.get("site")
        if not isinstance(header, dict):
            raise ValueError("site is missing or not a mapping")
        for key, kind in _SITE_KEYS.items():
            if not _is_a(header.get(key), kind):
                raise ValueError(f"site.{key} is missing or not a {kind.__name__}")
        # Names that reach ip(8), nft(8) and file names: a hand-edited plan gets no further.
        for key in ("bridge", "tap_prefix") + (("uplink",) if header.get("uplink") else ()):
            if not _names.is_interface_name(header.get(key)):
                raise ValueError(f"site.{key} is {header.get(key)!r}, not an interface name")
        if not _names.is_nft_name(header["nft_table"]):
            raise ValueError(f"site.nft_table is {header['nft_table']!r}, not an nftables name")
        # What MV6 owns follows from those names; a hand-edited list could hide native changes.
        if header["owned"] != _owned(header):
            raise ValueError(
                "site.owned is not what the site's bridge, taps, uplink and table give"
            )
        if header["layout"] not in LAYOUTS or {
            header["native_family"],
            header["parallel_family"],
        } != set(FAMILIES):
            raise ValueError("site: the families or the layout are not valid")
        for server in header["dns"]:
            _pton(header["parallel_family"], server)
    else:
        raise ValueError(f"version is {version!r}, expected 1 or {PLAN_VERSION}")
    for key in ("native_family", "parallel_family", "prefix", "layout", "address_mode"):
        if not isinstance(header.get(key), str):
            raise ValueError(f"{key} is missing or not a string")
    if not _is_int(header.get("host_prefixlen")):
        raise ValueError("host_prefixlen is missing or not an integer")
    hosts = plan.get("hosts")
    if not isinstance(hosts, dict):
        raise ValueError("hosts is missing or not a mapping")
    host_slots: dict[int, str] = {}
    fleet_slots: dict[int, str] = {}
    shared = header["layout"] == "shared"
    for host, entry in hosts.items():
        if not isinstance(entry, dict):
            raise ValueError(f"hosts.{host} is not a mapping")
        for key, kind in _HOST_KEYS.items():
            if not _is_a(entry.get(key), kind):
                raise ValueError(f"hosts.{host}.{key} is missing or not a {kind.__name__}")
        if version == PLAN_VERSION:
            router = entry.get("router", False)
            if router is not None and (
                not isinstance(router, str) or router not in entry.get("guests", {})
            ):
                raise ValueError(f"hosts.{host}.router is missing or not one of its guests or null")
            pool = entry.get("dhcp4_pool", False)
            if pool is not None and not (
                isinstance(pool, dict)
                and isinstance(pool.get("first"), str)
                and isinstance(pool.get("last"), str)
            ):
                raise ValueError(
                    f"hosts.{host}.dhcp4_pool is missing or not null or a first/last mapping"
                )
            if pool is not None:
                _pton(header["parallel_family"], pool["first"])
                _pton(header["parallel_family"], pool["last"])
        hslot = entry["slot"]
        if not 0 <= hslot <= 0xFFFF:
            raise ValueError(f"hosts.{host}.slot is {hslot}, outside 0 to 65535")
        if hslot in host_slots:
            raise ValueError(f"hosts {host_slots[hslot]} and {host} share slot {hslot}")
        host_slots[hslot] = host
        slots = fleet_slots if shared else {}
        if _guests_look_right(entry["guests"], hslot, shared, slots, host):
            continue
        for guest, g in entry["guests"].items():
            if not isinstance(g, dict):
                raise ValueError(f"hosts.{host}.guests.{guest} is not a mapping")
            for key, kind in _GUEST_ENTRY_KEYS.items():
                if not _is_a(g.get(key), kind):
                    raise ValueError(
                        f"hosts.{host}.guests.{guest}.{key} is missing or not a {kind.__name__}"
                    )
            gslot = g["slot"]
            if not 0 <= gslot <= (0xFFFFFFFF if shared else 0xFFFF):
                raise ValueError(f"hosts.{host}.guests.{guest}.slot is {gslot}, out of range")
            # A MAC is a function of the slots, so unique slots make unique MACs: a MAC that
            # is not its slots' MAC (edited by hand) could collide, and is refused.
            mac = 0x026D << 32 | gslot if shared else 0x026D << 32 | hslot << 16 | gslot
            if g["mac"] != mac_text(mac):
                raise ValueError(
                    f"hosts.{host}.guests.{guest}.mac is {g['mac']}, but its slots give "
                    f"{mac_text(mac)}"
                )
            if gslot in slots:
                raise ValueError(f"guests {slots[gslot]} and {host}/{guest} share slot {gslot}")
            slots[gslot] = f"{host}/{guest}"
    return plan


_TYPES = {int: {int}, bool: {bool}, str: {str}}
_SLOT_OF = itemgetter("slot")
_MAC_OF = itemgetter("mac")


def _guests_look_right(guests: dict, hslot: int, shared: bool, slots: dict, host: str) -> bool:
    """The checks of check_plan() over one host's guests at once (C-level column tests): True
    when all pass (the host's slots are then added to slots), False to let the per-guest
    loop find and name what is wrong. A plan of 640,000 guests is read in seconds."""
    values = list(guests.values())
    if not values:
        return True
    if set(map(type, values)) != _DICT_ONLY:
        return False
    try:
        for key, kind in _GUEST_ENTRY_KEYS.items():
            if set(map(type, map(itemgetter(key), values))) != _TYPES[kind]:
                return False
        gslots = list(map(_SLOT_OF, values))
    except KeyError:
        return False
    if min(gslots) < 0 or max(gslots) > 0xFFFF or len(set(gslots)) != len(gslots):
        return False
    if shared:
        if not slots.keys().isdisjoint(gslots):
            return False
    elif not 0 <= hslot <= 0xFFFF:
        return False
    _hex_pair(max(gslots))
    pairs = _HEX_PAIR
    if shared:
        expected = [f"{MAC_HEAD}00:00:{pairs[g]}" for g in gslots]
    else:
        head = f"{MAC_HEAD}{pairs[hslot]}:" if hslot < len(pairs) else None
        if head is None:
            _hex_pair(hslot)
            head = f"{MAC_HEAD}{_HEX_PAIR[hslot]}:"
        expected = [head + pairs[g] for g in gslots]
    if list(map(_MAC_OF, values)) != expected:
        return False
    if shared:
        for name, g in zip(guests, gslots, strict=True):
            slots[g] = f"{host}/{name}"
    return True


_SITE_VARIABLE = {
    "native_family": "mv6_native_family",
    "parallel_family": "mv6_parallel.prefix",
    "prefix": "mv6_parallel.prefix",
    "layout": "mv6_parallel.layout",
    "host_prefixlen": "mv6_parallel.host_prefixlen",
    "address_mode": "mv6_parallel.address_mode",
    "bridge": "mv6_parallel.bridge",
    "nft_table": "mv6_parallel.nft_table",
    "tap_prefix": "the tap prefix",
}


def _check_same_site(site: Site, previous: dict) -> None:
    block = site.to_site_block()
    v1 = previous.get("version") == 1
    old = previous if v1 else previous["site"]
    for key in SITE_ALLOCATION:
        if old.get(key) != block[key]:
            raise ValueError(
                f"{_SITE_VARIABLE[key]}: is {block[key]}, but the plan file was made with "
                f"{old.get(key)}; changing it would move every allocation. Move the plan "
                f"file and its .d directory away to renumber on purpose"
            )
    if v1:
        return  # a version 1 plan names none of them: the inventory's names are taken
    for key in SITE_NAMES:
        if old.get(key) != block[key]:
            raise ValueError(
                f"{_SITE_VARIABLE[key]}: is {block[key]}, but the plan names it {old.get(key)} "
                f"and every adopted host has one of that name; run teardown.yml first to "
                f"rename it (changing it here would leave the old one behind)"
            )


def _highest_address(family: str, guests: dict) -> int:
    return max((_pton(family, g["address"]) for g in guests.values()), default=-1)


def _pool_above(site: Site, base: int, highest: int) -> tuple[int, int] | None:
    """The default pool of the subnet at base, started above highest (an address in use)."""
    pool = site.default_pool(base)
    if pool is None:
        return None
    first, last = max(pool[0], highest + 1), pool[1]
    return (first, last) if first <= last else None


def _pool_entry(site: Site, pool: tuple[int, int] | None) -> dict | None:
    if pool is None:
        return None
    return {"first": _text(site.family, pool[0]), "last": _text(site.family, pool[1])}


def _upgrade_v1(site: Site, previous: dict) -> dict:
    """A version 1 plan's hosts as version 2 entries: no slot, address or MAC moves. Each
    gains its router guest and, for an IPv4 subnet, a DHCPv4 pool above every address it
    has handed out (smaller than the default, or none, when the subnet is that full)."""
    hosts = previous["hosts"]
    family = site.family
    fleet_pool = None
    if site.layout == "shared":
        highest = max((_highest_address(family, e["guests"]) for e in hosts.values()), default=-1)
        if site.gateway is not None:
            highest = max(highest, site.gateway)
        fleet_pool = _pool_entry(site, _pool_above(site, site.prefix, highest))
    out = {}
    for h, entry in hosts.items():
        routers = sorted(n for n, g in entry["guests"].items() if g["router"] and not g["released"])
        if site.layout == "shared":
            pool = fleet_pool
        else:
            base = site.subnet_base(entry["slot"])
            pool = _pool_entry(
                site, _pool_above(site, base, _highest_address(family, entry["guests"]))
            )
        out[h] = {**entry, "router": routers[0] if routers else None, "dhcp4_pool": pool}
    return out


def _lowest_free(used, start: int) -> int:
    s = start
    while s in used:
        s += 1
    return s


def build_plan(
    native_family: object,
    parallel: object,
    guests_by_host: dict,
    previous: dict | None = None,
    *,
    prune: bool = False,
    release_hosts: object = (),
    native_by_host: dict | None = None,
    inventory_hosts: object = (),
) -> dict:
    """Plan the parallel network of the hosts in guests_by_host (the hosts in the play).

    previous is the plan file's content (already checked with check_plan) or None. Hosts of
    previous that are not in guests_by_host are copied unchanged. inventory_hosts are the
    inventory's host names (a guest becomes an inventory host of its own: its name may be
    none of them). Raises ValueError naming the variable at fault; nothing is partially
    returned.
    """
    enabled = gc.isenabled()
    # The plan is one dict per guest: hundreds of thousands of young objects that are never
    # cyclic garbage. Collecting them while they are built costs about a third of the run.
    gc.disable()
    try:
        return _build_plan(
            native_family,
            parallel,
            guests_by_host,
            previous,
            prune,
            release_hosts,
            native_by_host,
            frozenset(str(h) for h in inventory_hosts or ()),
        )
    finally:
        if enabled:
            gc.enable()


def _check_fleet_names(parsed: dict, prev_hosts: dict, inventory_hosts: frozenset) -> None:
    """A guest's name is its inventory name: unique across the fleet (the plan's hosts outside
    the play included) and not the name of an inventory host."""
    live = {
        h: parsed[h].names
        if not parsed[h].released
        else [n for n in parsed[h].names if n not in parsed[h].released]
        for h in sorted(parsed)
    }
    # Fast path (a fleet of 10,000 hosts has 640,000 names): one set, then the slow loop
    # only when something is wrong, to name the first offender.
    seen: set = set()
    total = 0
    for names in live.values():
        seen.update(names)
        total += len(names)
    if len(seen) == total and not seen & inventory_hosts:
        # The plan's other hosts: a set test per host (C loops), no per-guest Python code.
        for h, entry in prev_hosts.items():
            if h in parsed or entry.get("released"):
                continue
            guests = entry.get("guests", {})
            if not seen.isdisjoint(guests.keys()) and any(
                not guests[n].get("released") for n in seen.intersection(guests.keys())
            ):
                break
        else:
            return
    owner: dict[str, str] = {}
    for h in sorted(prev_hosts):
        if h in parsed or prev_hosts[h].get("released"):
            continue
        for name, entry in prev_hosts[h].get("guests", {}).items():
            if not entry.get("released"):
                owner.setdefault(name, h)
    for h, names in live.items():
        for name in names:
            if name in owner:
                raise ValueError(
                    f"mv6_guests on host {h}: guest name {name} is also a guest of host "
                    f"{owner[name]}; guest names are inventory names and must be unique "
                    f"across the fleet"
                )
            if name in inventory_hosts:
                raise ValueError(
                    f"mv6_guests on host {h}: guest name {name} is the name of an inventory "
                    f"host; a guest joins the inventory under its own name"
                )
            owner[name] = h


def _build_plan(
    native_family: object,
    parallel: object,
    guests_by_host: dict,
    previous: dict | None,
    prune: bool,
    release_hosts: object,
    native_by_host: dict | None,
    inventory_hosts: frozenset = frozenset(),
) -> dict:
    site = parse_site(native_family, parallel)
    if not isinstance(release_hosts, (list, tuple, set, frozenset)):
        raise ValueError(
            f"release_hosts: must be a list of host names, got {_type_name(release_hosts)}"
        )
    release = {str(h) for h in release_hosts}
    prev_hosts: dict = {}
    if previous is not None:
        _check_same_site(site, previous)
        prev_hosts = previous["hosts"]
        if previous.get("version") == 1:
            prev_hosts = _upgrade_v1(site, previous)
    for h in sorted(release):
        if h not in prev_hosts and h not in guests_by_host:
            raise ValueError(f"release_hosts: {h} is neither in the plan nor in the play")

    in_play = sorted(guests_by_host)
    parsed = {h: parse_guests(h, guests_by_host[h]) for h in in_play}
    _check_fleet_names(parsed, prev_hosts, inventory_hosts)
    for h in in_play:
        if native_by_host and native_by_host.get(h):
            _native_overlaps(site, h, native_by_host[h])

    shared = site.layout == "shared"
    family = site.family

    # Host slots: kept from the plan file, else the lowest free one, in sorted-name order.
    used_host_slots = {e["slot"] for e in prev_hosts.values()}
    host_slot: dict[str, int] = {}
    next_free = 0
    for h in in_play:
        prev = prev_hosts.get(h)
        if prev is not None:
            host_slot[h] = prev["slot"]
            continue
        next_free = _lowest_free(used_host_slots, next_free)
        host_slot[h] = next_free
        used_host_slots.add(next_free)
    if used_host_slots and max(used_host_slots) > site.max_host_slot:
        _hosts_exhausted(site, len(used_host_slots))

    # Routers: one per host (per_host) or one in the whole fleet (shared).
    routers: list[str] = []
    for h in in_play:
        hg = parsed[h]
        mine = sorted(hg.routers - hg.released) if h not in release else []
        if len(mine) > 1 and not shared:
            raise ValueError(
                f"mv6_guests on host {h}: more than one guest has router: true "
                f"({', '.join(mine)}); a subnet has one router"
            )
        routers += [f"{h}/{n}" for n in mine]
    if shared:
        for h, entry in prev_hosts.items():
            if h in guests_by_host or entry["released"]:
                continue
            routers += [
                f"{h}/{n}" for n, g in entry["guests"].items() if g["router"] and not g["released"]
            ]
        if len(routers) > 1:
            raise ValueError(
                f"mv6_guests: more than one guest has router: true in the shared layout "
                f"({', '.join(sorted(routers))}); the shared subnet has one router"
            )
        if routers and site.gateway is not None:
            raise ValueError(
                f"mv6_parallel.gateway: is set, but guest {routers[0]} is marked router: true; "
                f"the parallel network has one router"
            )

    # Guest slots: kept, else the lowest free one (skipping slots whose address is reserved).
    fleet_used: set[int] = set()
    fleet_reserved: set[int] = set()
    if shared:
        for h, entry in prev_hosts.items():
            guests = entry["guests"]
            fleet_used.update(g["slot"] for g in guests.values())
            if h not in guests_by_host:
                fleet_reserved.update(_pton(family, g["address"]) for g in guests.values())
        if site.gateway is not None:
            fleet_reserved.add(site.gateway)

    pools = _pools(site, in_play, host_slot, prev_hosts)
    explicit: dict[str, dict[str, tuple[int, int]]] = {}
    for h in in_play:
        base = site.subnet_base(host_slot[h])
        mine = {}
        hg = parsed[h]
        if not hg.explicit:
            explicit[h] = {}
            continue
        pool = pools[h]
        for gname, (raw, index) in sorted(hg.explicit.items(), key=lambda kv: kv[1][1]):
            name = f"mv6_guests[{index}].address on host {h}"
            a = _parse_address(name, raw, family)
            _check_in_subnet(name, a, site, base, family)
            kept = _prev_guests(prev_hosts, h).get(gname, {}).get("address")
            if pool is not None and pool[0] <= a <= pool[1] and kept != _text(family, a):
                raise ValueError(
                    f"{name}: {raw} is inside the DHCPv4 pool {_text(family, pool[0])} - "
                    f"{_text(family, pool[1])} of {site.subnet_text(host_slot[h])} that the "
                    f"router guest hands out (mv6_parallel.dhcp4_pool_size)"
                )
            gateway_slot = site.address_mode == "sequential" and site.gateway is None
            if gateway_slot and a == base + GATEWAY_OFFSET and gname not in hg.routers:
                raise ValueError(
                    f"{name}: {raw} is the gateway address, kept for the guest marked router: true"
                )
            mine[gname] = (a, index)
            if shared:
                fleet_reserved.add(a)
        explicit[h] = mine

    hosts_out: dict = {}
    fleet_next = 0
    for h in in_play:
        hslot = host_slot[h]
        prev_entry = prev_hosts.get(h)
        prev_guests = prev_entry["guests"] if prev_entry is not None else {}
        host_released = h in release
        guests = parsed[h]
        mine = explicit[h]
        base = site.subnet_base(hslot)
        top = site.max_guest_slot
        if pools[h] is not None:
            top = min(top, pools[h][0] - base - FIRST_GUEST_OFFSET - 1)
        if shared:
            reserved = fleet_reserved
            used = fleet_used
            nxt = fleet_next
        elif prev_guests:
            current = set(guests.names)
            reserved = {address for address, _index in mine.values()}
            reserved.update(
                _pton(family, pg["address"]) for n, pg in prev_guests.items() if n not in current
            )
            used = {g["slot"] for g in prev_guests.values()}
            nxt = 0
        else:  # a host new to the plan
            reserved = {address for address, _index in mine.values()} if mine else _EMPTY
            used = set()
            nxt = 0
        if not used and not reserved:
            # Nothing to step around (a fresh plan): slots are consecutive.
            slots = list(range(nxt, nxt + len(guests.names)))
            if slots and slots[-1] > top:
                _guests_exhausted(site, h, slots[-1] + 1, top)
            nxt += len(slots)
        else:
            slots = []
            routers = guests.routers
            for gname in guests.names:
                pg = prev_guests.get(gname)
                if pg is not None:
                    slots.append(pg["slot"])
                    continue
                nxt = _lowest_free(used, nxt)
                c = nxt
                if reserved and gname not in mine:
                    # Step over slots whose address a guest asked for; they stay free for
                    # guests that bring their own address.
                    router = gname in routers
                    while c <= top and (
                        c in used or site.slot_address(hslot, c, router) in reserved
                    ):
                        c += 1
                if c > top:
                    _guests_exhausted(site, h, len(used) + 1, top)
                slots.append(c)
                used.add(c)
        if shared:
            fleet_next = nxt

        entries = _guest_entries(site, hslot, base, guests, slots, mine, host_released)
        for n, pg in prev_guests.items():
            if n not in entries:
                entries[n] = pg if pg["released"] else {**pg, "released": True}
        hosts_out[h] = {
            "slot": hslot,
            "released": host_released,
            "subnet": site.subnet_text(hslot),
            "gateway": None,
            "dns": list(site.dns),
            "router": None,
            "dhcp4_pool": _pool_entry(site, pools[h]),
            "guests": entries,
        }

    if any(explicit.values()):
        _check_taken(site, hosts_out, prev_hosts, explicit)

    gateway_text = None
    if site.gateway is not None:
        gateway_text = _text(family, site.gateway)
    elif shared and routers:
        rh, rn = routers[0].split("/", 1)
        src = hosts_out.get(rh) or prev_hosts[rh]
        gateway_text = src["guests"][rn]["address"]
    for h in in_play:
        entry = hosts_out[h]
        if shared:
            entry["gateway"] = gateway_text
            if routers and routers[0].split("/", 1)[0] == h:
                entry["router"] = routers[0].split("/", 1)[1]
        elif h not in release:
            for name in sorted(parsed[h].routers - parsed[h].released):
                entry["gateway"] = entry["guests"][name]["address"]
                entry["router"] = name

    for h, entry in prev_hosts.items():
        if h in hosts_out:
            continue
        if h in release and not entry["released"]:
            entry = {
                **entry,
                "released": True,
                "guests": {n: {**g, "released": True} for n, g in entry["guests"].items()},
            }
        hosts_out[h] = entry

    if prune:
        hosts_out = {
            h: {**e, "guests": {n: g for n, g in e["guests"].items() if not g["released"]}}
            for h, e in hosts_out.items()
            if not e["released"]
        }
    return {"version": PLAN_VERSION, "site": site.to_site_block(), "hosts": hosts_out}


def _prev_guests(prev_hosts: dict, host: str) -> dict:
    entry = prev_hosts.get(host)
    return entry["guests"] if entry is not None else {}


def _parse_pool(site: Site, pool: dict | None) -> tuple[int, int] | None:
    if pool is None:
        return None
    return _pton(site.family, pool["first"]), _pton(site.family, pool["last"])


def _pools(site: Site, in_play: list, host_slot: dict, prev_hosts: dict) -> dict:
    """host -> the DHCPv4 pool (first, last) of its subnet, or None: kept from the plan, else
    the default one. The allocator hands out no address in it. A dhcp4_pool_size given in
    mv6_parallel resizes a kept pool: smaller always, larger only over free addresses."""
    if site.family != "ipv4":
        return dict.fromkeys(in_play)
    if site.layout == "shared":
        known = [e["dhcp4_pool"] for e in prev_hosts.values()]
        if not known:
            return dict.fromkeys(in_play, site.default_pool(site.prefix))
        taken = {
            _pton(site.family, g["address"]): f"{h}/{n}"
            for h, e in prev_hosts.items()
            for n, g in e["guests"].items()
        }
        pool = _resized(site, site.prefix, _parse_pool(site, known[0]), taken)
        return dict.fromkeys(in_play, pool)
    out = {}
    for h in in_play:
        prev = prev_hosts.get(h)
        base = site.subnet_base(host_slot[h])
        if prev is None:
            out[h] = site.default_pool(base)
            continue
        taken = {_pton(site.family, g["address"]): f"{h}/{n}" for n, g in prev["guests"].items()}
        out[h] = _resized(site, base, _parse_pool(site, prev["dhcp4_pool"]), taken)
    return out


def _resized(site: Site, base: int, pool: tuple | None, taken: dict) -> tuple | None:
    """A kept pool, resized to a dhcp4_pool_size the inventory gives (its top stays below the
    broadcast address); ValueError when growing it would take a planned address."""
    size = site.dhcp4_pool_size
    current = 0 if pool is None else pool[1] - pool[0] + 1
    if not site.dhcp4_pool_given or size == current or site.gateway is not None:
        return pool
    if size == 0:
        return None
    last = base + site.host_size - 2 if pool is None else pool[1]
    first = last - size + 1
    for addr in range(first, last + 1 if pool is None else pool[0]):
        if addr in taken:
            raise ValueError(
                f"mv6_parallel.dhcp4_pool_size: {size} would put {_text(site.family, addr)} of "
                f"guest {taken[addr]} into the DHCPv4 pool of {_text(site.family, base)}/"
                f"{site.host_prefixlen}; planned addresses never move (at most "
                f"{current + _free_below(first, last if pool is None else pool[0], taken)})"
            )
    return first, last


def _free_below(first: int, stop: int, taken: dict) -> int:
    """How many free addresses directly below stop, down to first."""
    n = 0
    for addr in range(stop - 1, first - 1, -1):
        if addr in taken:
            break
        n += 1
    return n


_BASES: dict[tuple[bool, int], list[dict]] = {}


def _slot_bases(released: bool, prefixlen: int, top: int) -> list[dict]:
    """Per-slot entry templates (the texts left empty): always copied, never handed out."""
    bases = _BASES.setdefault((released, prefixlen), [])
    while len(bases) <= top:
        s = len(bases)
        bases.append(
            {
                "slot": s,
                "released": released,
                "mac": "",
                "address": "",
                "prefixlen": prefixlen,
                "link_local": "",
                "port": _port(s),
                "router": False,
            }
        )
    return bases


def _guest_entries(
    site: Site,
    hslot: int,
    base: int,
    guests: HostGuests,
    slots: list[int],
    explicit: dict[str, tuple[int, int]],
    host_released: bool,
) -> dict:
    """The plan entries of one host's guests: the hot loop, plain ints and cached strings."""
    family = site.family
    prefixlen = site.host_prefixlen
    out = {}
    if site.address_mode == "eui64" and site.layout == "per_host":
        # MAC 02:6d:HH:hh:GG:gg gives IID 006d:HHff:fehh:GGgg. Its first three hextets are
        # never 0, so RFC 5952 compression happens only inside the /64 prefix, and the address
        # text is (prefix text) + (IID text): no per-guest formatting but the cached slot hex.
        iid_head = f"6d:{(hslot >> 8) << 8 | 0xFF:x}:{0xFE00 | (hslot & 0xFF):x}:"
        probe = base | 0x006D00FFFE000001
        head = _text(family, probe)[: -len("6d:ff:fe00:1")] + iid_head
        ll_head = "fe80::" + iid_head
        mac_head = f"{MAC_HEAD}{hslot >> 8:02x}:{hslot & 0xFF:02x}:"
        top = max(slots) if slots else 0
        _hex(top)
        _hex_pair(top)
        hexes, pairs = _HEX, _HEX_PAIR
        # Copying a cached eight-key dict of the per-slot constants and setting the three texts
        # is faster than building the dict from scratch (no new keys: the copy never resizes).
        bases = _slot_bases(host_released, prefixlen, top)
        for name, s in zip(guests.names, slots, strict=True):
            entry = bases[s].copy()
            gs = hexes[s]
            entry["mac"] = mac_head + pairs[s]
            entry["address"] = head + gs
            entry["link_local"] = ll_head + gs
            out[name] = entry
        _mark(family, out, guests, explicit)
        return out
    routers = guests.routers
    for name, s in zip(guests.names, slots, strict=True):
        router = name in routers
        mac = site.mac_int(hslot, s)
        addr = explicit[name][0] if name in explicit else site.slot_address(hslot, s, router)
        entry = {
            "slot": s,
            "released": host_released or name in guests.released,
            "mac": mac_text(mac),
            "address": _text(family, addr),
            "prefixlen": prefixlen,
            "port": _port(s),
            "router": router,
        }
        if family == "ipv6":
            entry["link_local"] = _text(family, 0xFE80 << 112 | eui64_iid(mac))
        out[name] = entry
    return out


def _mark(family: str, out: dict, guests: HostGuests, explicit: dict) -> None:
    """Apply the few exceptions of the hot loop: routers, released guests, given addresses."""
    for name in guests.routers:
        out[name]["router"] = True
    for name in guests.released:
        out[name]["released"] = True
    for name, (addr, _index) in explicit.items():
        out[name]["address"] = _text(family, addr)


def _check_taken(site: Site, hosts: dict, prev_hosts: dict, explicit: dict) -> None:
    """An explicit address may not be another guest's address or the gateway."""
    scopes: list[tuple[str, list[str]]]
    if site.layout == "shared":
        everyone = sorted(set(hosts) | set(prev_hosts))
        scopes = [(h, everyone) for h in sorted(explicit) if explicit[h]][:1]
    else:
        scopes = [(h, [h]) for h in sorted(explicit) if explicit[h]]
    for _host, members in scopes:
        owners: dict[str, str] = {}
        if site.gateway is not None:
            owners[_text(site.family, site.gateway)] = "mv6_parallel.gateway"
        mine = set()
        for h in members:
            entry = hosts.get(h) or prev_hosts[h]
            for n, g in sorted(entry["guests"].items()):
                if n in explicit.get(h, {}):
                    mine.add((h, n))
                else:
                    owners.setdefault(g["address"], f"{h}/{n}")
        for h, n in sorted(mine, key=lambda hn: (hn[0], explicit[hn[0]][hn[1]][1])):
            text = hosts[h]["guests"][n]["address"]
            owner = owners.get(text)
            if owner is not None:
                index = explicit[h][n][1]
                raise ValueError(
                    f"mv6_guests[{index}].address on host {h}: {text} is already taken by {owner}"
                )
            owners[text] = f"{h}/{n}"


def _hosts_exhausted(site: Site, needed: int) -> None:
    if site.layout == "shared":
        raise ValueError(
            f"mv6_parallel.prefix: pool exhausted: the MAC layout holds {MAC_PER_HOST_SLOTS} "
            f"hosts, the plan needs {needed}"
        )
    slices = 1 << (site.host_prefixlen - site.prefixlen)
    raise ValueError(
        f"mv6_parallel.prefix: pool exhausted: {site.prefix_text} holds {slices} subnets of "
        f"/{site.host_prefixlen} (mv6_parallel.host_prefixlen), the plan needs {needed}"
    )


def _guests_exhausted(site: Site, host: str, needed: int, top: int) -> None:
    room = top + 1
    beside = ""
    if top < site.max_guest_slot:
        beside = " beside its DHCPv4 pool (mv6_parallel.dhcp4_pool_size)"
    if site.layout == "shared":
        raise ValueError(
            f"mv6_parallel.prefix: pool exhausted: {site.prefix_text} holds {room} guest "
            f"addresses{beside}, the plan needs {needed}"
        )
    raise ValueError(
        f"mv6_guests on host {host}: {needed} guests do not fit: a /{site.host_prefixlen} "
        f"(mv6_parallel.host_prefixlen) holds {room} guest addresses{beside}"
    )


# One-off lookups for the filters.


def site_block(plan: object) -> dict:
    if not isinstance(plan, dict) or not isinstance(plan.get("site"), dict):
        raise ValueError(
            "mv6_plan: has no site block; it must be a version 2 plan from "
            "mv6.transition.address_plan (or the mv6.transition.plan lookup)"
        )
    return plan["site"]


def host_entry(plan: object, host: object) -> dict:
    if not isinstance(plan, dict) or not isinstance(plan.get("hosts"), dict):
        raise ValueError("mv6_plan: must be a plan returned by mv6.transition.address_plan")
    entry = plan["hosts"].get(host)
    if entry is None:
        raise ValueError(f"mv6_plan: host {host} is not in the plan")
    return entry


def guest_entry(plan: object, host: object, guest: object) -> dict:
    entry = host_entry(plan, host)["guests"].get(guest)
    if entry is None:
        raise ValueError(f"mv6_plan: host {host} has no guest {guest} in the plan")
    return entry


def _slot(name: str, value: object, high: int) -> int:
    if not _is_int(value) or not 0 <= value <= high:
        raise ValueError(f"{name}: must be an integer from 0 to {high}, got {value!r}")
    return value


def parallel_subnet(parallel: object, host_slot: object) -> str:
    site = parse_site(None, parallel)
    return site.subnet_text(_slot("host_slot", host_slot, site.max_host_slot))


def guest_mac(parallel: object, host_slot: object, guest_slot: object) -> str:
    site = parse_site(None, parallel)
    hs = _slot("host_slot", host_slot, site.max_host_slot)
    return mac_text(site.mac_int(hs, _slot("guest_slot", guest_slot, site.max_guest_slot)))


def guest_address(
    parallel: object, host_slot: object, guest_slot: object, router: object = False
) -> str:
    site = parse_site(None, parallel)
    hs = _slot("host_slot", host_slot, site.max_host_slot)
    gs = _slot("guest_slot", guest_slot, site.max_guest_slot)
    if router is not True and router is not False:
        raise ValueError(f"router: must be true or false, got {router!r}")
    return _text(site.family, site.slot_address(hs, gs, router))


# The plan file.
#
# Version 2 is a site file (YAML: the version, the site block and an index of the hosts with
# their slots) and, in a directory beside it, one JSON file per host with its entry and one
# guest per line. docs/planner.md says why: a round trip of 10,000 hosts x 64 guests stays
# within seconds, one host's entries are read without parsing the fleet, and a person reads
# either with less(1). The host files are written first and the site file last, each
# replaced atomically, so a run killed half way leaves a plan that is one of the two.


def hosts_dir(path: str) -> str:
    """The directory of the host files of the plan file at path: mv6_plan.yml -> mv6_plan.d."""
    stem, ext = os.path.splitext(path)
    return (stem if ext in (".yml", ".yaml") else path) + ".d"


def host_file(host: str) -> str:
    """A host's file name in hosts_dir(): the host name, quoted so that it is one name (a
    name too long for one becomes a hash of it)."""
    name = urllib.parse.quote(host, safe="")
    if len(name) > 200:
        name = "h-" + hashlib.sha256(host.encode()).hexdigest()
    return name + ".json"


_GUEST_JSON = json.JSONEncoder(sort_keys=True, separators=(", ", ": "), ensure_ascii=True).encode


def _host_text(host: str, entry: dict) -> str:
    lines = ["{", f' "{HOST_HEADER_KEY}": {json.dumps(host, ensure_ascii=True)},']
    for key in sorted(entry):
        if key != "guests":
            lines.append(f" {json.dumps(key)}: {_GUEST_JSON(entry[key])},")
    guests = entry["guests"]
    if not guests:
        lines.append(' "guests": {}')
    else:
        lines.append(' "guests": {')
        names = sorted(guests)
        last = names[-1]
        for name in names:
            comma = "" if name == last else ","
            lines.append(
                f"  {json.dumps(name, ensure_ascii=True)}: {_GUEST_JSON(guests[name])}{comma}"
            )
        lines.append(" }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dump_plan(
    plan: dict, path: str = "mv6_plan.yml", previous: dict | None = None, files: dict | None = None
) -> dict:
    """The plan's files as {name: text}: "" is the site file, the rest are host files of
    hosts_dir(path). Sorted keys and fixed layouts: same plan, same bytes. previous and files
    are what read_plan() returned: a host entry that build_plan() passed through unchanged
    (the same object) keeps its file's text without being encoded again."""
    kept = previous["hosts"] if previous is not None and previous.get("version") == 2 else {}
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    index = {h: e["slot"] for h, e in plan["hosts"].items()}
    body = yaml.dump(
        {"version": plan["version"], "site": plan["site"], "hosts": index},
        Dumper=dumper,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=False,
        width=1000,
    )
    header = PLAN_HEADER.format(hosts_dir=os.path.basename(hosts_dir(path)))
    old = files or {}
    files = {"": header + body}
    for h, entry in plan["hosts"].items():
        name = host_file(h)
        text = old.get(name) if kept.get(h) is entry else None
        files[name] = text if text is not None else _host_text(h, entry)
    return files


def _corrupt(path: str, reason: str) -> ValueError:
    return ValueError(
        f"mv6_plan_file: {path} is corrupt ({reason}); it was kept unchanged, fix it or move "
        f"it away"
    )


def _load_yaml(text: str, path: str):
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        return yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        reason = " ".join(str(e).split())
        raise _corrupt(path, f"not YAML: {reason}") from None


def _read_host(path: str, host: str, slot: object) -> tuple[dict, str]:
    name = os.path.join(hosts_dir(path), host_file(host))
    text = read_plan_file(name)
    if text is None:
        raise _corrupt(path, f"host {host} is in its index but {name} is missing")
    try:
        entry = json.loads(text)
    except ValueError as e:
        raise _corrupt(name, f"not JSON: {e}") from None
    if not isinstance(entry, dict) or entry.pop(HOST_HEADER_KEY, None) != host:
        raise _corrupt(name, f"it is not the entry of host {host}")
    if entry.get("slot") != slot:
        raise _corrupt(name, f"its slot is {entry.get('slot')!r}, the index says {slot!r}")
    return entry, text


def read_plan(path: str) -> tuple[dict | None, dict]:
    """(the plan, {name: text} of its files) of the plan file at path; (None, {}) when there
    is none. A version 1 file is returned as it is (build_plan() and upgrade_plan() migrate
    it). ValueError when anything is corrupt; nothing is changed."""
    text = read_plan_file(path)
    data = None if text is None else _load_yaml(text, path)
    if data is None:
        directory = hosts_dir(path)
        with contextlib.suppress(OSError):
            if any(n.endswith(".json") for n in os.listdir(directory)):
                raise ValueError(
                    f"mv6_plan_file: {path} is missing or empty, but {directory} holds host "
                    f"files of a plan; planning now would give their slots again. Restore "
                    f"{path}, or move {directory} away too to start a new plan"
                )
        return None, ({} if text is None else {"": text})
    files = {"": text}
    if isinstance(data, dict) and data.get("version") == PLAN_VERSION:
        index = data.get("hosts")
        if not isinstance(index, dict):
            raise _corrupt(path, "hosts is missing or not a mapping of host to slot")
        hosts = {}
        for host, slot in index.items():
            hosts[host], files[host_file(str(host))] = _read_host(path, str(host), slot)
        data = {**data, "hosts": hosts}
    try:
        return check_plan(data), files
    except ValueError as e:
        raise _corrupt(path, str(e)) from None


def read_host_entry(path: str, host: str) -> dict | None:
    """One host's entry, read from its own file: nothing else of the fleet is parsed. None
    when the plan does not list the host."""
    text = read_plan_file(path)
    if text is None:
        return None
    data = _load_yaml(text, path)
    if not isinstance(data, dict) or data.get("version") != PLAN_VERSION:
        raise _corrupt(path, "not a version 2 plan; run the planner once to migrate it")
    index = data.get("hosts") or {}
    if host not in index:
        return None
    entry = _read_host(path, host, index[host])[0]
    check_plan({"version": PLAN_VERSION, "site": data.get("site"), "hosts": {host: entry}})
    return entry


def upgrade_plan(plan: dict, native_family: object, parallel: object) -> dict:
    """A plan read from a file, as version 2 (a version 1 one migrated in memory, with the
    inventory's site; no allocation moves). The planner writes the migration."""
    if plan.get("version") == PLAN_VERSION:
        return plan
    site = parse_site(native_family, parallel)
    _check_same_site(site, plan)
    return {"version": PLAN_VERSION, "site": site.to_site_block(), "hosts": _upgrade_v1(site, plan)}


def write_plan(path: str, before: dict, after: dict, keep_v1: bool = False) -> list:
    """Write the files of after that differ from before (host files first, the site file
    last), remove the host files of hosts the plan no longer has, keep a copy of a version
    1 file as PATH.v1. Returns the names written or removed."""
    directory = hosts_dir(path)
    done = []
    changed = [n for n in sorted(after) if n and after[n] != before.get(n)]
    try:
        site_mode = os.stat(path).st_mode & 0o666
    except OSError:
        site_mode = 0o644
    if changed:
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
        except OSError as e:
            raise ValueError(f"mv6_plan_file: cannot create {directory} ({e.strerror})") from None
    for name in changed:
        # A new host file is as private as the site file (an operator's 0600 stays 0600).
        write_plan_file(os.path.join(directory, name), after[name], site_mode)
        done.append(os.path.join(directory, name))
    if after[""] != before.get(""):
        old = before.get("")
        if keep_v1 and old is not None:
            backup = path + ".v1"
            if not os.path.exists(backup):
                write_plan_file(backup, old)
                done.append(backup)
        write_plan_file(path, after[""])
        done.append(path)
    for name in sorted(set(before) - set(after)):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(directory, name))
            done.append(os.path.join(directory, name))
    return done


@contextlib.contextmanager
def locked_plan_file(path: str, timeout: float):
    """Hold an exclusive lock on ``<path>.lock`` while the plan is read, built and written.

    Two runs that plan at the same time (two AWX jobs, two terminals) would otherwise both read
    the old plan and the second write would drop the first one's new allocations. flock(2) is
    released by the kernel when the holder dies, so a killed run never leaves a stale lock.
    """
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise ValueError(
            f"mv6_plan_file: cannot open the lock file {lock} ({e.strerror}); nothing was written"
        ) from None
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"mv6_plan_file: another run has held {lock} for more than {timeout:g} s "
                        f"(lock_timeout); nothing was written"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def read_plan_file(path: str) -> str | None:
    """The plan file's text, or None when there is no plan file yet."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(
            f"mv6_plan_file: cannot read {path} ({reason}); it was kept unchanged"
        ) from None


def write_plan_file(
    path: str, text: str, new_mode: int = 0o644, what: str = "mv6_plan_file"
) -> None:
    """Replace the plan file atomically: a temporary file in the same directory, then rename.
    An existing file keeps its mode; a new one gets new_mode. Errors name what (the variable
    or option the path came from)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = new_mode
    except OSError as e:
        raise ValueError(f"{what}: cannot write {path} ({e.strerror})") from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=".mv6_plan.", suffix=".tmp", dir=directory)
    except OSError as e:
        raise ValueError(f"{what}: cannot write in {directory} ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise ValueError(f"{what}: cannot write {path} ({e.strerror})") from None
