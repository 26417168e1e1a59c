"""roles/guest_network inside real TCG guests, over the QEMU guest agent only.

IPv6 parallel network: a router guest (networkd IPv6SendRA=) and a SLAAC guest on a bridge this
module creates (``t-gstbr1``); they ping each other, carry no IPv4 address, drop IPv4 in their
own ``inet mv6_guest`` table (counters prove it), and a second run changes nothing.
IPv4 parallel network: one guest with IPv6 off: no IPv6 address at all, and a capture on the
bridge sees no IPv6 frame from it (no RS, no MLD) from boot to the end of the configuration.

The golden image is found as in test_guest.py. Domains, disks and the bridge are removed in
finalizers, also on failure.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import netaddr
import pytest
from conftest import with_site
from guestlib import golden_image, guest_run, remove_domains, sh

TOP = Path(__file__).resolve().parents[2]
BIN = TOP / ".venv" / "bin"
BRIDGE = "t-gstbr1"
WORK = Path("/var/tmp/t-gst/it-net")
ETH_P_ALL = 0x0003

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (libvirt system URI, bridges)"),
]

SITE = """
- name: Guests of this hypervisor
  hosts: localhost
  gather_facts: false
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: mv6.transition.guest

- name: Network inside the guests, over their agents
  hosts: mv6_guests
  gather_facts: false
  vars:
    mv6_guest_network_mode: "{{ test_modes[inventory_hostname] | default('static') }}"
  roles:
    - role: mv6.transition.guest_network
"""

# ICMP echo from inside a guest with a raw socket (the golden image has python3, not ping).
PING = r"""
import socket, struct, sys, time
dst = sys.argv[1]
v6 = ":" in dst
fam, proto = (socket.AF_INET6, 58) if v6 else (socket.AF_INET, 1)
s = socket.socket(fam, socket.SOCK_RAW, proto)
def packet(seq):
    body = struct.pack("!BBHHH", 128 if v6 else 8, 0, 0, 0x6D76, seq) + b"mv6!"
    if v6:
        return body  # the kernel fills in the ICMPv6 checksum
    total = sum(struct.unpack("!%dH" % (len(body) // 2), body))
    total = (total >> 16) + (total & 0xFFFF)
    csum = ~(total + (total >> 16)) & 0xFFFF
    return body[:2] + struct.pack("!H", csum) + body[4:]
for seq in range(1, 6):
    try:
        s.sendto(packet(seq), (dst, 0))
    except OSError as exc:
        print("send", exc)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data, addr = s.recvfrom(2048)
        except (socket.timeout, OSError):
            break
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        if icmp[0] == (129 if v6 else 0) and addr[0].split("%")[0] == dst:
            print("reply", seq)
            sys.exit(0)
sys.exit(1)
"""


# --- helpers (copied from test_guest.py so this module runs on its own) ------------------
def playbook(extra: dict, *args: str, timeout: int = 600) -> tuple[int, str, dict]:
    varfile = WORK / "extra.json"
    varfile.write_text(json.dumps(extra))
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(TOP / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            str(WORK / "site.yml"),
            "-e",
            f"@{varfile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TOP,
        env=env,
        check=False,
    )
    out = proc.stdout + proc.stderr
    recap: dict[str, dict] = {}
    for host, fields in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", out, re.M):
        recap[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", fields)}
    return proc.returncode, out, recap


def guest_sh(domain: str, script: str, *args: str, timeout: int = 60) -> tuple[int, str]:
    """Run a shell script in the guest through its agent; return exit code and stdout."""
    return guest_run(domain, "/bin/sh", ["-c", script, "sh", *args], timeout=timeout)


def ping(domain: str, dst: str) -> bool:
    code, _output = guest_sh(domain, 'exec python3 -c "$1" "$2"', PING, dst, timeout=30)
    return code == 0


def wrong_family_listeners(domain: str, family: str) -> tuple[list[str], str]:
    """Sockets listening on the wrong family outside loopback (``ss -H -lnptu`` in the guest).

    ``*`` (dual-stack) is not counted, as in the audit; ``0.0.0.0``, ``[::]`` and any
    non-loopback address of the other family are. Returns the offending lines and the output.
    """
    code, text = guest_sh(domain, "ss -H -lnptu")
    assert code == 0, text
    wrong = 4 if family == "ipv6" else 6
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 5:
            continue
        host = fields[4].rsplit(":", 1)[0].strip("[]").split("%")[0]
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            continue
        if addr.version == wrong and not addr.is_loopback:
            found.append(line)
    return found, text


class Capture:
    """Count frames per (source MAC, ethertype) seen on the test bridge, in a thread."""

    def __init__(self, ifname: str):
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.5)
        self.counts: dict[tuple[str, int], int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                frame = self.sock.recv(65535)
            except TimeoutError:
                continue
            if len(frame) < 14:
                continue
            src = ":".join(f"{b:02x}" for b in frame[6:12])
            key = (src, int.from_bytes(frame[12:14], "big"))
            self.counts[key] = self.counts.get(key, 0) + 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()

    def frames(self, mac: str, ethertype: int) -> int:
        return self.counts.get((mac.lower(), ethertype), 0)


def plan(family: str, subnet: str, guests: dict) -> dict:
    """A version 2 plan of one host: the planner's site block over the test's own entries."""
    routers = [name for name, g in sorted(guests.items()) if g["router"]]
    host = {
        "slot": 0,
        "released": False,
        "subnet": subnet,
        "gateway": None,
        "dns": [],
        "router": routers[0] if routers else None,
        "dhcp4_pool": None,
        "guests": guests,
    }
    extra = {
        "mv6_parallel": {"bridge": BRIDGE},
        "mv6_plan": {"parallel_family": family, "hosts": {"localhost": host}},
    }
    return with_site(extra)["mv6_plan"]


def slot(n: int, mac: str, address: str, prefixlen: int, router: bool = False) -> dict:
    return {
        "slot": n,
        "released": False,
        "mac": mac,
        "address": address,
        "prefixlen": prefixlen,
        "port": f"t-gstp1{n}",
        "router": router,
    }


def converge_times(out: str) -> dict[str, float]:
    found = re.findall(r"(t-gst-[\w-]+) \(ipv\d.*converged in ([\d.]+) s", out)
    return {host: float(seconds) for host, seconds in found}


# --- fixture ---------------------------------------------------------------------------------
@pytest.fixture
def lab():
    image = golden_image()
    if image is None:
        pytest.skip("no golden image: run roles/golden_image or set MV6_TEST_GOLDEN")
    sh("bash", str(TOP / "scripts" / "libvirt-up.sh"))
    remove_domains("t-gst-n")
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "guests").mkdir(parents=True)
    WORK.chmod(0o755)
    (WORK / "site.yml").write_text(SITE)
    sh("ip", "link", "del", BRIDGE, check=False)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    capture = None
    try:
        # The host takes no L3 part on the test segment.
        sh("sysctl", "-q", "-w", f"net.ipv6.conf.{BRIDGE}.disable_ipv6=1")
        sh("ip", "link", "set", BRIDGE, "up")
        capture = Capture(BRIDGE)
        base = {
            "mv6_hypervisor_accel_effective": "qemu",
            "mv6_parallel": {"bridge": BRIDGE},
            "mv6_guest_state_dir": str(WORK / "guests"),
            "mv6_guest_images": {"debian12": image},
            "mv6_guest_agent_timeout": 480,
        }
        yield {"base": base, "capture": capture}
    finally:
        if capture is not None:
            capture.close()
        remove_domains("t-gst-n")
        shutil.rmtree(WORK, ignore_errors=True)
        sh("ip", "link", "del", BRIDGE, check=False)


# --- tests -------------------------------------------------------------------------------------
def test_ipv6_router_and_slaac_guest(lab):
    subnet = "2001:db8:6a01::/64"
    r_mac, s_mac = "02:6d:76:6a:01:01", "02:6d:76:6a:01:02"
    s_addr = str(netaddr.EUI(s_mac).ipv6(netaddr.IPNetwork(subnet).first))
    guests = {
        "t-gst-nr": slot(0, r_mac, "2001:db8:6a01::1", 64, router=True),
        "t-gst-ns": slot(1, s_mac, s_addr, 64),
    }
    extra = dict(
        lab["base"],
        mv6_plan=plan("ipv6", subnet, guests),
        mv6_guests=[{"name": n, "memory_mib": 384, "router": n == "t-gst-nr"} for n in guests],
        test_modes={"t-gst-ns": "slaac"},
    )
    start = time.monotonic()
    rc, out, recap = playbook(extra)
    first_run = time.monotonic() - start
    assert rc == 0, out[-5000:]
    assert recap["t-gst-nr"]["changed"] == 1 and recap["t-gst-ns"]["changed"] == 1

    # SLAAC from the router guest's RA gave the planned EUI-64 address and a default route.
    code, routes = guest_sh("t-gst-ns", "ip -6 route show default; ip -6 -o addr show scope global")
    assert code == 0 and "via fe80::" in routes and s_addr in routes, routes
    assert ping("t-gst-nr", s_addr), "router -> SLAAC guest ping6 failed"
    assert ping("t-gst-ns", "2001:db8:6a01::1"), "SLAAC guest -> router ping6 failed"

    for name in guests:
        code, v4 = guest_sh(name, "ip -4 -o addr show")
        assert code == 0 and [line.split()[1] for line in v4.splitlines()] == ["lo"], v4
        code, _output = guest_sh(name, "nft list table inet mv6_guest >/dev/null")
        assert code == 0
        code, host = guest_sh(name, "hostname; cat /etc/hostname")
        assert host.split() == [name, name]
        # systemd-resolved's LLMNR/mDNS sockets (0.0.0.0:5355 before the resolved drop-in)
        # and anything else on IPv4 outside loopback.
        found, text = wrong_family_listeners(name, "ipv6")
        assert found == [] and ":5355 " not in text, text

    # IPv4 is dropped by the guest's own table: give the NIC an IPv4 address for a moment,
    # try to reach a peer, and read the drop counter of the output chain.
    script = (
        "dev=$(ip -o link | awk -F': ' '/02:6d:76:6a:01:02/{print $2}'); echo dev=$dev;"
        ' ip addr add 198.51.100.77/24 dev "$dev" 2>&1'
        ' && (python3 -c "$1" 198.51.100.1 2>&1; echo rc=$?)'
        " ; ip -4 addr flush scope global; nft list chain inet mv6_guest output"
    )
    code, text = guest_sh("t-gst-ns", script, PING, timeout=40)
    assert "rc=1" in text, text
    dropped = re.search(r"meta nfproto ipv4 counter packets (\d+)", text)
    assert dropped and int(dropped.group(1)) > 0, text

    # The segment carried IPv6 from both and no IPv4 or ARP frame from either.
    capture = lab["capture"]
    assert capture.frames(r_mac, 0x86DD) > 0 and capture.frames(s_mac, 0x86DD) > 0
    for mac in (r_mac, s_mac):
        assert capture.frames(mac, 0x0800) == 0 and capture.frames(mac, 0x0806) == 0

    # Idempotence of the IPv6 stack in the guests, and check mode on it, are the Molecule
    # scenarios' idempotence and check steps (v6_parallel, and the fleet's site a); this
    # file's second run is the IPv4 test's (two more runs here cost 60-100 s of CI).
    print(f"\nipv6: first run {first_run:.1f} s, converge per guest", converge_times(out))


def test_ipv4_guest_has_no_ipv6_at_all(lab):
    subnet = "198.51.100.0/24"
    mac = "02:6d:76:6a:01:04"
    guests = {"t-gst-n4": slot(0, mac, "198.51.100.10", 24)}
    extra = dict(
        lab["base"],
        mv6_plan=plan("ipv4", subnet, guests),
        mv6_guests=[{"name": "t-gst-n4", "memory_mib": 384}],
    )
    start = time.monotonic()
    rc, out, recap = playbook(extra)
    first_run = time.monotonic() - start
    assert rc == 0, out[-5000:]
    assert recap["t-gst-n4"]["changed"] == 1

    code, text = guest_sh(
        "t-gst-n4",
        "cat /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6;"
        " echo ---; ip -6 -o addr show; echo ---; ip -4 -o addr show; echo ---;"
        " nft list table inet mv6_guest | grep -c 'meta nfproto ipv6'",
    )
    flags, v6, v4, rules = text.split("---\n")
    assert code == 0 and flags.split() == ["1", "1"], text
    assert v6.strip() == "", f"an IPv4 guest must have no IPv6 address at all: {v6}"
    assert "198.51.100.10/24" in v4
    assert rules.strip() == "3"
    # No listener on IPv6 ([::]:5355 from systemd-resolved before the resolved drop-in).
    found, text = wrong_family_listeners("t-gst-n4", "ipv4")
    assert found == [] and ":5355 " not in text, text
    # From its first frame on, the guest sent no IPv6 (no router solicitation, no MLD report),
    # while its IPv4 does reach the segment (ARP for an absent peer: the capture works).
    guest_sh("t-gst-n4", 'python3 -c "$1" 198.51.100.1', PING, timeout=30)
    assert lab["capture"].frames(mac, 0x0806) > 0
    assert lab["capture"].frames(mac, 0x86DD) == 0

    rc, out2, recap = playbook(extra)
    assert rc == 0 and all(r["changed"] == 0 for r in recap.values()), out2[-5000:]
    print(
        f"\nipv4: first run {first_run:.1f} s; converge",
        converge_times(out),
        "second",
        converge_times(out2),
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"mv6_parallel_family": "ipv4", "mv6_guest_network_mode": "slaac"},
            "mv6_guest_network_mode: slaac needs an IPv6 parallel network",
        ),
        (
            {
                "mv6_guest_plan": {
                    "mac": "02:6d:76:6a:01:09",
                    "address": "198.51.100.9",
                    "prefixlen": 64,
                }
            },
            "mv6_guest_plan.address: 198.51.100.9 is not an ipv6 address",
        ),
        (
            {"mv6_guest_network_dns": ["198.51.100.53"]},
            "mv6_guest_network_dns / mv6_plan dns: 198.51.100.53 is not an ipv6 address",
        ),
    ],
)
def test_bad_input_fails_before_touching_the_guest(tmp_path, overrides, message):
    # The host is a libvirt_qemu guest that does not exist: if the checks let anything through,
    # the apply task fails on the connection instead and the message below is missing.
    hostvars = {
        "ansible_connection": "community.libvirt.libvirt_qemu",
        "ansible_host": "t-gst-no-such-domain",
        "mv6_parallel_family": "ipv6",
        "mv6_guest_plan": {
            "mac": "02:6d:76:6a:01:09",
            "address": "2001:db8:6a01::9",
            "prefixlen": 64,
        },
    }
    hostvars.update(overrides)
    (tmp_path / "inventory.json").write_text(
        json.dumps({"all": {"hosts": {"t-gst-nbad": hostvars}}})
    )
    (tmp_path / "play.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  roles: [mv6.transition.guest_network]\n"
    )
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(TOP / "ansible.cfg"),
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            str(tmp_path / "inventory.json"),
            str(tmp_path / "play.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=TOP,
        env=env,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert message in out, out[-3000:]
    assert "Configure the guest's single-family network" not in out
