"""mv6.transition.isolation_facts on real state: a test bridge converged by the hypervisor
role on this host, and network namespaces acting as single-family guests."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import (
    KVM,
    NetnsLab,
    changed_tasks,
    device_mode,
    run_module,
    run_playbook,
    set_device_mode,
    sh,
    virsh,
    with_site,
)

pytestmark = pytest.mark.timeout(600)

BRIDGE = "t-hvbr1"
PORT = "t-hvq0"
TABLE = "t_hv_iso_facts"
NS_PORT = "t-hv-q"
NS_V6, NS_V4 = "t-hv-v6g", "t-hv-v4g"
HOST_CHECKS = ("host_address", "host_sysctl", "nft_table", "nft_chain", "nft_counter", "nft_set")
HOST_CHECKS += ("bridge", "uplink", "nft_drift", "nft_owner", "bridge_netfilter")
RECORD = f"/var/lib/mv6/{TABLE}.loaded"
KEEPER = f"/usr/local/sbin/{TABLE.replace('_', '-')}-keeper"

PLAYBOOK = """\
- name: Hypervisor role for the isolation_facts test
  hosts: localhost
  gather_facts: false
  roles:
    - role: mv6.transition.hypervisor
"""


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("t-hv-facts")
    playbook = workdir / "hv.yml"
    playbook.write_text(PLAYBOOK)
    lab = NetnsLab()
    extra = with_site(
        {
            "mv6_parallel": {"bridge": BRIDGE, "uplink": None},
            "mv6_plan": {
                "parallel_family": "ipv6",
                "hosts": {
                    "localhost": {
                        "guests": {
                            "t-hv-q": {
                                "released": False,
                                "mac": "02:6d:76:00:01:01",
                                "address": "2001:db8:6:2::10",
                                "link_local": "fe80::6d:76ff:fe00:101",
                                "port": PORT,
                                "router": False,
                            }
                        }
                    }
                },
            },
            "mv6_hypervisor_nft_table": TABLE,
            "mv6_hypervisor_nft_file": str(workdir / f"{TABLE}.nft"),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hvq*",
        }
    )
    try:
        lab.add_ns(NS_PORT)
        lab.add_veth(PORT, "t-hvq0x", NS_PORT, "eth0", "02:6d:76:00:01:01")
        result = run_playbook(playbook, extra)
        assert result["rc"] == 0, json.dumps(result)[-3000:]
        sh("ip", "link", "set", PORT, "master", BRIDGE)
        sh("ip", "link", "set", PORT, "up")
        yield {"extra": extra, "nft_file": extra["mv6_hypervisor_nft_file"], "playbook": playbook}
    finally:
        run_playbook(playbook, {**extra, "mv6_hypervisor_state": "absent"})
        lab.cleanup()
        sh("ip", "link", "del", BRIDGE, check=False)
        sh("nft", "delete", "table", "bridge", TABLE, check=False)
        Path(f"/etc/sysctl.d/60-mv6-{BRIDGE}.conf").unlink(missing_ok=True)
        Path(f"/var/lib/mv6/{TABLE}.loaded").unlink(missing_ok=True)


def audit(**extra) -> dict:
    args = {
        "scope": "host",
        "parallel_family": "ipv6",
        "bridge": BRIDGE,
        "ports": [PORT],
        "nft_table": TABLE,
        **extra,
    }
    result = run_module("mv6.transition.isolation_facts", args, check=True)
    assert not result.get("failed"), result
    assert result["changed"] is False
    return result


def ours(result: dict) -> list[dict]:
    """Violations about this test's objects (other pieces run guests and QEMU meanwhile)."""
    return [v for v in result["violations"] if v["check"] in HOST_CHECKS]


def test_clean_host_has_no_violation(host):
    result = audit()
    assert ours(result) == []
    assert result["facts"]["bridge_ports"] == [PORT]
    assert set(result["counters"]) >= {"drop_ethertype", "drop_input", "pass_forward"}
    assert isinstance(result["facts"]["domains"], dict)
    assert isinstance(result["facts"]["qemu_processes"], list)


def test_address_on_bridge_is_reported(host):
    sh("ip", "addr", "add", "198.51.100.77/32", "dev", BRIDGE)
    try:
        found = ours(audit())
    finally:
        sh("ip", "addr", "del", "198.51.100.77/32", "dev", BRIDGE, check=False)
    assert [(v["check"], v["object"]) for v in found] == [("host_address", BRIDGE)]
    assert "198.51.100.77/32" in found[0]["reason"]


def test_sysctl_drift_is_reported(host):
    key = f"net.ipv4.conf.{PORT}.arp_ignore"
    sh("sysctl", "-q", "-w", f"{key}=0")
    try:
        found = ours(audit())
    finally:
        sh("sysctl", "-q", "-w", f"{key}=8")
    assert [(v["check"], v["object"]) for v in found] == [("host_sysctl", key)]


def test_bridge_netfilter_switch_is_reported_and_repaired(host):
    sh("ip", "link", "set", "dev", BRIDGE, "type", "bridge", "nf_call_ip6tables", "1")
    try:
        found = ours(audit())
        repair = run_playbook(host["playbook"], host["extra"])
        link = json.loads(sh("ip", "-j", "-d", "link", "show", "dev", BRIDGE).stdout)[0]
    finally:
        sh("ip", "link", "set", "dev", BRIDGE, "type", "bridge", "nf_call_ip6tables", "0")
    assert [(v["check"], v["object"]) for v in found] == [("bridge_netfilter", BRIDGE)]
    assert repair["rc"] == 0, json.dumps(repair)[-3000:]
    assert "mv6.transition.hypervisor : Correct the bridge's options" in changed_tasks(repair)
    assert link["linkinfo"]["info_data"]["nf_call_ip6tables"] == 0
    assert ours(audit()) == []


def test_br_netfilter_host_switches_are_reported_not_violations(host):
    """Read from this machine: its br_netfilter sysctls are what they are, the report follows."""
    on = [
        f"net.bridge.bridge-nf-call-{name}"
        for name in ("arptables", "ip6tables", "iptables")
        if Path(f"/proc/sys/net/bridge/bridge-nf-call-{name}").exists()
        and Path(f"/proc/sys/net/bridge/bridge-nf-call-{name}").read_text().strip() == "1"
    ]
    result = audit()
    reported = [f["object"] for f in result["facts"]["coexistence"] if "bridge-nf" in f["object"]]
    assert reported == ([" ".join(on)] if on else [])
    assert ours(result) == []


def listing(family: str) -> str:
    return sh("nft", "-s", "list", "table", family, TABLE).stdout.rstrip("\n")


@contextlib.contextmanager
def unkept(host, tmp_path):
    """The keeper stopped and the role's tables loaded without the owner flag, as plain
    ``nft -f`` (or the role before the keeper) loads them: only such tables can be edited
    by hand. A record of them, as the role writes one, goes to *tmp_path*."""
    sh(KEEPER, "stop", "--table", TABLE)
    unowned = tmp_path / "unowned.nft"
    unowned.write_text(re.sub(r"\s*flags owner;", "", Path(host["nft_file"]).read_text()))
    record = tmp_path / "record"
    try:
        sh("nft", "-f", str(unowned))
        record.write_text("\n".join(listing(family) for family in ("bridge", "inet")))
        yield {"record": str(record), "file": str(unowned)}
    finally:
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, TABLE, check=False)
        sh(KEEPER, "start", "--table", TABLE, "--file", host["nft_file"], "--bridge", BRIDGE)


def test_kept_tables_are_owned_and_refuse_hand_edits(host):
    result = audit(nft_record=RECORD, owned=True)
    assert ours(result) == []
    assert result["facts"]["nft_owned"] == {"bridge": True, "inet": True}
    flushed = sh("nft", "flush", "chain", "bridge", TABLE, "parallel_input", check=False)
    assert flushed.returncode != 0 and "Operation not permitted" in flushed.stderr, flushed
    assert ours(audit(nft_record=RECORD, owned=True)) == []


def test_unowned_tables_are_reported(host, tmp_path):
    with unkept(host, tmp_path) as state:
        found = ours(audit(nft_record=state["record"], owned=True))
        without = ours(audit(nft_record=state["record"]))
    assert [(v["check"], v["object"]) for v in found] == [
        ("nft_owner", f"bridge {TABLE}"),
        ("nft_owner", f"inet {TABLE}"),
    ]
    assert "flush ruleset" in found[0]["reason"]
    assert without == []


def test_flushed_or_edited_chain_is_reported(host, tmp_path):
    """The chains still exist, so only the comparison with what the role loaded sees it."""
    with unkept(host, tmp_path) as state:
        record = state["record"]
        assert ours(audit(nft_record=record)) == []
        sh("nft", "flush", "chain", "bridge", TABLE, "parallel_input")
        flushed = ours(audit(nft_record=record))
        without_record = ours(audit())
        sh("nft", "-f", state["file"])
        sh("nft", "add", "rule", "bridge", TABLE, "parallel_forward", "accept")
        edited = ours(audit(nft_record=record))
        sh("nft", "-f", state["file"])
        restored = ours(audit(nft_record=record))
    assert [(v["check"], v["object"]) for v in flushed] == [("nft_drift", f"bridge {TABLE}")]
    assert "drop_input" in flushed[0]["reason"], flushed
    assert without_record == []
    assert [v["check"] for v in edited] == ["nft_drift"], edited
    assert restored == []
    assert ours(audit(nft_record=RECORD)) == []


def test_missing_host_guard_is_reported(host, tmp_path):
    with unkept(host, tmp_path):
        sh("nft", "delete", "table", "inet", TABLE)
        found = ours(audit())
    assert [(v["check"], v["object"]) for v in found] == [("nft_table", f"inet {TABLE}")]


def test_a_host_without_the_guard_passes_the_audit_site_yml_runs(host):
    """mv6_parallel.host_guard: false, then the audit as playbooks/tasks/audit_host.yml
    runs it (owned, with the role's record): no violation. The keeper drops the guard table
    of its own; the guard is back for the tests after this one."""
    off = with_site({**host["extra"], "mv6_hypervisor_host_guard": False})
    try:
        result = run_playbook(host["playbook"], off)
        assert result["rc"] == 0, json.dumps(result)[-3000:]
        assert sh("nft", "list", "table", "inet", TABLE, check=False).returncode != 0
        found = ours(audit(host_guard=False, owned=True, nft_record=RECORD))
        assert found == []
        again = run_playbook(host["playbook"], off)
        assert again["rc"] == 0 and changed_tasks(again) == [], changed_tasks(again)
    finally:
        back = run_playbook(host["playbook"], host["extra"])
    assert back["rc"] == 0, json.dumps(back)[-3000:]
    assert ours(audit(owned=True, nft_record=RECORD)) == []


def test_missing_table_is_reported(host, tmp_path):
    """A stopped keeper takes its tables with it."""
    sh(KEEPER, "stop", "--table", TABLE)
    try:
        found = ours(audit())
    finally:
        sh(KEEPER, "start", "--table", TABLE, "--file", host["nft_file"], "--bridge", BRIDGE)
    assert [(v["check"], v["object"]) for v in found] == [
        ("nft_table", f"bridge {TABLE}"),
        ("nft_table", f"inet {TABLE}"),
    ]


@pytest.fixture
def guests(netns_lab: NetnsLab):
    """Two namespaces set up like converged guests: one IPv6-only, one IPv4-only."""
    v6 = netns_lab.add_ns(NS_V6)
    v4 = netns_lab.add_ns(NS_V4)
    netns_lab.add_veth("t-hvg6h", "t-hvg6x", v6, "eth0")
    netns_lab.add_veth("t-hvg4h", "t-hvg4x", v4, "eth0")
    sh("ip", "-n", v6, "addr", "add", "2001:db8:6:3::10/64", "dev", "eth0", "nodad")
    sh("ip", "-n", v6, "link", "set", "eth0", "up")
    sh("ip", "netns", "exec", v4, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
    sh("ip", "netns", "exec", v4, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
    sh("ip", "netns", "exec", v4, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.disable_ipv6=1")
    sh("ip", "-n", v4, "addr", "add", "198.51.100.20/24", "dev", "eth0")
    sh("ip", "-n", v4, "link", "set", "eth0", "up")
    for ns, wrong in ((v6, "ipv4"), (v4, "ipv6")):
        rules = (
            "table inet mv6_guest {\n"
            " chain input { type filter hook input priority 0; meta nfproto "
            f"{wrong} drop; }}\n"
            " chain output { type filter hook output priority 0; meta nfproto "
            f"{wrong} drop; }}\n}}\n"
        )
        sh("ip", "netns", "exec", ns, "nft", "-f", "-", input=rules)
    return {"ipv6": v6, "ipv4": v4}


def guest_audit(ns: str, family: str) -> list[dict]:
    result = run_module(
        "mv6.transition.isolation_facts", {"scope": "guest", "parallel_family": family}, netns=ns
    )
    assert not result.get("failed"), result
    return result["violations"]


@pytest.mark.parametrize("family", ["ipv6", "ipv4"])
def test_clean_guest_has_no_violation(guests, family):
    assert guest_audit(guests[family], family) == []


def test_ipv4_address_in_v6_guest_is_reported(guests):
    ns = guests["ipv6"]
    sh("ip", "-n", ns, "addr", "add", "198.51.100.21/24", "dev", "eth0")
    found = guest_audit(ns, "ipv6")
    checks = {(v["check"], v["object"]) for v in found}
    assert ("guest_address", "eth0 198.51.100.21") in checks
    assert ("guest_route", "198.51.100.0/24 dev eth0") in checks


def test_ipv4_listener_in_v6_guest_is_reported(guests):
    ns = guests["ipv6"]
    server = [
        "ip", "netns", "exec", ns, "timeout", "20", "/usr/bin/python3", "-c",
        "import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 5999)); s.listen();"
        " time.sleep(15)",
    ]  # fmt: skip
    proc = subprocess.Popen(server)
    try:
        for _attempt in range(50):
            if "5999" in sh("ip", "netns", "exec", ns, "ss", "-H", "-l", "-n", "-t").stdout:
                break
            time.sleep(0.1)
        found = guest_audit(ns, "ipv6")
    finally:
        proc.kill()
        proc.wait()
    assert [(v["check"], v["object"]) for v in found] == [("guest_listener", "tcp 0.0.0.0:5999")]


def test_v4_guest_with_ipv6_on_is_reported(guests):
    ns = guests["ipv4"]
    sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0")
    found = guest_audit(ns, "ipv4")
    assert ("guest_sysctl", "net.ipv6.conf.all.disable_ipv6") in {
        (v["check"], v["object"]) for v in found
    }


def test_missing_guest_table_is_reported(guests):
    ns = guests["ipv6"]
    sh("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "mv6_guest")
    found = guest_audit(ns, "ipv6")
    assert [(v["check"], v["object"]) for v in found] == [("guest_nft", "inet mv6_guest")]


DOMAIN_XML = """<domain type='qemu'>
  <name>t-hv-dom</name>
  <metadata><mv6:guest xmlns:mv6="https://mv6.invalid/transition">
    <mv6:hypervisor>localhost</mv6:hypervisor></mv6:guest></metadata>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
  <devices>
    <interface type='network'><source network='default'/><mac address='02:6d:76:00:05:01'/>
    </interface>
    <interface type='bridge'><source bridge='t-hvbr1'/><mac address='02:6d:76:00:05:02'/>
    </interface>
  </devices>
</domain>
"""


# An unrelated VM on the same host: same NICs, no MV6 metadata, not in the plan.
OTHER_XML = (
    re.sub(r"\s*<metadata>.*?</metadata>", "", DOMAIN_XML, flags=re.S)
    .replace("t-hv-dom", "t-hv-oth")
    .replace("02:6d:76:00:05:0", "02:6d:76:00:06:0")
)


def test_guest_nic_off_the_bridge_is_reported(host, tmp_path):
    """A (defined, not started) MV6 domain with a NIC on libvirt's default network is
    reported; an unrelated domain with the same NICs is not (only MV6 guests are judged)."""
    names = ("t-hv-dom", "t-hv-oth")
    try:
        for name, text in zip(names, (DOMAIN_XML, OTHER_XML), strict=True):
            xml = tmp_path / f"{name}.xml"
            xml.write_text(text)
            virsh("undefine", name, check=False)
            virsh("define", str(xml))
        result = audit()
    finally:
        # Covers every step: a define that failed or timed out leaves nothing behind.
        for name in names:
            virsh("undefine", name, check=False)
    mine = [v for v in result["violations"] if v["object"].startswith("t-hv-")]
    assert [(v["check"], v["object"]) for v in mine] == [
        ("guest_nic", "t-hv-dom 02:6d:76:00:05:01")
    ]
    assert "default" in mine[0]["reason"]
    assert "t-hv-oth" in result["facts"]["other_domains"]
    assert "t-hv-oth" not in result["facts"]["domains"]


@pytest.mark.skipif(not KVM.exists(), reason="no /dev/kvm on this host")
def test_libvirt_reprobing_qemu_is_reported(host):
    """With /dev/kvm root:root 0600 (a host without udev before roles/hypervisor ran) libvirt
    rewrites its QEMU capabilities cache at every lookup: the audit says so. With the mode
    the role gives the device, the same audit is clean of it."""
    original = device_mode()
    try:
        set_device_mode((0, 0, 0o600))
        broken = audit()
        set_device_mode(original)
        fixed = audit()
    finally:
        set_device_mode(original)
    found = [v for v in broken["violations"] if v["check"] == "libvirt_reprobe"]
    assert [v["object"] for v in found] == ["qemu:///system"], broken["violations"]
    assert "probes QEMU again" in found[0]["reason"] and "/dev/kvm" in found[0]["reason"]
    assert broken["facts"]["capabilities_cache"], "the cache directory was not read"
    assert [v for v in fixed["violations"] if v["check"] == "libvirt_reprobe"] == []


def _root_process_named(name: str, workdir: Path, *, own_pid_namespace: bool):
    """A root process whose comm is *name* (a copy of sleep): in this PID namespace, or in a
    PID namespace of its own, as a container's processes are."""
    exe = workdir / name
    exe.write_bytes(Path("/bin/sleep").read_bytes())
    exe.chmod(0o755)
    argv = [str(exe), "300"]
    if own_pid_namespace:
        argv = ["unshare", "--pid", "--fork", "--kill-child", *argv]
    proc = subprocess.Popen(argv)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = subprocess.run(
            ["pgrep", "-x", name], capture_output=True, text=True, check=False
        ).stdout
        if found.split():
            return proc, int(found.split()[0])
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{name} did not start")


@pytest.mark.parametrize("container", [False, True], ids=["this-host", "in-a-container"])
def test_root_qemu_is_reported_only_in_the_hosts_own_pid_namespace(host, tmp_path, container):
    """A QEMU running as root on this host is a violation. One in another PID namespace (a
    container on the host, such as the fleet's hypervisors with their own guests) belongs to
    another system: it is neither reported nor listed."""
    name = "qemu-system-thv"  # 15 characters: all of comm
    proc, pid = _root_process_named(name, tmp_path, own_pid_namespace=container)
    try:
        result = audit()
    finally:
        proc.kill()
        proc.wait(timeout=10)
        subprocess.run(["pkill", "-KILL", "-x", name], check=False)
    listed = [p for p in result["facts"]["qemu_processes"] if p["pid"] == pid]
    found = [
        v for v in result["violations"] if v["check"] == "qemu_root" and str(pid) in v["object"]
    ]
    if container:
        assert listed == [] and found == [], (listed, found)
    else:
        assert [p["uid"] for p in listed] == [0], result["facts"]["qemu_processes"]
        assert len(found) == 1 and "runs as uid 0" in found[0]["reason"], result["violations"]
