"""Verify step of the network scenarios (v6_parallel, v4_parallel): isolation on real guests.

Each of the two scenarios lists this file in ``verifier.additional_files_or_dirs``.
Everything is observed with real tools:
tcpdump at every observation point, the nftables counters of ``bridge mv6_isolation``,
raw AF_PACKET sockets in the guests (through the guest agent) and in the namespaces, and
scapy to dissect the injected frames.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import subprocess
import time

import pytest
from mv6mol import frames as F
from mv6mol import nft
from mv6mol.agent import Guest
from mv6mol.capture import Capture, capturing, sources
from mv6mol.scenario import NETNS_PYTHON, Scenario, load, rawnet
from mv6mol.site import bare, ephemeral_dir, native_snapshot, run

# "at least 1,000 of each" kind of bad frame, from each side.
COUNT = 1000
BAD_KINDS_GUEST = [
    F.WRONG_FAMILY,
    F.ARP_HOST,
    F.DOT1Q,
    F.DOT1AD,
    F.UNKNOWN_ETHERTYPE,
    F.ROGUE_RA,
    F.SPOOF_MAC,
    F.SPOOF_IP,
]
BAD_KINDS_UPLINK = [
    F.WRONG_FAMILY,
    F.ARP_HOST,
    F.DOT1Q,
    F.DOT1AD,
    F.UNKNOWN_ETHERTYPE,
    F.STEAL_MAC,
]
# A guest with root attacks its neighbour (the hostile-guest issue); the IPv6-only ones too
# where the segment is IPv6.
GUEST_ATTACKS = [F.STEAL_MAC, F.REDIRECT, F.DHCP_SERVER]
GUEST_ATTACKS_V6 = [F.NA_SPOOF, F.RA_FRAGMENTED]
# Which counter each attack must grow, and by how many frames per frame sent.
ATTACK_COUNTERS = {
    F.STEAL_MAC: "drop_spoof_mac",
    F.NA_SPOOF: "drop_nd_spoof",
    F.RA_FRAGMENTED: "drop_frag",
    F.REDIRECT: "drop_redirect",
    F.DHCP_SERVER: "drop_dhcp_guard",
}


def guest_attacks(family: str) -> list[int]:
    return GUEST_ATTACKS + (GUEST_ATTACKS_V6 if family == "ipv6" else [])


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scn() -> Scenario:
    return load()


@pytest.fixture(scope="module")
def guests(scn: Scenario) -> dict[str, Guest]:
    assert len(scn.guests) >= 2, "the network scenarios need two guests"
    out = {}
    for g in scn.guests:
        agent = Guest(g.name)
        agent.wait_agent(timeout=300)
        out[g.name] = agent
    yield out
    for agent in out.values():
        agent.close()


def _spec(scn: Scenario, sender: dict, dst_ip: str) -> dict:
    native_host = bare(scn.native["host_addr"])
    return {
        "family": scn.family,
        "src_mac": sender["mac"],
        "src_ip": sender["ip"],
        "src_ll": sender.get("ll"),
        "dst_ip": dst_ip,
        "host_mac": scn.bridge_mac(),
        "host_native": native_host,
        "wrong_dst": bare(scn.native["peer_addr"]),
        "prefix": scn.subnet if scn.family == "ipv6" else "2001:db8:ffff::/64",
        "spare_ip": scn.spare_address(),
        "rogue_ra": sender.get("rogue_ra", True),
        "spoof": sender.get("spoof", True),
    }


def _control_dst(scn: Scenario) -> str:
    """Where control frames go: all nodes (v6) or the subnet broadcast (v4)."""
    if scn.family == "ipv6":
        return "ff02::1"
    return str(ipaddress.ip_network(scn.subnet).broadcast_address)


def _observers(scn: Scenario, tag: str, taps: list[str]) -> dict[str, Capture]:
    d = ephemeral_dir() / "captures"
    d.mkdir(exist_ok=True)
    caps = {
        "parallel peer": Capture(
            "parallel peer",
            scn.peer["peer_if"],
            d / f"{tag}-peer.pcap",
            netns=scn.peer["ns"],
            direction="in",
        ),
        "native peer": Capture(
            "native peer",
            scn.native["peer_if"],
            d / f"{tag}-native.pcap",
            netns=scn.native["ns"],
            direction="in",
        ),
        # Without promiscuous mode the bridge device shows what the bridge passes up to the
        # host's own stack, and everything the host sends on the bridge.
        "host stack": Capture("host stack", scn.bridge, d / f"{tag}-host.pcap"),
    }
    for tap in taps:
        name = f"guest behind {tap}"
        caps[name] = Capture(name, tap, d / f"{tag}-{tap}.pcap", direction="out")
    return caps


def _inject(
    scn: Scenario, tag: str, send, spec: dict, taps: list[str], sniff_guest=None, sniff_mac=None
) -> dict:
    run_id = F.new_run_id()
    batch = F.batch(spec, run_id, COUNT)
    wire = [[kind, copies, frame.hex()] for kind, copies, frame in batch]
    caps = _observers(scn, tag, taps)
    before = nft.all_drop_counters()
    sniff_pid = None
    with capturing(list(caps.values()), settle=2.0):
        if sniff_guest is not None:
            ready = f"/run/mv6mol-{run_id.hex()}"
            sniff_pid = sniff_guest.rawnet_spawn(
                "sniff", {"mac": sniff_mac, "run": run_id.hex(), "seconds": 150, "ready": ready}
            )
            end = time.monotonic() + 60
            while not sniff_guest.exists(ready):
                assert time.monotonic() < end, "the in-guest sniffer did not start"
                time.sleep(0.5)
        sent = send({"mac": spec["src_mac"], "frames": wire, "pace": 100})
    after = nft.all_drop_counters()
    sniffed = sniff_guest.rawnet_collect(sniff_pid, timeout=200) if sniff_pid else None
    result = {
        "run": run_id,
        "batch": batch,
        "sent": {int(k): v for k, v in sent["sent"].items()},
        "send_errors": sent["errors"],
        "seen": {name: F.count_marked(c.frames(), run_id) for name, c in caps.items()},
        "sources": {name: sources(c.frames()) for name, c in caps.items()},
        "kernel_drops": {name: c.kernel_drops for name, c in caps.items()},
        "counters": nft.delta(before, after),
    }
    if sniffed is not None:
        result["seen"]["inside the other guest"] = {
            tuple(int(x) for x in k.split(".")): v for k, v in sniffed["counts"].items()
        }
    (ephemeral_dir() / f"injection-{tag}.json").write_text(
        json.dumps(
            {k: v for k, v in result.items() if k not in ("run", "batch", "sources", "seen")}
            | {
                "seen": {
                    n: {f"{a}.{b}": c for (a, b), c in s.items()} for n, s in result["seen"].items()
                }
            },
            indent=1,
            sort_keys=True,
            default=str,
        )
    )
    return result


@pytest.fixture(scope="module")
def from_guest(scn: Scenario, guests: dict[str, Guest]) -> dict:
    """Guest A injects every kind of bad frame; B, the peers and the host listen."""
    a, b = scn.guests[0], scn.guests[1]
    sender = {"mac": a.mac, "ip": a.address, "ll": a.link_local}
    spec = _spec(scn, sender, _control_dst(scn)) | {"victim_mac": b.mac, "victim_ip": b.address}
    agent_a = guests[a.name]
    return _inject(
        scn,
        "from-guest",
        lambda arg: agent_a.rawnet("send", arg, timeout=600),
        spec,
        taps=[b.port],
        sniff_guest=guests[b.name],
        sniff_mac=b.mac,
    )


@pytest.fixture(scope="module")
def from_uplink(scn: Scenario, guests: dict[str, Guest]) -> dict:
    """The parallel peer injects from the uplink side; the guests and the host listen."""
    sender = {
        "mac": scn.peer_mac(),
        "ip": bare(scn.peer["peer_addr"]),
        # The uplink is where the site's router lives: its RAs are allowed, and it is not
        # bound to one MAC/IP (it forwards for the whole site).
        "rogue_ra": False,
        "spoof": False,
    }
    # ... but it may not use a guest's MAC: that would take the guest's FDB entry.
    victim = scn.guests[1]
    spec = _spec(scn, sender, _control_dst(scn)) | {
        "victim_mac": victim.mac,
        "victim_ip": victim.address,
        "guest_attacks": False,
    }
    return _inject(
        scn,
        "from-uplink",
        lambda arg: scn.netns_rawnet(scn.peer["ns"], "send", arg, timeout=300),
        spec,
        taps=[g.port for g in scn.guests],
    )


# --- helpers for assertions --------------------------------------------------------------------


def _assert_controls(result: dict, observers: list[str]) -> None:
    """The observers heard the valid frames sent before and after the bad ones."""
    for name in observers:
        seen = result["seen"][name]
        for phase in (F.PRE, F.POST):
            assert seen.get((F.CONTROL, phase), 0) > 0, (
                f"{name} saw none of the valid control frames (phase {phase}): the observation "
                f"is void. seen={seen}"
            )


def _assert_none_got(result: dict, kinds: list[int]) -> None:
    for name, seen in result["seen"].items():
        got = {F.KIND_NAMES[k]: seen.get((k, F.BAD), 0) for k in kinds}
        leaked = {k: v for k, v in got.items() if v}
        assert not leaked, f"frames reached {name}: {leaked}"


def _assert_sent(result: dict, kinds: list[int]) -> None:
    for k in kinds:
        assert result["sent"].get(k, 0) >= COUNT, (
            f"sender injected only {result['sent'].get(k, 0)} {F.KIND_NAMES[k]} frames"
        )


def _assert_no_capture_loss(result: dict) -> None:
    lossy = {n: d for n, d in result["kernel_drops"].items() if d}
    assert not lossy, f"tcpdump lost frames, so zero counts would prove nothing: {lossy}"


# --- tests ------------------------------------------------------------------------------------


def test_check_mode_run_changed_nothing() -> None:
    """converge.yml in check mode (molecule's check step) reported changed=0 everywhere."""
    lines = (ephemeral_dir() / "recap.jsonl").read_text().splitlines()
    runs = [json.loads(x) for x in lines]
    checks = [r for r in runs if r["playbook"] == "converge.yml" and r["check"]]
    assert checks, f"no check-mode run of converge.yml was recorded: {runs}"
    last = checks[-1]
    assert last["hosts"], "the check-mode run touched no host"
    for host, stats in last["hosts"].items():
        assert stats["failures"] == 0 and stats["unreachable"] == 0, (host, stats)
        assert stats["changed"] == 0, f"check mode would change {stats['changed']} on {host}"
    converges = [r for r in runs if r["playbook"] == "converge.yml" and not r["check"]]
    assert len(converges) >= 2, "converge and idempotence runs were not both recorded"
    for host, stats in converges[-1]["hosts"].items():
        assert stats["changed"] == 0, f"second converge changed {stats['changed']} on {host}"


def test_host_has_no_address_on_the_parallel_network(host, scn: Scenario) -> None:
    """testinfra's host (the hypervisor, from the scenario inventory) reads its own links."""
    ports = scn.ports()
    uplink = scn.peer["host_if"]
    assert uplink in ports, f"the uplink {uplink} is not a port of {scn.bridge}: {ports}"
    assert {g.port for g in scn.guests} <= set(ports), ports
    bridge = host.interface(scn.bridge)
    assert bridge.exists
    assert bridge.addresses == [], f"the host has addresses on {scn.bridge}: {bridge.addresses}"
    for dev in [scn.bridge, *ports]:
        addrs = host.check_output(f"ip -o addr show dev {dev}")
        assert addrs == "", f"the host has addresses on {dev}: {addrs}"
        routes = host.check_output(
            f"ip -4 route show table all dev {dev}; ip -6 route show table all dev {dev}"
        )
        assert routes == "", f"the host has routes on {dev}: {routes}"


def test_guests_have_only_their_family(scn: Scenario, guests: dict[str, Guest]) -> None:
    for g in scn.guests:
        agent = guests[g.name]
        v4 = agent.sh("ip -4 -o addr show").stdout
        v6 = agent.sh("ip -6 -o addr show").stdout
        if scn.family == "ipv6":
            v4_addrs = [line.split()[3] for line in v4.splitlines()]
            assert v4_addrs == ["127.0.0.1/8"], f"{g.name}: IPv4 beyond loopback: {v4}"
            assert f"{g.address}/{g.prefixlen}" in v6, f"{g.name}: planned address missing: {v6}"
        else:
            assert v6.strip() == "", f"{g.name}: has IPv6 addresses: {v6}"
            flag = agent.sh("cat /proc/sys/net/ipv6/conf/all/disable_ipv6").stdout.strip()
            assert flag in ("1", ""), f"{g.name}: IPv6 is not disabled ({flag!r})"
            assert f"{g.address}/{g.prefixlen}" in v4, f"{g.name}: planned address missing: {v4}"


def test_guests_reach_the_parallel_peer(scn: Scenario, guests: dict[str, Guest]) -> None:
    peer = bare(scn.peer["peer_addr"])
    for g in scn.guests:
        res = guests[g.name].rawnet(
            "connect", {"addr": peer, "port": scn.peer["service_port"], "timeout": 10}
        )
        assert res["ok"], f"{g.name} cannot reach the parallel peer's service: {res}"
        words = res["data"].split()
        assert words[:2] == ["mv6-mol", "parallel-peer"], res
        seen_as = ipaddress.ip_address(words[2])
        assert seen_as == ipaddress.ip_address(g.address), f"{g.name} came from {seen_as}"
        pong = guests[g.name].rawnet("ping", {"addr": peer, "count": 3, "timeout": 3})
        assert pong["replies"] >= 2, f"{g.name} -> parallel peer ping: {pong}"


def test_parallel_peer_reaches_the_guests(scn: Scenario, guests: dict[str, Guest]) -> None:
    for g in scn.guests:
        res = scn.netns_rawnet(scn.peer["ns"], "ping", {"addr": g.address, "count": 3})
        assert res["replies"] >= 2, f"parallel peer -> {g.name} ping: {res}"


def test_guests_reach_each_other(scn: Scenario, guests: dict[str, Guest]) -> None:
    for src in scn.guests:
        for dst in scn.guests:
            if src is dst:
                continue
            res = guests[src.name].rawnet("ping", {"addr": dst.address, "count": 3})
            assert res["replies"] >= 2, f"{src.name} -> {dst.name} ping: {res}"


def test_guests_cannot_reach_the_native_peer(scn: Scenario, guests: dict[str, Guest]) -> None:
    peer = bare(scn.native["peer_addr"])
    port = scn.native["service_port"]
    # Control: the native network itself works, from the host.
    probe = scn_native_probe(scn)
    assert probe.startswith("mv6-mol native-peer"), (
        f"the host cannot reach its native peer: {probe}"
    )
    for g in scn.guests:
        res = guests[g.name].rawnet("connect", {"addr": peer, "port": port, "timeout": 5})
        assert not res["ok"], f"{g.name} reached the native peer's service: {res}"
        pong = guests[g.name].rawnet("ping", {"addr": peer, "count": 2, "timeout": 2})
        assert pong["replies"] == 0, f"{g.name} -> native peer ping answered: {pong}"


def scn_native_probe(scn: Scenario) -> str:
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
        "print(s.recv(100).decode().strip())\n"
    )
    return subprocess.run(
        [NETNS_PYTHON, "-c", code, bare(scn.native["peer_addr"]), str(scn.native["service_port"])],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    ).stdout.strip()


def test_host_cannot_reach_the_guests(scn: Scenario, guests: dict[str, Guest]) -> None:
    taps = [g.port for g in scn.guests]
    caps = _observers(scn, "host-to-guest", taps)
    fam = "-6" if scn.family == "ipv6" else "-4"
    with capturing(list(caps.values())):
        for g in scn.guests:
            route = run("ip", fam, "route", "get", g.address, check=False)
            assert f"dev {scn.bridge} " not in route, f"the host routes to {g.name}: {route}"
            neigh = run("ip", fam, "neigh", "show", "dev", scn.bridge).strip()
            assert neigh == "", f"the host has neighbours on {scn.bridge}: {neigh}"
            if scn.family == "ipv6":
                # Bound to the bridge (SO_BINDTODEVICE): nothing can leave by another link.
                # (Not for IPv4: bound to a device, the kernel assumes the destination on-link
                # and ARPs with a source borrowed from another link, which the output chain
                # drops but which would put that foreign address in a frame.)
                # rawnet's ICMP echo from the host itself (no ping binary on the machine).
                ping = host_rawnet(
                    "ping", {"addr": g.address, "count": 2, "timeout": 1, "dev": scn.bridge}
                )
                assert ping["replies"] == 0, f"the host reached {g.name}: {ping}"
    host_macs = scn.host_macs()
    for name, cap in caps.items():
        if name in ("host stack", "native peer"):
            # The host stack shows what the host tried to send; the native peer is on the
            # native network, where the host talks as it always did.
            continue
        from_host = sources(cap.frames()) & host_macs
        assert not from_host, f"{name} received frames sent by the host ({from_host})"
    # Nor did any guest ever learn a host MAC (ARP/ND answered by the host).
    for g in scn.guests:
        neigh = guests[g.name].sh("ip neigh show").stdout.lower()
        learned = {m for m in host_macs if m in neigh}
        assert not learned, f"{g.name} learned host MACs {learned}: {neigh}"


def host_rawnet(command: str, arg: dict, timeout: float = 60) -> dict:
    """rawnet on the host itself (outside any namespace)."""
    return rawnet(command, arg, timeout=timeout)


def test_injected_frames_are_well_formed(scn: Scenario) -> None:
    """scapy dissects every kind of test frame as what it claims to be."""
    a = scn.guests[0]
    spec = _spec(scn, {"mac": a.mac, "ip": a.address, "ll": a.link_local}, _control_dst(scn))
    batch = F.batch(spec, F.new_run_id(), 2)
    code = (
        "import json,sys\n"
        "from scapy.all import Ether\n"
        "print(json.dumps([Ether(bytes.fromhex(h)).summary() for h in json.load(sys.stdin)]))\n"
    )
    out = subprocess.run(
        [NETNS_PYTHON, "-c", code],
        input=json.dumps([frame.hex() for _kind, _copies, frame in batch]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    summaries = dict(
        zip(
            [kind for kind, _copies, _frame in batch],
            json.loads(out.splitlines()[-1]),
            strict=False,
        )
    )
    want = {
        F.DOT1Q: "Dot1Q",
        F.DOT1AD: "Dot1AD",
        F.UNKNOWN_ETHERTYPE: "0x88b5",
        F.ROGUE_RA: "ICMPv6ND_RA",
        F.ARP_HOST: "ARP" if scn.family == "ipv6" else "ICMPv6ND_NS",
        F.WRONG_FAMILY: "IP /" if scn.family == "ipv6" else "IPv6",
    }
    for kind, text in want.items():
        assert text in summaries[kind], f"{F.KIND_NAMES[kind]}: scapy reads {summaries[kind]}"


def test_bad_frames_from_a_guest_reach_nobody(from_guest: dict) -> None:
    _assert_sent(from_guest, BAD_KINDS_GUEST)
    _assert_no_capture_loss(from_guest)
    _assert_controls(
        from_guest, [n for n in from_guest["seen"] if n not in ("host stack", "native peer")]
    )
    kinds = [F.WRONG_FAMILY, F.ARP_HOST, F.DOT1Q, F.DOT1AD, F.UNKNOWN_ETHERTYPE]
    _assert_none_got(from_guest, kinds)


def test_rogue_router_advertisement_from_a_guest_is_seen_by_nobody(from_guest: dict) -> None:
    _assert_controls(
        from_guest, [n for n in from_guest["seen"] if n.startswith(("guest", "inside"))]
    )
    _assert_none_got(from_guest, [F.ROGUE_RA])


def test_spoofed_source_from_a_guest_is_dropped(from_guest: dict) -> None:
    _assert_none_got(from_guest, [F.SPOOF_MAC, F.SPOOF_IP])


def test_guest_attacks_on_its_neighbour_reach_nobody(scn: Scenario, from_guest: dict) -> None:
    """NA for the victim's address, RFC 7113's fragmented RA, redirects, DHCP server messages
    from the wrong port, the victim's MAC as the source: sent as root from inside guest A,
    none at B (its tap, and B's own sniffer), the parallel peer or the host."""
    kinds = guest_attacks(scn.family)
    _assert_sent(from_guest, kinds)
    _assert_no_capture_loss(from_guest)
    _assert_controls(
        from_guest, [n for n in from_guest["seen"] if n not in ("host stack", "native peer")]
    )
    _assert_none_got(from_guest, kinds)


def test_each_attack_has_its_counter(scn: Scenario, from_guest: dict, from_uplink: dict) -> None:
    def grew(result: dict, name: str) -> int:
        return result["counters"].get(f"bridge:counter {name}", 0)

    for kind in guest_attacks(scn.family):
        name = ATTACK_COUNTERS[kind]
        sent = from_guest["sent"].get(kind, 0)
        assert grew(from_guest, name) >= sent, (
            f"{sent} {F.KIND_NAMES[kind]} frames sent, {name} grew by "
            f"{grew(from_guest, name)}: {from_guest['counters']}"
        )
    stolen = from_uplink["sent"].get(F.STEAL_MAC, 0)
    assert stolen >= COUNT
    assert grew(from_uplink, "drop_uplink_spoof") >= stolen, from_uplink["counters"]


def test_no_guest_or_uplink_frame_moved_a_guests_fdb_entry(
    scn: Scenario, guests: dict[str, Guest], from_guest: dict, from_uplink: dict, tmp_path
) -> None:
    """After both sides sent frames with B's MAC: B's MAC is pinned to B's port alone, A's
    port learned nothing, and the parallel peer's echo requests to B reach B, not A."""
    a, b = scn.guests[0], scn.guests[1]
    fdb = json.loads(run("bridge", "-j", "fdb", "show", "br", scn.bridge))
    on = sorted(e["ifname"] for e in fdb if e.get("mac") == b.mac.lower() and e.get("master"))
    assert on == [b.port], f"{b.mac} is in the FDB on {on}"
    learned_on_a = [e["mac"] for e in fdb if e.get("ifname") == a.port and not e.get("state")]
    assert learned_on_a == [], f"{a.port} learned {learned_on_a}"
    cap = Capture("attacker's tap", a.port, tmp_path / "a.pcap", direction="out")
    with capturing([cap], settle=1.0):
        res = scn.netns_rawnet(scn.peer["ns"], "ping", {"addr": b.address, "count": 5})
    assert res["replies"] >= 4, f"parallel peer -> {b.name} ping: {res}"
    to_b = [f for f in cap.frames() if f[:6] == F.mac_bytes(b.mac)]
    assert to_b == [], f"{len(to_b)} frames for {b.name} were delivered to {a.name}'s tap"


def test_drop_counters_account_for_the_guest_frames(from_guest: dict) -> None:
    bad = sum(from_guest["sent"].get(k, 0) for k in BAD_KINDS_GUEST)
    dropped = sum(v for v in from_guest["counters"].values() if v > 0)
    assert dropped >= bad, (
        f"{bad} bad frames injected, drop counters grew by {dropped}: {from_guest['counters']}"
    )


def test_host_sends_nothing_on_the_parallel_network(
    scn: Scenario, from_guest: dict, from_uplink: dict
) -> None:
    host_macs = scn.host_macs()
    for result in (from_guest, from_uplink):
        for name, macs in result["sources"].items():
            if name == "native peer":
                continue  # the native network, where the host talks as it always did
            assert not (macs & host_macs), f"{name} saw frames from the host: {macs & host_macs}"


def test_bad_frames_from_the_uplink_reach_nobody(from_uplink: dict) -> None:
    _assert_sent(from_uplink, BAD_KINDS_UPLINK)
    _assert_no_capture_loss(from_uplink)
    _assert_controls(from_uplink, [n for n in from_uplink["seen"] if n.startswith("guest")])
    _assert_none_got(from_uplink, BAD_KINDS_UPLINK)


def test_drop_counters_account_for_the_uplink_frames(from_uplink: dict) -> None:
    bad = sum(from_uplink["sent"].get(k, 0) for k in BAD_KINDS_UPLINK)
    dropped = sum(v for v in from_uplink["counters"].values() if v > 0)
    assert dropped >= bad, (
        f"{bad} bad frames injected, drop counters grew by {dropped}: {from_uplink['counters']}"
    )


def test_native_state_is_identical(scn: Scenario) -> None:
    """Addresses, routes, rules, ruleset (outside bridge mv6_isolation), global sysctls."""
    before = json.loads((ephemeral_dir() / "native-before.json").read_text())
    now = native_snapshot(scn.site)
    for key in sorted(before):
        if before[key] != now[key]:
            diff = "\n".join(
                difflib.unified_diff(
                    before[key].splitlines(), now[key].splitlines(), "before", "now", lineterm=""
                )
            )
            pytest.fail(f"native {key} changed:\n{diff}")
