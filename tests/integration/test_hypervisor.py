"""roles/hypervisor on this machine, on a TEST bridge (never mv6br0).

Topology (all created here, removed in finalizers):

    ns t-hv-up  [u0] ---- t-hvu0 (uplink) --+
    ns t-hv-g0  [eth0] -- t-hvp0 (guest 0) -+-- bridge t-hvbr0 (no host address)
    ns t-hv-g1  [eth0] -- t-hvp1 (guest 1, the parallel router) --+

The namespaces act as guests and as the site beyond the uplink. Frames are injected with
scapy from t-hv-g0 and captured with tcpdump in the other namespaces.
"""

from __future__ import annotations

import grp
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    KVM,
    NetnsLab,
    changed_tasks,
    device_mode,
    run_playbook,
    set_device_mode,
    sh,
    task_results,
    virsh,
    with_site,
)

pytestmark = pytest.mark.timeout(900)

BRIDGE = "t-hvbr0"
UPLINK = "t-hvu0"
TABLE = "t_hv_isolation"
PORTS = ("t-hvp0", "t-hvp1")
NS_UP, NS_G0, NS_G1 = "t-hv-up", "t-hv-g0", "t-hv-g1"
MAC = {"g0": "02:6d:76:00:00:01", "g1": "02:6d:76:00:00:02", "up": "02:6d:76:00:00:0f"}
ADDR = {"g0": "2001:db8:6:1::10", "g1": "2001:db8:6:1::11", "up": "2001:db8:6:1::1"}
LL = {"g0": "fe80::6d:76ff:fe00:1", "g1": "fe80::6d:76ff:fe00:2"}
SCAPY_PYTHON = "/usr/bin/python3"
UPLINK_MAX_MACS = 64

PLAYBOOK = """\
- name: Hypervisor role under test
  hosts: localhost
  gather_facts: false
  roles:
    - role: mv6.transition.hypervisor
  post_tasks:
    - name: Report the accelerator
      ansible.builtin.debug:
        var: mv6_hypervisor_accel_effective
"""

INJECT = r"""
import sys
from scapy.all import (ARP, IP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6EchoRequest, ICMPv6ND_RA, IPv6,
                       Raw, sendp, srp)
kind, count, src_mac, src6 = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
eth = Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
all_nodes = Ether(src=src_mac, dst="33:33:00:00:00:01")
udp = UDP(sport=9, dport=9)
frames = {
    "ipv4": lambda: eth / IP(src="198.51.100.10", dst="198.51.100.255") / udp / Raw(b"t-hv"),
    "arp": lambda: eth / ARP(op=1, hwsrc=src_mac, psrc="198.51.100.10", pdst=sys.argv[5]),
    "vlan": lambda: eth / Dot1Q(vlan=106) / IPv6(src=src6, dst="ff02::1") / udp,
    "qinq": lambda: eth / Dot1AD(vlan=7) / Dot1Q(vlan=106) / IPv6(src=src6, dst="ff02::1") / udp,
    "unknown": lambda: Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff", type=0x88B5) / Raw(b"t-hv"),
    "ra": lambda: all_nodes / IPv6(src=src6, dst="ff02::1", hlim=255) / ICMPv6ND_RA(),
    "spoof_mac": lambda: Ether(src="02:6d:76:00:00:99", dst="33:33:00:00:00:01")
    / IPv6(src=src6, dst="ff02::1") / ICMPv6EchoRequest(),
    "spoof_ip": lambda: all_nodes / IPv6(src="2001:db8:6:1::99", dst="ff02::1")
    / ICMPv6EchoRequest(),
    "good": lambda: all_nodes / IPv6(src=src6, dst="ff02::1") / ICMPv6EchoRequest(),
    "echo": lambda: Ether(src=src_mac, dst=sys.argv[5]) / IPv6(src=src6, dst=sys.argv[6])
    / ICMPv6EchoRequest(),
}
frame = frames[kind]()
if kind == "echo":
    answered, _ = srp(frame, iface="eth0", timeout=2, retry=2, verbose=False)
    sys.exit(0 if len(answered) else 1)
sendp(frame, iface="eth0", count=count, verbose=False)
"""


def l2only_helper(table: str) -> str:
    """The helper the role installs for *table* (the libvirt hook calls it for new taps)."""
    return f"/usr/local/sbin/{table.replace('_', '-')}-l2only"


def fdb(bridge: str) -> list[dict]:
    return json.loads(sh("bridge", "-j", "fdb", "show", "br", bridge).stdout)


def pinned(bridge: str, port: str) -> list[str]:
    """The static sticky MACs on *port*."""
    return sorted(
        e["mac"]
        for e in fdb(bridge)
        if e.get("ifname") == port and e.get("state") == "static" and "sticky" in e.get("flags", [])
    )


def learned(bridge: str, port: str) -> list[str]:
    """The MACs the bridge learned on *port* (dynamic entries)."""
    return sorted(e["mac"] for e in fdb(bridge) if e.get("ifname") == port and not e.get("state"))


def ns_exec(ns: str, *argv: str, check: bool = True, timeout: float = 30):
    return sh("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


def native_snapshot() -> dict:
    """The host's native addresses, routes and nft ruleset, minus what this test owns
    and minus interfaces/tables of other concurrently running tests (names t-*/t_*)."""

    # Other pieces build their own bridges, taps, veths and tables on this machine at the
    # same time (lab, molecule, other tests): their names are left out, everything else is
    # the native host.
    def ours(name: str) -> bool:
        return name.startswith(("t-", "t_", "vnet", "mv6", "mol", "veth", "virbr"))

    addrs = json.loads(sh("ip", "-j", "addr").stdout)
    routes4 = json.loads(sh("ip", "-j", "route", "show", "table", "all").stdout)
    routes6 = json.loads(sh("ip", "-6", "-j", "route", "show", "table", "all").stdout)
    # Table by table, ours left out before nft prints them: nft 1.0.6 prints the JSON of a
    # table with the owner flag (the keepers' tables) from freed memory.
    ruleset = []
    for line in sh("nft", "list", "tables").stdout.splitlines():
        _table, family, name = line.split()
        if not ours(name) and name != TABLE:
            listing = sh("nft", "-j", "list", "table", family, name).stdout
            ruleset += json.loads(listing)["nftables"]
    volatile = {"valid_life_time", "preferred_life_time", "ifindex", "handle", "packets", "bytes"}

    def clean(obj):
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if k not in volatile}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    tables: dict[str, list] = {}
    for item in ruleset:
        kind, body = next(iter(item.items()))
        if kind == "metainfo":
            continue
        key = f"{body.get('family')} {body.get('table', body.get('name'))}"
        if ours(key.split()[1]) or key == f"bridge {TABLE}":
            continue
        tables.setdefault(key, []).append(clean(item))
    return {
        "addr": {a["ifname"]: clean(a) for a in addrs if not ours(a["ifname"])},
        "route4": [clean(r) for r in routes4 if not ours(str(r.get("dev", "")))],
        "route6": [clean(r) for r in routes6 if not ours(str(r.get("dev", "")))],
        "nft": tables,
    }


def counters() -> dict[str, int]:
    data = json.loads(sh("nft", "-j", "list", "counters", "table", "bridge", TABLE).stdout)
    return {
        i["counter"]["name"]: i["counter"]["packets"] for i in data["nftables"] if "counter" in i
    }


class Capture:
    """tcpdump in a namespace, writing a pcap; count() reads it back with a filter."""

    def __init__(self, ns: str, iface: str, path: Path):
        self.path = path
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", iface, "-p", "-U", "-n", "-w", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def frames(self, bpf: str) -> list[str]:
        """The matching frames, one line each with link-level headers (for failure messages)."""
        out = sh("tcpdump", "-r", str(self.path), "-n", "-e", bpf, check=False).stdout
        return [line for line in out.splitlines() if line.strip()]

    def count(self, bpf: str) -> int:
        return len(self.frames(bpf))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """Namespaces, veths, the plan; converges the role and tears it down at the end."""
    workdir = tmp_path_factory.mktemp("t-hv")
    lab = NetnsLab()
    playbook = workdir / "hypervisor.yml"
    playbook.write_text(PLAYBOOK)
    before = native_snapshot()
    plan = {
        "version": 1,
        "native_family": "ipv4",
        "parallel_family": "ipv6",
        "prefix": "2001:db8:6::/48",
        "hosts": {
            "localhost": {
                "slot": 0,
                "released": False,
                "subnet": "2001:db8:6:1::/64",
                "gateway": None,
                "dns": [],
                "guests": {
                    "t-hv-g0": {
                        "slot": 0,
                        "released": False,
                        "mac": MAC["g0"],
                        "address": ADDR["g0"],
                        "prefixlen": 64,
                        "link_local": LL["g0"],
                        "port": PORTS[0],
                        "router": False,
                    },
                    "t-hv-g1": {
                        "slot": 1,
                        "released": False,
                        "mac": MAC["g1"],
                        "address": ADDR["g1"],
                        "prefixlen": 64,
                        "link_local": LL["g1"],
                        "port": PORTS[1],
                        "router": True,
                    },
                },
            }
        },
    }
    extra = with_site(
        {
            "mv6_native_family": "ipv4",
            "mv6_parallel": {"bridge": BRIDGE, "uplink": UPLINK},
            "mv6_plan": plan,
            "mv6_hypervisor_nft_table": TABLE,
            "mv6_hypervisor_nft_file": str(workdir / "etc-nftables.d" / f"{TABLE}.nft"),
            "mv6_hypervisor_accel": "auto",
            "mv6_hypervisor_accel_probe_timeout": 4,
            "mv6_hypervisor_accel_cache": str(workdir / "accel.json"),
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            # The table sees every bridge of the host: never let the test table claim the lab's
            # mv6p* taps.
            "mv6_hypervisor_port_pattern": "t-hvp*",
            "mv6_hypervisor_uplink_max_macs": UPLINK_MAX_MACS,
        }
    )
    state = {"workdir": workdir, "playbook": playbook, "extra": extra, "before": before}
    # The KVM device as a host without udev has it (root:root 0600): the role must give it
    # the udev rule's group and mode, and the teardown must put 0600 back. A record of an
    # earlier real run is kept aside and put back.
    kvm_original = device_mode() if KVM.exists() else None
    kvm_record = Path("/var/lib/mv6/kvm-device.json")
    kvm_record_aside = workdir / "kvm-device.json.aside"
    if kvm_record.exists():
        kvm_record.rename(kvm_record_aside)
    try:
        if kvm_original is not None:
            set_device_mode((0, 0, 0o600))
        for ns in (NS_UP, NS_G0, NS_G1):
            lab.add_ns(ns)
        lab.add_veth(UPLINK, "t-hvu0x", NS_UP, "u0", MAC["up"])
        lab.add_veth(PORTS[0], "t-hvp0x", NS_G0, "eth0", MAC["g0"])
        lab.add_veth(PORTS[1], "t-hvp1x", NS_G1, "eth0", MAC["g1"])
        for ns, key, ifc in ((NS_UP, "up", "u0"), (NS_G0, "g0", "eth0"), (NS_G1, "g1", "eth0")):
            ns_exec(ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{ifc}.accept_ra=0")
            sh("ip", "-n", ns, "addr", "add", f"{ADDR[key]}/64", "dev", ifc, "nodad")
            sh("ip", "-n", ns, "link", "set", ifc, "up")

        state["run1"] = run_playbook(playbook, extra)
        # libvirt attaches taps to the bridge and runs the role's hook, which calls the L2-only
        # helper; here the test does both for its veth "taps".
        for port in PORTS:
            sh("ip", "link", "set", port, "master", BRIDGE)
            sh("ip", "link", "set", port, "up")
        sh(l2only_helper(TABLE), *PORTS)
        # No second run or check run here: the keeper tests at the end of this file re-run
        # the role on this converged host (a check run that changes nothing, a repair whose
        # only change is the keeper's start, a check run and a repair after the keeper
        # stopped, and a run that changes nothing), and the Molecule scenarios' idempotence
        # and check steps run site.yml whole. Two runs fewer here: about 70 s of CI.
        yield state
    finally:
        teardown = run_playbook(playbook, {**extra, "mv6_hypervisor_state": "absent"})
        lab.cleanup()
        sh("ip", "link", "del", BRIDGE, check=False)
        sh("nft", "delete", "table", "bridge", TABLE, check=False)
        Path(f"/etc/sysctl.d/60-mv6-{BRIDGE}.conf").unlink(missing_ok=True)
        Path(f"/var/lib/mv6/uplink-{UPLINK}.sysctl").unlink(missing_ok=True)
        Path(f"/var/lib/mv6/{TABLE}.loaded").unlink(missing_ok=True)
        state["teardown"] = teardown
        after = native_snapshot()
        kvm_after = device_mode() if kvm_original is not None else None
        kvm_record_left = kvm_record.exists()
        if kvm_original is not None:
            set_device_mode(kvm_original)
        kvm_record.unlink(missing_ok=True)
        if kvm_record_aside.exists():
            kvm_record_aside.rename(kvm_record)
        assert teardown["rc"] == 0, teardown.get("stderr") or teardown
        assert after == before, "native addresses/routes/ruleset differ after teardown"
        if kvm_original is not None and not Path("/run/udev/control").exists():
            assert kvm_after == (0, 0, 0o600), f"teardown left /dev/kvm as {kvm_after}"
            assert not kvm_record_left, "teardown left the KVM device record behind"


def test_converges(site):
    run1 = site["run1"]
    assert run1["rc"] == 0, json.dumps(run1)[-4000:]
    assert run1["stats"]["localhost"]["changed"] > 0
    accel = task_results(run1, "Report the accelerator")[0]["mv6_hypervisor_accel_effective"]
    assert accel in ("kvm", "qemu")


CAPS_CACHE = Path("/var/cache/libvirt/qemu/capabilities")
DEFINE_XML = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<os><type arch='x86_64'>hvm</type></os></domain>
"""


def caps_cache() -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in CAPS_CACHE.glob("*.xml")}


@pytest.mark.skipif(
    not KVM.exists() or Path("/run/udev/control").exists(),
    reason="needs a /dev/kvm that udev does not manage",
)
def test_kvm_device_stops_libvirt_reprobing(site, tmp_path):
    """The fixture set /dev/kvm to root:root 0600 before the role ran. Now it has the udev
    rule's group and mode, the original is recorded, and two defines in a row take under
    2 s each without libvirt rewriting its QEMU capabilities cache (40 s each before)."""
    assert device_mode() == (0, grp.getgrnam("kvm").gr_gid, 0o660)
    record = json.loads(Path("/var/lib/mv6/kvm-device.json").read_text())
    assert record == {"path": "/dev/kvm", "owner": "root", "group": "root", "mode": "0600"}
    names = ("t-hv-def1", "t-hv-def2")
    cache_before = caps_cache()
    took = []
    try:
        for name in names:
            xml = tmp_path / f"{name}.xml"
            xml.write_text(DEFINE_XML.format(name=name))
            virsh("undefine", name, check=False)
            start = time.monotonic()
            virsh("define", str(xml))
            took.append(time.monotonic() - start)
    finally:
        for name in names:
            virsh("undefine", name, check=False)
    assert caps_cache() == cache_before, "libvirt rewrote its QEMU capabilities cache"
    assert all(t < 2 for t in took), f"defines took {took} s"


def test_host_has_no_parallel_address(site):
    for name in (BRIDGE, UPLINK, *PORTS):
        link = json.loads(sh("ip", "-j", "addr", "show", "dev", name).stdout)[0]
        assert link["addr_info"] == [], f"{name}: {link['addr_info']}"
        assert sh("sysctl", "-n", f"net.ipv6.conf.{name}.disable_ipv6").stdout.strip() == "1"
        assert sh("sysctl", "-n", f"net.ipv4.conf.{name}.arp_ignore").stdout.strip() == "8"


def test_native_state_unchanged_by_role(site):
    assert native_snapshot() == site["before"]


def test_parallel_family_flows_between_guests(site):
    """An ICMPv6 echo (scapy; this machine has no ping) is answered across the bridge."""
    script = Path("/tmp/t-hv-inject.py")
    script.write_text(INJECT)
    for ns, src, dst in ((NS_G0, "g0", "g1"), (NS_G1, "g1", "up")):
        ns_exec(
            ns, SCAPY_PYTHON, str(script), "echo", "1", MAC[src], ADDR[src], MAC[dst], ADDR[dst]
        )


def inject(kind: str, count: int, src_mac: str = MAC["g0"], src6: str = ADDR["g0"]):
    script = Path("/tmp/t-hv-inject.py")
    script.write_text(INJECT)
    # The ARP frame asks for the host's native IPv4 address.
    ns_exec(NS_G0, SCAPY_PYTHON, str(script), kind, str(count), src_mac, src6, "192.0.2.2")


def observed(tmp_path, send) -> tuple[list[Capture], dict, dict]:
    """Captures at g1 and beyond the uplink around ``send()``; the counters before and after."""
    caps = [
        Capture(NS_G1, "eth0", tmp_path / "g1.pcap"),
        Capture(NS_UP, "u0", tmp_path / "up.pcap"),
    ]
    try:
        time.sleep(1.0)
        before = counters()
        send()
        time.sleep(1.0)
        after = counters()
    finally:
        for cap in caps:
            cap.stop()
    return caps, before, after


@pytest.mark.parametrize(
    ("kind", "counter", "bpf"),
    [
        ("ipv4", "drop_ethertype", "ip"),
        ("arp", "drop_ethertype", "arp"),
        ("vlan", "drop_vlan", "vlan"),
        ("qinq", "drop_qinq", "ether proto 0x88a8"),
        ("unknown", "drop_ethertype", "ether proto 0x88b5"),
        ("ra", "drop_ra_guard", "icmp6 and ip6[40] == 134"),
        ("spoof_mac", "drop_spoof_mac", "ether src 02:6d:76:00:00:99"),
        ("spoof_ip", "drop_spoof_ip", "ip6 src 2001:db8:6:1::99"),
    ],
)
def test_forbidden_frames_reach_nobody(site, tmp_path, kind, counter, bpf):
    sent = 5
    caps, before, after = observed(tmp_path, lambda: inject(kind, sent))
    for cap in caps:
        assert cap.count(bpf) == 0, f"{kind} frames reached {cap.path.name}"
    # Broadcasts pass the forward hook once per egress port, hence "at least".
    assert after[counter] - before[counter] >= sent, (before, after)


def good_echoes_at_g1(tmp_path, count: int = 3) -> int:
    """Legitimate multicast echoes from g0, counted at g1."""
    cap = Capture(NS_G1, "eth0", tmp_path / "g1.pcap")
    try:
        time.sleep(1.0)
        inject("good", count)
        time.sleep(1.0)
    finally:
        cap.stop()
    return cap.count(f"ether src {MAC['g0']} and icmp6 and ip6[40] == 128")


def test_allowed_frames_do_arrive(site, tmp_path):
    """The capture above can see frames: a legitimate multicast echo from g0 arrives."""
    assert good_echoes_at_g1(tmp_path) == 3


def test_router_guest_may_send_ra(site, tmp_path):
    cap = Capture(NS_G0, "eth0", tmp_path / "g0.pcap")
    script = Path("/tmp/t-hv-inject.py")
    script.write_text(INJECT)
    try:
        time.sleep(1.0)
        ns_exec(NS_G1, SCAPY_PYTHON, str(script), "ra", "2", MAC["g1"], LL["g1"])
        time.sleep(1.0)
    finally:
        cap.stop()
    assert cap.count("icmp6 and ip6[40] == 134") == 2


def test_host_answers_no_arp_or_nd(site, tmp_path):
    cap = Capture(NS_G0, "eth0", tmp_path / "g0.pcap")
    try:
        time.sleep(1.0)
        # ARP for the host's native IPv4 addresses, ND for its native IPv6 addresses.
        native4 = [
            a["local"]
            for link in json.loads(sh("ip", "-j", "-4", "addr").stdout)
            for a in link["addr_info"]
            if link["ifname"] != "lo"
        ]
        for addr in native4[:3]:
            ns_exec(NS_G0, "arping", "-c", "2", "-w", "3", "-I", "eth0", addr, check=False)
        native6 = [
            a["local"]
            for link in json.loads(sh("ip", "-j", "-6", "addr").stdout)
            for a in link["addr_info"]
            if link["ifname"] != "lo" and not link["ifname"].startswith("t-")
        ]
        for addr in native6[:3]:
            ns_exec(NS_G0, "ndisc6", "-r", "2", "-w", "500", addr, "eth0", check=False)
        time.sleep(0.5)
    finally:
        cap.stop()
    # Every namespace on the segment may answer for itself (g0's own NA to a neighbour
    # probe from g1 is captured here too); only a frame from anyone else is the host's.
    peers = "(" + " or ".join(f"ether src {mac}" for mac in MAC.values()) + ")"
    answered_arp = cap.frames(f"arp[6:2] == 2 and not {peers}")
    assert answered_arp == [], f"the host answered ARP: {answered_arp}"
    answered_nd = cap.frames(f"icmp6 and ip6[40] == 136 and not {peers}")
    assert answered_nd == [], f"the host answered ND: {answered_nd}"
    # And the host itself sent nothing at all onto the segment.
    host_macs = {
        link["address"]
        for link in json.loads(sh("ip", "-j", "link").stdout)
        if link.get("address") and not link["ifname"].startswith(("t-hvp", "t-hvu"))
    }
    for mac in host_macs:
        if mac != "00:00:00:00:00:00":
            assert cap.count(f"ether src {mac}") == 0, f"host MAC {mac} spoke on the segment"


# --- a guest with root: neighbour discovery, router and FDB attacks -------------------------
# Each frame is sent by scapy inside the attacker's namespace (g0, not the router) and looked
# for at the victim (g1) and beyond the uplink; each class has its own drop counter.

ATTACK6 = r"""
import json, sys
from scapy.all import (UDP, Ether, ICMPv6EchoRequest, ICMPv6MLQuery, ICMPv6ND_NA, ICMPv6ND_NS,
                       ICMPv6ND_RA, ICMPv6ND_Redirect, ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr,
                       IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, PadN,
                       Raw, RouterAlert, fragment6, sendp)
kind, a = sys.argv[1], json.loads(sys.argv[2])
mac, ip, ll = a["mac"], a["ip"], a["ll"]
all_nodes = Ether(src=mac, dst="33:33:00:00:00:01")
def na(target, tlla):
    return (all_nodes / IPv6(src=ip, dst="ff02::1", hlim=255)
            / ICMPv6ND_NA(tgt=target, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=tlla))
big = IPv6ExtHdrDestOpt(options=[PadN(optdata=b"\0" * 200)])
frames = {
    # the victim's address, the attacker's MAC: the attack of the issue
    "na_victim": lambda: [na(a["victim_ip"], mac)],
    # its own address, another MAC in the option
    "na_other_mac": lambda: [na(ip, a["victim_mac"])],
    # its own address and MAC, then a second option naming the victim's MAC
    "na_two_options": lambda: [na(ip, mac) / ICMPv6NDOptDstLLAddr(lladdr=a["victim_mac"])],
    "ns_other_mac": lambda: [all_nodes / IPv6(src=ip, dst="ff02::1", hlim=255)
                             / ICMPv6ND_NS(tgt=a["victim_ip"])
                             / ICMPv6NDOptSrcLLAddr(lladdr=a["victim_mac"])],
    "nd_behind_ext": lambda: [all_nodes / IPv6(src=ip, dst="ff02::1", hlim=255)
                              / IPv6ExtHdrDestOpt() / ICMPv6ND_NA(tgt=ip, O=1)
                              / ICMPv6NDOptDstLLAddr(lladdr=mac)],
    # RFC 7113: the ICMPv6 header only in the second fragment
    "ra_fragmented": lambda: [all_nodes / f for f in fragment6(
        IPv6(src=ll, dst="ff02::1", hlim=255) / IPv6ExtHdrFragment(id=7113) / big
        / ICMPv6ND_RA(), 120)],
    "echo_fragmented": lambda: [all_nodes / f for f in fragment6(
        IPv6(src=ip, dst="ff02::1") / IPv6ExtHdrFragment(id=1280)
        / ICMPv6EchoRequest(data=b"x" * 300), 200)],
    "redirect": lambda: [Ether(src=mac, dst=a["victim_mac"])
                         / IPv6(src=ll, dst=a["victim_ip"], hlim=255)
                         / ICMPv6ND_Redirect(tgt=ll, dst="2001:db8:ffff::1")],
    "dhcp6_server": lambda: [all_nodes / IPv6(src=ll, dst="ff02::1")
                             / UDP(sport=5547, dport=546) / Raw(b"\x07" + b"\0" * 20)],
    "mld_query": lambda: [all_nodes / IPv6(src=ll, dst="ff02::1", hlim=1)
                          / IPv6ExtHdrHopByHop(options=[RouterAlert()]) / ICMPv6MLQuery()],
    # allowed: its own NA, and a fragmented UDP datagram
    "na_own": lambda: [na(ip, mac)],
    "udp_fragmented": lambda: [all_nodes / f for f in fragment6(
        IPv6(src=ip, dst="ff02::1") / IPv6ExtHdrFragment(id=4242)
        / UDP(sport=9, dport=9) / Raw(b"t-hv" * 100), 200)],
    # another guest's MAC as the source: the FDB theft of the issue
    "steal_mac": lambda: [Ether(src=a["victim_mac"], dst="ff:ff:ff:ff:ff:ff")
                          / IPv6(src=a["victim_ip"], dst="ff02::1") / ICMPv6EchoRequest()],
    "random_macs": lambda: [Ether(src="02:6d:77:00:%02x:%02x" % (i >> 8, i & 255),
                                  dst="ff:ff:ff:ff:ff:ff")
                            / IPv6(src=ip, dst="ff02::1") / ICMPv6EchoRequest()
                            for i in range(a.get("n", 1))],
}
sendp(frames[kind](), iface=a.get("iface", "eth0"), count=a.get("count", 1), verbose=False)
"""


def attack(ns: str, kind: str, **arg) -> None:
    script = Path("/tmp/t-hv-attack6.py")
    script.write_text(ATTACK6)
    ns_exec(ns, SCAPY_PYTHON, str(script), kind, json.dumps(arg), timeout=120)


# The first option of an NS or NA (ICMPv6 offset 24, IPv6 offset 64) is a link-layer option
# with g1's MAC.
G1_MAC_AT_OPTION = "ip6[66:4] == 0x026d7600 and ip6[70:2] == 0x0002"


def g0_attacks(kind: str, count: int = 5) -> None:
    attack(
        NS_G0, kind, mac=MAC["g0"], ip=ADDR["g0"], ll=LL["g0"],
        victim_ip=ADDR["g1"], victim_mac=MAC["g1"], count=count,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "counter", "bpf"),
    [
        # Each filter picks the attack frame out from the namespaces' own ND traffic.
        ("na_victim", "drop_nd_spoof", "icmp6 and ip6[40] == 136 and ip6[60:4] == 0x11"),
        ("na_other_mac", "drop_nd_spoof", f"icmp6 and ip6[40] == 136 and {G1_MAC_AT_OPTION}"),
        ("na_two_options", "drop_nd_spoof", "icmp6 and ip6[40] == 136 and ip6[4:2] == 40"),
        ("ns_other_mac", "drop_nd_spoof", f"icmp6 and ip6[40] == 135 and {G1_MAC_AT_OPTION}"),
        ("nd_behind_ext", "drop_nd_spoof", "ip6[6] == 60"),
        ("ra_fragmented", "drop_frag", "ip6[6] == 44 and ip6[44:4] == 7113"),
        ("echo_fragmented", "drop_frag", "ip6[6] == 44 and ip6[44:4] == 1280"),
        ("redirect", "drop_redirect", "icmp6 and ip6[40] == 137"),
        ("dhcp6_server", "drop_dhcp_guard", "udp src port 5547"),
        ("mld_query", "drop_mld_query", "ip6[6] == 0"),
    ],
)
def test_guest_nd_and_router_attacks_reach_nobody(site, tmp_path, kind, counter, bpf):
    sent = 5
    caps, before, after = observed(tmp_path, lambda: g0_attacks(kind, sent))
    for cap in caps:
        got = cap.frames(f"ether src {MAC['g0']} and ({bpf})")
        assert got == [], f"{kind} reached {cap.path.name}: {got}"
    assert after[counter] - before[counter] >= sent, (counter, before, after)


@pytest.mark.parametrize(
    ("kind", "bpf", "frames_each"),
    [
        ("na_own", "icmp6 and ip6[40] == 136", 1),
        ("udp_fragmented", "ip6[6] == 44 and ip6[44:4] == 4242", 3),
    ],
)
def test_guest_legitimate_nd_and_fragments_arrive(site, tmp_path, kind, bpf, frames_each):
    """The positive controls: the captures above could see these, and the guards let them by."""
    cap = Capture(NS_G1, "eth0", tmp_path / "g1.pcap")
    try:
        time.sleep(1.0)
        g0_attacks(kind, 3)
        time.sleep(1.0)
    finally:
        cap.stop()
    assert cap.count(f"ether src {MAC['g0']} and ({bpf})") >= 3 * frames_each


def test_router_guest_may_send_redirects_and_mld_queries(site, tmp_path):
    cap = Capture(NS_G0, "eth0", tmp_path / "g0.pcap")
    try:
        time.sleep(1.0)
        for kind in ("redirect", "mld_query"):
            attack(
                NS_G1, kind, mac=MAC["g1"], ip=ADDR["g1"], ll=LL["g1"],
                victim_ip=ADDR["g0"], victim_mac=MAC["g0"], count=2,
            )  # fmt: skip
        time.sleep(1.0)
    finally:
        cap.stop()
    assert cap.count(f"ether src {MAC['g1']} and icmp6 and ip6[40] == 137") == 2
    assert cap.count(f"ether src {MAC['g1']} and ip6[6] == 0 and ip6[48] == 130") == 2


def test_a_guest_cannot_steal_another_guests_fdb_entry(site, tmp_path):
    """Frames with g1's MAC from g0 (spoofed) and from the uplink: g1's entry stays on g1's
    port, and the router's echo to g1 still reaches g1, not g0."""
    before = counters()
    g0_attacks("steal_mac", 5)
    attack(
        NS_UP, "steal_mac", mac=MAC["up"], ip=ADDR["up"], ll="fe80::1", iface="u0",
        victim_ip=ADDR["g1"], victim_mac=MAC["g1"], count=5,
    )  # fmt: skip
    after = counters()
    assert after["drop_spoof_mac"] - before["drop_spoof_mac"] >= 5, (before, after)
    assert after["drop_uplink_spoof"] - before["drop_uplink_spoof"] >= 5, (before, after)
    assert pinned(BRIDGE, PORTS[1]) == [MAC["g1"]]
    where = [e["ifname"] for e in fdb(BRIDGE) if e["mac"] == MAC["g1"] and e.get("master")]
    assert where == [PORTS[1]], f"{MAC['g1']} is on {where}"
    cap = Capture(NS_G0, "eth0", tmp_path / "g0.pcap")
    try:
        time.sleep(1.0)
        script = Path("/tmp/t-hv-inject.py")
        script.write_text(INJECT)
        # g1 asks the uplink's host; the answer, to g1's MAC, must reach g1 (srp) and not g0.
        ns_exec(NS_G1, SCAPY_PYTHON, str(script), "echo", "1", MAC["g1"], ADDR["g1"], MAC["up"],
                ADDR["up"])  # fmt: skip
    finally:
        cap.stop()
    assert cap.count(f"ether dst {MAC['g1']}") == 0, "g1's traffic was delivered to g0"


def test_guest_ports_learn_nothing_and_the_uplink_is_bounded(site):
    """200 source MACs from g0 add nothing to the FDB; 200 from the uplink add at most
    mv6_hypervisor_uplink_max_macs (64 here), and the rest are counted."""
    before = counters()
    attack(NS_G0, "random_macs", mac=MAC["g0"], ip=ADDR["g0"], ll=LL["g0"], n=200)
    attack(NS_UP, "random_macs", mac=MAC["up"], ip=ADDR["up"], ll="fe80::1", iface="u0", n=200)
    after = counters()
    assert learned(BRIDGE, PORTS[0]) == [], learned(BRIDGE, PORTS[0])
    uplink = learned(BRIDGE, UPLINK)
    assert 0 < len(uplink) <= UPLINK_MAX_MACS, uplink
    assert after["drop_fdb_limit"] - before["drop_fdb_limit"] >= 200 - UPLINK_MAX_MACS
    assert after["drop_spoof_mac"] - before["drop_spoof_mac"] >= 200


@pytest.mark.parametrize(
    ("guest", "parallel", "needle"),
    [
        (
            {"mac": "02:6d:76:00:03:01", "address": "198.51.100.5", "port": "t-hvx0"},
            {"bridge": "t-hvbr2"},
            "mv6_plan.hosts.localhost.guests.bad",
        ),
        (
            {"mac": "03:6d:76:00:03:01", "address": "2001:db8:6:9::5", "port": "t-hvx0"},
            {"bridge": "t-hvbr2"},
            "mv6_plan.hosts.localhost.guests.bad",
        ),
        # Bad bridge and uplink names never reach the role: the planner refuses them
        # (tests/unit/test_plan_errors.py), and so does the plan file's reader.
        (
            {"mac": "02:6d:76:00:03:01", "address": "2001:db8:6:9::5", "port": "t-hvx0"},
            {"bridge": "t-hvbr2"},
            "mv6_hypervisor_nft_table and mv6_hypervisor_host_guard moved",
        ),
    ],
)
def test_bad_input_fails_before_any_change(tmp_path, guest, parallel, needle):
    playbook = tmp_path / "hv.yml"
    playbook.write_text(PLAYBOOK)
    extra = with_site(
        {
            "mv6_parallel": parallel,
            "mv6_plan": {
                "parallel_family": "ipv6",
                "hosts": {"localhost": {"guests": {"bad": {"released": False, **guest}}}},
            },
            "mv6_hypervisor_nft_table": "t_hv_bad",
            "mv6_hypervisor_nft_file": str(tmp_path / "t_hv_bad.nft"),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hvx*",
        }
    )
    if "moved" in needle:
        # an inventory of before plan v2 still sets the role's old variable: refused by name
        extra["mv6_hypervisor_host_guard"] = True
    before = native_snapshot()
    try:
        result = run_playbook(playbook, extra)
        assert result["rc"] != 0
        assert result["stats"]["localhost"]["changed"] == 0
        failed = [
            h
            for play in result["plays"]
            for task in play["tasks"]
            for h in task["hosts"].values()
            if h.get("failed")
        ]
        assert failed and needle in json.dumps(failed), failed
        assert sh("ip", "link", "show", "t-hvbr2", check=False).returncode != 0
        assert not (tmp_path / "t_hv_bad.nft").exists()
        assert native_snapshot() == before
    finally:
        sh("ip", "link", "del", "t-hvbr2", check=False)
        sh("nft", "delete", "table", "bridge", "t_hv_bad", check=False)


def test_new_tap_with_ipv6_on_sends_nothing(site, tmp_path):
    """A port that appears after the role ran (as libvirt's taps do), with IPv6 on, brought
    up on the bridge: the host's own stack must send nothing (MLD, DAD, RS) to its guest."""
    lab = NetnsLab()
    try:
        lab.add_ns("t-hv-g5")
        lab.add_veth("t-hvp5", "t-hvp5x", "t-hv-g5", "eth0", "02:6d:76:00:00:05")
        sh("ip", "-n", "t-hv-g5", "link", "set", "eth0", "up")
        sh("ip", "link", "set", "t-hvp5", "master", BRIDGE)
        assert sh("sysctl", "-n", "net.ipv6.conf.t-hvp5.disable_ipv6").stdout.strip() == "0"
        cap = Capture("t-hv-g5", "eth0", tmp_path / "g5.pcap")
        try:
            time.sleep(1.0)
            sh("ip", "link", "set", "t-hvp5", "up")
            time.sleep(4.0)
        finally:
            cap.stop()
        has_ll = json.loads(sh("ip", "-j", "-6", "addr", "show", "dev", "t-hvp5").stdout)
        # Frames of the host's own stack leave from the tap or the bridge. The uplink's peer
        # may send its own MLD reports at any time, flooded to every port as multicast from
        # the uplink is: those are not the host's (they had made this test flaky).
        host = [Path(f"/sys/class/net/{i}/address").read_text().strip() for i in ("t-hvp5", BRIDGE)]
        assert cap.count(" or ".join(f"ether src {m}" for m in host)) == 0, has_ll
        assert cap.count("ether src 02:6d:76:00:00:05") > 0, "the capture saw nothing at all"
    finally:
        lab.cleanup()


PORTS_PLAYBOOK = """\
- name: Hypervisor role, ports entry point
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Set the sysctls of the guest ports
      ansible.builtin.include_role:
        name: mv6.transition.hypervisor
        tasks_from: ports
"""


def test_ports_entry_point_fixes_a_fresh_tap(site):
    """A tap as libvirt makes it (IPv6 on, link-local address) is put right by tasks_from:
    ports, and a second call changes nothing."""
    port = PORTS[0]
    sh("sysctl", "-q", "-w", f"net.ipv6.conf.{port}.addr_gen_mode=0")
    sh("sysctl", "-q", "-w", f"net.ipv6.conf.{port}.disable_ipv6=0")
    sh("ip", "link", "set", port, "down")
    sh("ip", "link", "set", port, "up")
    for _attempt in range(30):
        if json.loads(sh("ip", "-j", "addr", "show", "dev", port).stdout)[0]["addr_info"]:
            break
        time.sleep(0.1)
    # ... and as a bridge that learns on it, without its guest's pinned entry.
    sh("bridge", "link", "set", "dev", port, "learning", "on")
    sh("bridge", "fdb", "del", MAC["g0"], "dev", port, "master")
    assert pinned(BRIDGE, port) == []
    playbook = site["workdir"] / "ports.yml"
    playbook.write_text(PORTS_PLAYBOOK)
    first = run_playbook(playbook, site["extra"])
    second = run_playbook(playbook, site["extra"])
    assert first["rc"] == 0 and second["rc"] == 0, json.dumps(first)[-3000:]
    assert changed_tasks(first) == [
        "mv6.transition.hypervisor : Set the L2-only sysctls of the guest ports",
        "mv6.transition.hypervisor : Pin the guests' MACs to their ports",
    ]
    assert changed_tasks(second) == []
    assert json.loads(sh("ip", "-j", "addr", "show", "dev", port).stdout)[0]["addr_info"] == []
    assert pinned(BRIDGE, port) == [MAC["g0"]]
    link = json.loads(sh("ip", "-j", "-d", "link", "show", "dev", port).stdout)[0]
    assert link["linkinfo"]["info_slave_data"]["learning"] is False


def live_tables() -> str:
    """Both tables of the role as loaded now, without counter values and without the source
    MACs the table itself records from the uplink (roles/hypervisor/vars/main.yml)."""
    return re.sub(
        r"(set uplink_macs \{[^}]*?)\s*elements = \{[^}]*\}",
        r"\1",
        "".join(
            sh("nft", "-s", "list", "table", family, TABLE).stdout for family in ("bridge", "inet")
        ),
    )


KEEPER = f"/usr/local/sbin/{TABLE.replace('_', '-')}-keeper"


def keeper(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return sh(KEEPER, *argv, "--table", TABLE, check=check)


def port_states(bridge: str = BRIDGE, ns: str | None = None) -> dict[str, str]:
    cmd = ["bridge", "-j", "link", "show"]
    out = sh(*(["ip", "netns", "exec", ns] if ns else []), *cmd).stdout
    return {p["ifname"]: p.get("state") for p in json.loads(out) if p.get("master") == bridge}


def test_the_kept_tables_refuse_hand_edits(site):
    """The keeper loaded the tables with the owner flag: no other process may flush a chain,
    remove an element or delete either table."""
    want = live_tables()
    assert "flags owner" in want
    for argv in (
        ("flush", "chain", "bridge", TABLE, "parallel_input"),
        ("delete", "element", "bridge", TABLE, "parallel_ports", f'{{ "{PORTS[0]}" }}'),
        ("add", "rule", "bridge", TABLE, "parallel_forward", "accept"),
        ("delete", "table", "bridge", TABLE),
        ("delete", "table", "inet", TABLE),
    ):
        done = sh("nft", *argv, check=False)
        assert done.returncode != 0 and "Operation not permitted" in done.stderr, (argv, done)
    assert live_tables() == want


def test_a_killed_keeper_disables_the_ports_until_it_is_back(site, tmp_path):
    """SIGKILL to the keeper (no systemd here: its own supervisor restarts it). Its tables
    go with it; the supervisor disables the bridge's ports first, the new keeper loads the
    tables and enables the ports it disabled. Measured: both times, against a 10 s bound."""
    want = live_tables()
    status = json.loads(keeper("status").stdout)
    start = time.monotonic()
    os.kill(status["pid"], signal.SIGKILL)
    disabled_at = back_at = None
    while time.monotonic() - start < 30:
        states = port_states()
        if disabled_at is None and states and set(states.values()) == {"disabled"}:
            disabled_at = time.monotonic() - start
        answer = keeper("status", check=False)
        if (
            answer.returncode == 0
            and json.loads(answer.stdout)["pid"] != status["pid"]
            and set(port_states().values()) == {"forwarding"}
        ):
            back_at = time.monotonic() - start
            break
        time.sleep(0.005)
    print(f"keeper killed: ports disabled after {disabled_at} s, back after {back_at} s")
    assert disabled_at is not None, "the ports were never seen disabled"
    assert back_at is not None and back_at < 10, back_at
    assert live_tables() == want
    assert good_echoes_at_g1(tmp_path) == 3  # the parallel side works again


def test_a_killed_supervisor_takes_the_keeper_down_closed(site, tmp_path):
    """SIGKILL to the keeper's supervisor: the kernel sends the keeper SIGTERM
    (PR_SET_PDEATHSIG), it puts the bridge down and ends, and its tables go with it. A port
    whose carrier comes back meanwhile stays disabled, and nothing crosses. The next run of
    the role starts both again."""
    playbook = site["workdir"] / "hypervisor.yml"
    want = live_tables()
    supervisor = int(Path(f"/run/mv6/{TABLE}.keeper.pid").read_text().split()[0])
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while keeper("status", check=False).returncode == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keeper("status", check=False).returncode != 0, "the keeper outlived its supervisor"
    time.sleep(0.5)
    assert sh("nft", "list", "table", "bridge", TABLE, check=False).returncode != 0
    sh("ip", "link", "set", PORTS[0], "down")
    sh("ip", "link", "set", PORTS[0], "up")
    time.sleep(0.5)
    assert set(port_states().values()) == {"disabled"}, port_states()
    assert good_echoes_at_g1(tmp_path) == 0
    repair = run_playbook(playbook, site["extra"])
    assert repair["rc"] == 0, json.dumps(repair)[-3000:]
    assert changed_tasks(repair) == ["mv6.transition.hypervisor : Start the keeper"]
    assert live_tables() == want
    assert set(port_states().values()) == {"forwarding"}
    assert good_echoes_at_g1(tmp_path) == 3


def test_a_stopped_keepers_table_is_replaced_by_the_role(site, tmp_path):
    """On the converged host --check changes nothing. Then the keeper stopped (its tables
    and ports are gone with it) and a table of the same name loaded by hand without the
    owner flag and edited, as ``nft -f`` or an older role loads it: --check reports it, the
    next run starts the keeper, which replaces that table in one transaction with its own,
    and the run after that changes nothing."""
    playbook = site["workdir"] / "hypervisor.yml"
    want = live_tables()
    # Check mode on the converged host with its guests' ports attached: nothing to change,
    # and the native side as it was.
    converged = run_playbook(playbook, site["extra"], check=True)
    assert converged["rc"] == 0, json.dumps(converged)[-3000:]
    assert changed_tasks(converged) == [], changed_tasks(converged)
    assert native_snapshot() == site["before"], "a check run changed the native side"
    keeper("stop")
    assert set(port_states().values()) == {"disabled"}
    assert sh("nft", "list", "table", "bridge", TABLE, check=False).returncode != 0
    unowned = tmp_path / "unowned.nft"
    unowned.write_text(
        re.sub(r"\s*flags owner;", "", Path(site["extra"]["mv6_hypervisor_nft_file"]).read_text())
    )
    sh("nft", "-f", str(unowned))
    sh("nft", "flush", "chain", "bridge", TABLE, "parallel_input")
    check = run_playbook(playbook, site["extra"], check=True)
    assert check["rc"] == 0, json.dumps(check)[-3000:]
    assert changed_tasks(check) == [
        "mv6.transition.hypervisor : Report that the tables would be reloaded (check mode)"
    ]
    assert native_snapshot() == site["before"], "a check run changed the native side"
    repair = run_playbook(playbook, site["extra"])
    assert repair["rc"] == 0, json.dumps(repair)[-3000:]
    # The record is rewritten with what it held: the keeper's tables are the role's again.
    assert changed_tasks(repair) == ["mv6.transition.hypervisor : Start the keeper"]
    assert live_tables() == want
    assert set(port_states().values()) == {"forwarding"}
    # The role's idempotence on a converged host with its guests' ports attached.
    again = run_playbook(playbook, site["extra"])
    assert again["rc"] == 0 and changed_tasks(again) == [], json.dumps(again)[-3000:]


KEPT_TABLE = "t_hv_kept"
NS_KH, NS_KG0, NS_KG1 = "t-hv-kh", "t-hv-kg0", "t-hv-kg1"


@pytest.fixture
def kept_host(site, tmp_path):
    """A host of its own (a network namespace) with the role's bridge, guest ports and
    rendered tables, held by the role's keeper: there a test may flush the whole ruleset."""
    lab = NetnsLab()
    nft_file = tmp_path / "kept.nft"
    nft_file.write_text(
        Path(site["extra"]["mv6_hypervisor_nft_file"]).read_text().replace(TABLE, KEPT_TABLE)
    )
    args = ["--table", KEPT_TABLE, "--bridge", BRIDGE]
    try:
        for ns in (NS_KH, NS_KG0, NS_KG1):
            lab.add_ns(ns)
        kh = ("ip", "-n", NS_KH, "link")
        sh(*kh, "add", BRIDGE, "type", "bridge", "stp_state", "0", "mcast_snooping", "0")
        for port, ns, key in ((PORTS[0], NS_KG0, "g0"), (PORTS[1], NS_KG1, "g1")):
            sh(*kh, "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", ns, "link", "set", "eth0", "address", MAC[key], "up")
            ns_exec(ns, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_ra=0")
            sh("ip", "-n", ns, "addr", "add", f"{ADDR[key]}/64", "dev", "eth0", "nodad")
            sh(*kh, "set", port, "master", BRIDGE, "up")
        sh(*kh, "set", BRIDGE, "up")
        ns_exec(NS_KH, KEEPER, "start", *args, "--file", str(nft_file))
        yield {"file": nft_file}
    finally:
        ns_exec(NS_KH, KEEPER, "stop", "--table", KEPT_TABLE, check=False)
        for name in ("disabled", "log", "pid"):
            Path(f"/run/mv6/{KEPT_TABLE}.keeper.{name}").unlink(missing_ok=True)
        lab.cleanup()


def kept_listing() -> str:
    return "".join(
        ns_exec(NS_KH, "nft", "-s", "list", "table", family, KEPT_TABLE).stdout
        for family in ("bridge", "inet")
    )


FIREWALL_ROLE_CONF = """flush ruleset
table inet t_site_firewall {
    chain input {
        type filter hook input priority filter; policy accept;
    }
}
"""


@pytest.mark.parametrize(
    "loader",
    [
        ("nft", "flush", "ruleset"),  # nftables.service's stop
        ("nft", "-f", "FIREWALL"),  # its start, reload and restart, with a firewall role's file
    ],
)
def test_flush_ruleset_leaves_the_kept_tables(kept_host, tmp_path, loader):
    """Wrong-family frames stay dropped and the right family still flows after the flush."""
    want = kept_listing()
    firewall = tmp_path / "nftables.conf"
    firewall.write_text(FIREWALL_ROLE_CONF)
    ns_exec(NS_KH, *[str(firewall) if a == "FIREWALL" else a for a in loader])
    assert kept_listing() == want
    script = Path("/tmp/t-hv-inject.py")
    script.write_text(INJECT)
    cap = Capture(NS_KG1, "eth0", tmp_path / "kg1.pcap")
    try:
        time.sleep(1.0)
        for kind in ("ipv4", "vlan", "good"):
            ns_exec(NS_KG0, SCAPY_PYTHON, str(script), kind, "3", MAC["g0"], ADDR["g0"], "x")
        time.sleep(1.0)
    finally:
        cap.stop()
    assert cap.count("ip") == 0 and cap.count("vlan") == 0
    assert cap.count("icmp6 and ip6[40] == 128") >= 3


DOCKER_LIKE = """table inet t_hv_docker {
    counter tracked { }
    counter untracked { }
    chain forward {
        type filter hook forward priority filter; policy accept;
        ct state untracked counter name untracked
        ct state new,established,related counter name tracked
    }
}
"""


def test_bridged_frames_are_not_tracked_where_br_netfilter_is_on(kept_host, tmp_path):
    """A Docker-like host (br_netfilter's bridge-nf-call-ip6tables on, as in every new
    namespace while the module is loaded, and a ruleset that uses conntrack): unicast echoes
    between two guests reach the host's inet forward hook through br_netfilter, untracked
    (the host guard's parallel_notrack), and leave no conntrack entry."""
    sysctl = "/proc/sys/net/bridge/bridge-nf-call-ip6tables"
    state = ns_exec(NS_KH, "cat", sysctl, check=False).stdout.strip()
    if state != "1":
        pytest.skip(f"br_netfilter is not loaded on this machine ({sysctl}: {state or 'absent'})")
    docker = tmp_path / "docker.nft"
    docker.write_text(DOCKER_LIKE)
    ns_exec(NS_KH, "nft", "-f", str(docker))
    script = Path("/tmp/t-hv-inject.py")
    script.write_text(INJECT)
    for _echo in range(3):
        ns_exec(
            NS_KG0,
            SCAPY_PYTHON,
            str(script),
            "echo",
            "1",
            MAC["g0"],
            ADDR["g0"],
            MAC["g1"],
            ADDR["g1"],
        )
    data = json.loads(
        ns_exec(NS_KH, "nft", "-j", "list", "counters", "table", "inet", "t_hv_docker").stdout
    )
    seen = {
        c["counter"]["name"]: c["counter"]["packets"] for c in data["nftables"] if "counter" in c
    }
    tracked = [
        line
        for line in ns_exec(NS_KH, "cat", "/proc/net/nf_conntrack").stdout.splitlines()
        if ADDR["g0"].replace("::", ":") in line or "2001:0db8" in line
    ]
    assert seen["untracked"] >= 6, seen  # 3 requests, 3 replies
    assert seen["tracked"] == 0, seen
    assert tracked == [], tracked


# ---------------------------------------------------------------- IPv4 parallel network

V4 = {
    "bridge": "t-hvbr4",
    "table": "t_hv_isolation4",
    "ports": ("t-hv4p0", "t-hv4p1"),
    "ns": ("t-hv-4g0", "t-hv-4g1"),
    "mac": ("02:6d:76:00:04:01", "02:6d:76:00:04:02"),
    "addr": ("198.51.100.40", "198.51.100.41"),
}

INJECT4 = r"""
import sys
from scapy.all import ARP, BOOTP, ICMP, IP, UDP, Ether, ICMPv6EchoRequest, IPv6, sendp, srp
kind, src_mac, src4, dst_mac, dst4 = sys.argv[1:6]
frames = {
    "echo": lambda: Ether(src=src_mac, dst=dst_mac) / IP(src=src4, dst=dst4) / ICMP(),
    "ipv6": lambda: Ether(src=src_mac, dst="33:33:00:00:00:01")
    / IPv6(src="fe80::6d:76ff:fe00:401", dst="ff02::1") / ICMPv6EchoRequest(),
    "dhcp_offer": lambda: Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
    / IP(src=src4, dst="255.255.255.255") / UDP(sport=67, dport=68) / BOOTP(op=2),
    "arp_spoof": lambda: Ether(src=src_mac, dst="ff:ff:ff:ff:ff:ff")
    / ARP(op=1, hwsrc=src_mac, psrc="198.51.100.99", pdst=dst4),
}
frame = frames[kind]()
if kind == "echo":
    answered, _unanswered = srp(frame, iface="eth0", timeout=2, retry=2, verbose=False)
    sys.exit(0 if len(answered) else 1)
sendp(frame, iface="eth0", count=5, verbose=False)
"""


def counters_of(table: str) -> dict[str, int]:
    data = json.loads(sh("nft", "-j", "list", "counters", "table", "bridge", table).stdout)
    return {
        i["counter"]["name"]: i["counter"]["packets"] for i in data["nftables"] if "counter" in i
    }


@pytest.fixture(scope="module")
def site_v4(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("t-hv4")
    playbook = workdir / "hypervisor.yml"
    playbook.write_text(PLAYBOOK)
    guests = {
        f"t-hv-4g{i}": {
            "released": False,
            "mac": V4["mac"][i],
            "address": V4["addr"][i],
            "prefixlen": 24,
            "port": V4["ports"][i],
            "router": False,
        }
        for i in range(2)
    }
    extra = with_site(
        {
            "mv6_native_family": "ipv6",
            "mv6_parallel": {"bridge": V4["bridge"], "uplink": None},
            "mv6_plan": {"parallel_family": "ipv4", "hosts": {"localhost": {"guests": guests}}},
            "mv6_hypervisor_nft_table": V4["table"],
            "mv6_hypervisor_nft_file": str(workdir / f"{V4['table']}.nft"),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hv4p*",
        }
    )
    lab = NetnsLab()
    state = {"workdir": workdir}
    try:
        for i in range(2):
            lab.add_ns(V4["ns"][i])
            lab.add_veth(V4["ports"][i], f"{V4['ports'][i]}x", V4["ns"][i], "eth0", V4["mac"][i])
            sh("ip", "-n", V4["ns"][i], "addr", "add", f"{V4['addr'][i]}/24", "dev", "eth0")
            sh("ip", "-n", V4["ns"][i], "link", "set", "eth0", "up")
        state["run1"] = run_playbook(playbook, extra)
        for port in V4["ports"]:
            sh("ip", "link", "set", port, "master", V4["bridge"], check=False)
            sh("ip", "link", "set", port, "up")
        sh(l2only_helper(V4["table"]), *V4["ports"])
        # The only second run of the role on a host whose parallel network has no uplink.
        state["run2"] = run_playbook(playbook, extra)
        script = workdir / "inject4.py"
        script.write_text(INJECT4)
        state["script"] = script
        yield state
    finally:
        run_playbook(playbook, {**extra, "mv6_hypervisor_state": "absent"})
        lab.cleanup()
        sh("ip", "link", "del", V4["bridge"], check=False)
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, V4["table"], check=False)
        Path(f"/etc/sysctl.d/60-mv6-{V4['bridge']}.conf").unlink(missing_ok=True)
        Path(f"/var/lib/mv6/{V4['table']}.loaded").unlink(missing_ok=True)


def inject4(state: dict, kind: str, check: bool = True):
    return ns_exec(
        V4["ns"][0], SCAPY_PYTHON, str(state["script"]), kind,
        V4["mac"][0], V4["addr"][0], V4["mac"][1], V4["addr"][1], check=check,
    )  # fmt: skip


def test_v4_converges_and_is_idempotent(site_v4):
    assert site_v4["run1"]["rc"] == 0, json.dumps(site_v4["run1"])[-3000:]
    assert site_v4["run2"]["rc"] == 0, json.dumps(site_v4["run2"])[-3000:]
    assert changed_tasks(site_v4["run2"]) == []


def test_v4_parallel_family_flows(site_v4):
    inject4(site_v4, "echo")


@pytest.mark.parametrize(
    ("kind", "counter", "bpf"),
    [
        ("ipv6", "drop_ethertype", "ip6 and ether src 02:6d:76:00:04:01"),
        ("dhcp_offer", "drop_dhcp_guard", "udp src port 67"),
        ("arp_spoof", "drop_spoof_ip", "arp and arp[14:4] == 0xc6336463"),
    ],
)
def test_v4_forbidden_frames_reach_nobody(site_v4, tmp_path, kind, counter, bpf):
    cap = Capture(V4["ns"][1], "eth0", tmp_path / "g1.pcap")
    try:
        time.sleep(1.0)
        before = counters_of(V4["table"])
        inject4(site_v4, kind)
        time.sleep(1.0)
        after = counters_of(V4["table"])
    finally:
        cap.stop()
    assert cap.count(bpf) == 0
    assert after[counter] - before[counter] >= 5, (before, after)


def test_check_mode_on_fresh_host_changes_nothing(tmp_path):
    playbook = tmp_path / "hv.yml"
    playbook.write_text(PLAYBOOK)
    guest = {"released": False, "mac": "02:6d:76:00:07:01", "address": "2001:db8:6:7::1"}
    extra = with_site(
        {
            "mv6_parallel": {"bridge": "t-hvbr7", "uplink": None},
            "mv6_plan": {
                "parallel_family": "ipv6",
                "hosts": {"localhost": {"guests": {"a": {**guest, "port": "t-hv7p0"}}}},
            },
            "mv6_hypervisor_nft_table": "t_hv_chk",
            "mv6_hypervisor_nft_file": str(tmp_path / "t_hv_chk.nft"),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hv7p*",
        }
    )
    before = native_snapshot()
    try:
        result = run_playbook(playbook, extra, check=True)
        assert result["rc"] == 0, json.dumps(result)[-3000:]
        assert result["stats"]["localhost"]["changed"] > 0
        assert sh("ip", "link", "show", "t-hvbr7", check=False).returncode != 0
        assert sh("nft", "list", "table", "bridge", "t_hv_chk", check=False).returncode != 0
        assert not (tmp_path / "t_hv_chk.nft").exists()
        assert not Path("/etc/sysctl.d/60-mv6-t-hvbr7.conf").exists()
        assert native_snapshot() == before
    finally:
        sh("ip", "link", "del", "t-hvbr7", check=False)
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, "t_hv_chk", check=False)
        Path("/etc/sysctl.d/60-mv6-t-hvbr7.conf").unlink(missing_ok=True)
        Path("/var/lib/mv6/t_hv_chk.loaded").unlink(missing_ok=True)


def test_a_native_bridge_is_refused_and_never_deleted(tmp_path):
    """mv6_parallel.bridge naming a bridge of the native side (an address of the host, a NIC
    in it) that MV6 did not make: before, preflight took it, the host guard cut the host off
    it and teardown deleted it. Now the role refuses it by name before any change, and
    removal leaves it (MV6 has no record of making it)."""
    playbook = tmp_path / "hv.yml"
    playbook.write_text(PLAYBOOK)
    bridge, port, table = "t-hvnat0", "t-hvnatp", "t_hv_nat"
    guest = {"released": False, "mac": "02:6d:76:00:0a:01", "address": "2001:db8:6:a::10"}
    extra = with_site(
        {
            "mv6_native_family": "ipv4",
            "mv6_parallel": {"bridge": bridge, "uplink": None},
            "mv6_plan": {
                "parallel_family": "ipv6",
                "hosts": {"localhost": {"guests": {"t-hv-ng": {**guest, "port": "t-hvap0"}}}},
            },
            "mv6_hypervisor_nft_table": table,
            "mv6_hypervisor_nft_file": str(tmp_path / f"{table}.nft"),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hvap*",
        }
    )
    record = Path(f"/var/lib/mv6/bridge-{bridge}.mv6")

    def bridge_state() -> str:
        return (
            sh("ip", "-d", "addr", "show", "dev", bridge).stdout
            + sh("ip", "-o", "link", "show", "master", bridge).stdout
        )

    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", "t-hvnatq")
        sh("ip", "link", "set", port, "master", bridge)
        sh("ip", "addr", "add", "198.51.100.7/24", "dev", bridge)
        before = bridge_state()
        result = run_playbook(playbook, extra)
        assert result["rc"] != 0
        flat = json.dumps(result)
        assert (
            f"mv6_parallel.bridge: {bridge} exists and was not made by MV6" in flat
            and "198.51.100.7" in flat
            and port in flat
        ), flat[-3000:]
        assert changed_tasks(result) == []
        assert bridge_state() == before
        assert not record.exists()
        assert sh("nft", "list", "table", "bridge", table, check=False).returncode != 0
        absent = run_playbook(playbook, {**extra, "mv6_hypervisor_state": "absent"})
        assert absent["rc"] == 0, json.dumps(absent)[-3000:]
        assert "MV6 has no record of making it" in json.dumps(absent)
        assert bridge_state() == before
    finally:
        sh("ip", "link", "del", port, check=False)
        sh("ip", "link", "del", bridge, check=False)
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, table, check=False)
        Path(f"/etc/sysctl.d/60-mv6-{bridge}.conf").unlink(missing_ok=True)
        Path(f"/var/lib/mv6/{table}.loaded").unlink(missing_ok=True)
        record.unlink(missing_ok=True)


LOCK_TASK = "mv6.transition.hypervisor : Take this network's lock on the host"
NET_BRIDGE, NET_UPLINK, NET_TABLE = "t-hvbr9", "t-hvu9", "t_hv_rm"
NET_UPLINK_RECORD = Path(f"/var/lib/mv6/uplink-{NET_UPLINK}.sysctl")


NET_FILES = [
    NET_UPLINK_RECORD,
    Path(f"/var/lib/mv6/bridge-{NET_BRIDGE}.mv6"),
    Path(f"/run/mv6/{NET_TABLE}.keeper.pid"),
    Path(f"/usr/local/sbin/{NET_TABLE.replace('_', '-')}-keeper"),
    Path(f"/usr/local/sbin/{NET_TABLE.replace('_', '-')}-l2only"),
    Path(f"/etc/libvirt/hooks/qemu.d/50-{NET_TABLE.replace('_', '-')}-l2only"),
]


def net_left() -> bool:
    """Whether anything of the net fixture's network is still on the host: its bridge, its
    tables, the role's records, keeper and hook for it."""
    return (
        sh("ip", "link", "show", NET_BRIDGE, check=False).returncode == 0
        or any(path.exists() for path in NET_FILES)
        or any(
            sh("nft", "list", "table", family, NET_TABLE, check=False).returncode == 0
            for family in ("bridge", "inet")
        )
    )


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    """One more network of the host's parallel side (bridge t-hvbr9 with uplink t-hvu9, table
    t_hv_rm) for the host lock and removal tests, in file order: two concurrent runs make it,
    a run held off by another holder of its lock changes nothing on it, and the removal test
    takes it away after its uplink vanished. One network for the three, since each role run
    costs about half a minute here; removed at the end whatever happened."""
    workdir = tmp_path_factory.mktemp("t-hv-net")
    guest = {"released": False, "mac": "02:6d:76:00:09:01", "address": "2001:db8:6:9::10"}
    extra = with_site(
        {
            "mv6_native_family": "ipv4",
            "mv6_parallel": {"bridge": NET_BRIDGE, "uplink": NET_UPLINK},
            "mv6_plan": {
                "parallel_family": "ipv6",
                "hosts": {"localhost": {"guests": {"t-hv-9g": {**guest, "port": "t-hv9p0"}}}},
            },
            "mv6_hypervisor_nft_table": NET_TABLE,
            "mv6_hypervisor_nft_file": str(workdir / f"{NET_TABLE}.nft"),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hv9p*",
        }
    )
    playbook = workdir / "hv.yml"
    playbook.write_text(PLAYBOOK)
    lab = NetnsLab()
    absent = {**extra, "mv6_hypervisor_state": "absent"}
    if net_left():  # left by an earlier session that was killed
        run_playbook(playbook, absent)
    state = {"extra": extra, "playbook": playbook, "converged": False}
    try:
        lab.add_ns("t-hv-rm")
        lab.add_veth(NET_UPLINK, "t-hvu9x", "t-hv-rm", "u0", "02:6d:76:00:09:0f")
        yield state
    finally:
        try:
            if net_left():
                run_playbook(playbook, absent)
        finally:
            lab.cleanup()
        # What a failed removal may have left: the keeper first (its tables refuse deletion
        # while it holds them), then the rest by hand.
        keeper_cmd = NET_FILES[3]
        if keeper_cmd.exists():
            sh(str(keeper_cmd), "stop", "--table", NET_TABLE, check=False)
        sh("ip", "link", "del", NET_BRIDGE, check=False)
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, NET_TABLE, check=False)
        for path in (
            f"/etc/sysctl.d/60-mv6-{NET_BRIDGE}.conf",
            f"/var/lib/mv6/{NET_TABLE}.loaded",
            f"/run/mv6/locks/net-{NET_BRIDGE}.lock",
            f"/run/mv6/locks/net-{NET_BRIDGE}.guard",
            *NET_FILES,
        ):
            Path(path).unlink(missing_ok=True)


def net_state() -> str:
    """The network as the role leaves it: the bridge, its ports and its tables (without
    counter values, which the uplink's traffic moves)."""
    return (
        sh("ip", "-o", "link", "show", "dev", NET_BRIDGE, check=False).stdout
        + sh("ip", "-o", "link", "show", "master", NET_BRIDGE, check=False).stdout
        + "".join(
            sh("nft", "-s", "list", "table", family, NET_TABLE, check=False).stdout
            for family in ("bridge", "inet")
        )
    )


def test_two_concurrent_runs_take_turns_and_converge_once(net, tmp_path):
    """Two runs of the role on one network at once: before, both changed the bridge and the
    tables at the same time. Now the second waits for the first's lock; both succeed and
    the host is as after one run (a third run changes nothing)."""
    from concurrent.futures import ThreadPoolExecutor

    books = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        books.append(tmp_path / name / "hv.yml")
        books[-1].write_text(PLAYBOOK)
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda book: run_playbook(book, net["extra"]), books))
    for run in runs:
        assert run["rc"] == 0, json.dumps(run)[-3000:]
    waited = [r.get("waited", 0) for run in runs for r in task_results(run, LOCK_TASK)]
    assert len(waited) == 2 and max(waited) >= 1, waited
    third = run_playbook(books[0], net["extra"])
    assert third["rc"] == 0 and changed_tasks(third) == [], changed_tasks(third)
    assert not Path(f"/run/mv6/locks/net-{NET_BRIDGE}.lock").exists()
    net["converged"] = True


HOLD = """\
- name: Hold a network's lock
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Take it
      mv6.transition.host_lock:
        name: "{{ lock }}"
        holder: t-hv lock holder
    - name: Say it is held
      ansible.builtin.copy:
        content: "held\\n"
        dest: "{{ flag }}"
        mode: "0644"
    - name: Keep it
      ansible.builtin.pause:
        seconds: 300
"""


def test_a_held_lock_fails_the_run_cleanly_and_a_dead_holder_frees_it(net, tmp_path):
    from conftest import REPO, VENV_BIN

    hold = tmp_path / "hold.yml"
    hold.write_text(HOLD)
    flag = tmp_path / "held"
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        PATH=f"{VENV_BIN}:{os.environ['PATH']}",
    )
    holder = subprocess.Popen(
        [
            str(VENV_BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            str(hold),
            "-e",
            f"ansible_python_interpreter={VENV_BIN / 'python'}",
            "-e",
            f"lock=net-{NET_BRIDGE}",
            "-e",
            f"flag={flag}",
        ],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert holder.poll() is None and time.monotonic() < deadline, "the holder did not start"
            time.sleep(0.5)
        before, network = native_snapshot(), net_state()
        refused = run_playbook(net["playbook"], {**net["extra"], "mv6_hypervisor_lock_timeout": 3})
        assert refused["rc"] != 0
        flat = " ".join(json.dumps(refused).split())
        held = f"lock net-{NET_BRIDGE} on this host is held by another mv6 run"
        assert f"{held} (holder t-hv lock holder" in flat
        assert "waited 3 s (timeout). Nothing was changed." in flat
        assert changed_tasks(refused) == []
        assert net_state() == network
        assert native_snapshot() == before
        # The holder dies without releasing (a controller killed): its lock goes with it.
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        taken = run_playbook(net["playbook"], {**net["extra"], "mv6_hypervisor_lock_timeout": 3})
        assert taken["rc"] == 0, json.dumps(taken)[-3000:]
        (lock,) = task_results(taken, LOCK_TASK)
        assert lock["previous"]["holder"] == "t-hv lock holder"
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
            holder.wait(timeout=30)


def test_removal_tolerates_vanished_objects(net):
    """state=absent after the uplink (and then everything else) is already gone succeeds,
    and a second removal changes nothing. Before the fix, restoring the uplink's recorded
    sysctls ran `sysctl -w` on a missing interface and failed the teardown."""
    if not net["converged"]:  # run alone, or the concurrent runs failed: converge it here
        up = run_playbook(net["playbook"], net["extra"])
        assert up["rc"] == 0, json.dumps(up)[-3000:]
    assert NET_UPLINK_RECORD.is_file()
    # The uplink disappears before the teardown (a NIC removed, a lab taken down).
    sh("ip", "link", "del", NET_UPLINK)
    absent = {**net["extra"], "mv6_hypervisor_state": "absent"}
    first = run_playbook(net["playbook"], absent)
    assert first["rc"] == 0, json.dumps(first)[-3000:]
    assert sh("ip", "link", "show", NET_BRIDGE, check=False).returncode != 0
    for family in ("bridge", "inet"):
        assert sh("nft", "list", "table", family, NET_TABLE, check=False).returncode != 0
    assert not NET_UPLINK_RECORD.exists()
    # Everything is gone now: removing again is a no-op.
    second = run_playbook(net["playbook"], absent)
    assert second["rc"] == 0, json.dumps(second)[-3000:]
    assert changed_tasks(second) == []
    assert not net_left()
