"""What the fleet proves (molecule/fleet, docs/fleet.md). The tests run in file order on one
fleet: prepare adopted hv1 then hv2, converge adopted hv3 with the other two (forks 3).
Every figure a test measures goes to fleet-figures.json in the run directory
(/var/tmp/mv6-fleet-run, with every playbook's log).
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time

import pytest
from mv6mol import fleet
from mv6mol.fleet import figure

pytestmark = pytest.mark.timeout(900)

SITE_A_GUESTS = {"web6-1": "hv1", "web6-2": "hv2", "web6-3": "hv3"}


def wait_agent(host: str, name: str, timeout: float = 420) -> float:
    start = time.monotonic()
    end = start + timeout
    while time.monotonic() < end:
        try:
            if fleet.guest(host, name).ping():
                return time.monotonic() - start
        except Exception:  # the domain may not exist yet, or libvirtd restarts
            pass
        time.sleep(2)
    raise AssertionError(f"{name} on {host}: no guest agent within {timeout} s")


def wait_route(host: str, name: str, timeout: float = 60) -> None:
    """A guest has a default route once the router's RA reached it (every 3-10 s)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if "default via" in fleet.guest(host, name).run(["ip", "-6", "route"]).stdout:
            return
        time.sleep(2)
    raise AssertionError(f"{name}: no default route from the parallel router in {timeout} s")


@pytest.fixture(scope="module")
def plan_a():
    fleet.router(fleet.PLAN_A, "a")
    for name, host in SITE_A_GUESTS.items():
        wait_route(host, name)
    return fleet.plan()


@pytest.fixture(scope="module")
def adoption():
    return json.loads((fleet.ephemeral() / "adoption.json").read_text())


def test_hosts_not_yet_adopted_were_left_alone(adoption):
    assert adoption["adopt_hv1"]["rc"] == 0, adoption["adopt_hv1"]["failures"]
    assert adoption["adopt_hv2"]["rc"] == 0, adoption["adopt_hv2"]["failures"]
    figure("adopt_hv1_s", adoption["adopt_hv1"]["seconds"])
    figure("adopt_hv2_s", adoption["adopt_hv2"]["seconds"])
    for host in ("hv1", "hv2", "hv3"):
        assert adoption["objects_before"][host] == [], f"{host} had MV6 objects before"
    for host in ("hv2", "hv3"):
        after = adoption["after_hv1"][host]
        assert after["differences"] == [], f"{host} changed by hv1's adoption"
        assert after["objects"] == [], f"{host} holds MV6 objects after hv1's adoption"
    assert adoption["after_hv2"]["hv3"] == {"differences": [], "objects": []}


def test_the_plan_grew_without_moving_an_allocation(adoption, plan_a):
    first, second = adoption["plan_after_hv1"], adoption["plan_after_hv2"]
    assert sorted(first["hosts"]) == ["hv1"]
    assert sorted(second["hosts"]) == ["hv1", "hv2"]
    assert sorted(plan_a["hosts"]) == ["hv1", "hv2", "hv3"]
    assert fleet.allocations(second, "hv1") == fleet.allocations(first, "hv1")
    for host in ("hv1", "hv2"):
        assert fleet.allocations(plan_a, host) == fleet.allocations(second, host)
    assert len({e["subnet"] for e in plan_a["hosts"].values()}) == 3


def test_every_guest_of_every_hypervisor_is_audited(tmp_path, plan_a):
    result = fleet.playbook("verify.yml", extra={"mv6_verify_report_dir": str(tmp_path)})
    assert result["rc"] == 0, result["failures"]
    figure("verify_s", result["seconds"])
    for name, host in SITE_A_GUESTS.items():
        report = json.loads((tmp_path / f"{host}.json").read_text())
        assert report["violation_count"] == 0, report
        assert report["guests"] == {name: []}, report


def test_the_report_fails_when_a_planned_running_guest_was_not_audited(tmp_path, plan_a):
    """A paused guest is not running: it is not audited, and the audit says so."""
    assert fleet.ssh("hv3", "virsh -q suspend web6-3").returncode == 0
    try:
        result = fleet.playbook("verify.yml", extra={"mv6_verify_report_dir": str(tmp_path)})
    finally:
        assert fleet.ssh("hv3", "virsh -q resume web6-3").returncode == 0
    assert result["rc"] != 0
    report = json.loads((tmp_path / "hv3.json").read_text())
    assert report["violation_count"] == 1
    assert "web6-3" in report["guests"]
    assert "planned to run on hv3" in report["guests"]["web6-3"][0]


def assert_guests_reach_each_other(addresses: dict[str, tuple[str, str]]) -> None:
    """Every guest of fleet.guest_addresses() reaches every other one over the parallel net."""
    for src, (host, _address) in addresses.items():
        for dst, (_host, address) in addresses.items():
            if dst != src:
                assert fleet.guest_ping(host, src, address), f"{src} -> {dst} ({address})"


def assert_hosts_take_no_l3_part(hosts, addresses: dict[str, tuple[str, str]], prefix: str):
    """No host reaches a guest, and none holds an address of the parallel prefix."""
    for host in hosts:
        for name, (_host, address) in addresses.items():
            proc = fleet.ssh(host, f"python3 /usr/local/lib/mv6-fleet/lab_site.py ping {address}")
            assert proc.returncode != 0, f"{host} reached {name} at {address}"
        addrs = fleet.ssh(host, "ip -6 -o addr show scope global; ip -4 -o addr show").stdout
        assert prefix not in addrs, addrs


def test_guests_reach_each_other_across_hypervisors(plan_a):
    addresses = fleet.guest_addresses(plan_a)
    assert_guests_reach_each_other(addresses)


# (source guest's host, destination, what it stands for)
CROSS_FAMILY = [
    ("198.51.100.62", "the native site LAN"),
    ("198.51.100.12", "another hypervisor's native address"),
    ("203.0.113.1", "the controller's management address"),
    ("2001:db8:100::62", "an IPv6 address of the native LAN, not on the parallel network"),
]


@pytest.mark.parametrize(("dst", "what"), CROSS_FAMILY, ids=[c[1] for c in CROSS_FAMILY])
def test_guests_reach_nothing_native(plan_a, dst, what):
    assert not fleet.guest_ping("hv1", "web6-1", dst), f"web6-1 reached {what} ({dst})"


def test_hosts_take_no_l3_part(plan_a):
    """No hypervisor can reach a guest: it has no address on the parallel network."""
    assert_hosts_take_no_l3_part(
        ("hv1", "hv2", "hv3"), fleet.guest_addresses(plan_a), "2001:db8:600"
    )


def plan_bytes() -> bytes:
    return fleet.PLAN_A.read_bytes()


@pytest.mark.parametrize(
    ("limit", "guests", "message"),
    [
        ("hv2,mv6_guests", [{"name": "web6-1"}], "guest name web6-1 is also a guest of host hv1"),
        ("hv2,mv6_guests", [{"name": "hv3"}], "guest name hv3 is the name of an inventory host"),
        ("hv1,hv2,mv6_guests", [{"name": "dup6"}], "guest name dup6 is also a guest of host hv1"),
    ],
    ids=["name-held-by-a-host-outside-the-play", "named-like-a-host", "same-name-two-hosts"],
)
def test_bad_names_are_refused_before_any_change(plan_a, limit, guests, message):
    before = plan_bytes()
    result = fleet.playbook("site.yml", "--limit", limit, extra={"mv6_guests": guests})
    assert result["rc"] != 0
    failures = [m for msgs in result["failures"].values() for m in msgs]
    assert any(message in m for m in failures), failures
    assert all(s.get("changed", 0) == 0 for s in result["stats"].values()), result["stats"]
    assert plan_bytes() == before


def test_a_limit_without_the_guests_is_refused(plan_a):
    before = plan_bytes()
    result = fleet.playbook("site.yml", "--limit", "hv1")
    assert result["rc"] != 0
    failures = [m for msgs in result["failures"].values() for m in msgs]
    assert any("--limit 'hv1,mv6_guests'" in m for m in failures), failures
    assert all(s.get("changed", 0) == 0 for s in result["stats"].values()), result["stats"]
    assert plan_bytes() == before


KEPT_UNIT = "mv6-mv6-isolation.service"
# A firewall role that owns /etc/nftables.conf: its file starts by flushing the ruleset.
FIREWALL_CONF = """#!/usr/sbin/nft -f
flush ruleset
table inet t_site_firewall {
    chain input {
        type filter hook input priority filter; policy accept;
    }
}
"""


def kept_tables(host: str) -> str:
    """Both MV6 tables without counter values and without the uplink's learned MACs."""
    out = fleet.ssh(
        host, "nft -s list table bridge mv6_isolation && nft -s list table inet mv6_isolation"
    )
    assert out.returncode == 0, out.stderr
    return re.sub(r"(set uplink_macs \{[^}]*?)\s*elements = \{[^}]*\}", r"\1", out.stdout)


def ping_soon(host: str, name: str, dst: str, tries: int = 5) -> bool:
    """An echo answered within a few tries (a neighbour entry may have to be resolved again)."""
    return any(fleet.guest_ping(host, name, dst) for _try in range(tries))


def test_nftables_service_leaves_the_isolation_in_force(plan_a):
    """Under systemd, nftables.service's reload, restart and stop (each flushes the whole
    ruleset) and a firewall role's own /etc/nftables.conf leave both MV6 tables loaded and
    unchanged: the keeper holds them with the owner flag. The guests keep their network."""
    addresses = fleet.guest_addresses(plan_a)
    before = kept_tables("hv1")
    was = fleet.ssh("hv1", "systemctl is-active nftables.service").stdout.strip()
    fleet.ssh("hv1", "cp -a /etc/nftables.conf /etc/nftables.conf.t-aside")
    steps = [
        "systemctl restart nftables.service",
        "systemctl reload nftables.service",
        "systemctl stop nftables.service",
        "nft flush ruleset",
        f"cat >/etc/nftables.conf <<'EOF'\n{FIREWALL_CONF}EOF\nsystemctl restart nftables.service",
        "systemctl reload nftables.service",
    ]
    try:
        for step in steps:
            done = fleet.ssh("hv1", step)
            assert done.returncode == 0, (step, done.stderr)
            assert kept_tables("hv1") == before, step
        assert "table inet t_site_firewall" in fleet.ssh("hv1", "nft list tables").stdout
        assert ping_soon("hv1", "web6-1", addresses["web6-2"][1])
    finally:
        fleet.ssh("hv1", "mv /etc/nftables.conf.t-aside /etc/nftables.conf")
        action = "restart" if was == "active" else "stop"
        fleet.ssh("hv1", f"systemctl {action} nftables.service")


KILL_KEEPER = f"""
u={KEPT_UNIT}
n0=$(systemctl show -p NRestarts --value $u)
lv0=$(systemctl show -p MainPID --value libvirtd.service)
t0=$(date +%s%N)
systemctl kill -s KILL $u
ports=$(bridge link show master mv6br0 | grep -c .)
disabled=0
while :; do
  d=$(bridge link show master mv6br0 | grep -c 'state disabled')
  [ "$d" -gt "$disabled" ] && disabled=$d
  if [ "$(systemctl show -p NRestarts --value $u)" -gt "$n0" ] \
     && [ "$(systemctl is-active $u)" = active ] \
     && nft list table bridge mv6_isolation >/dev/null 2>&1; then break; fi
  [ $(( ($(date +%s%N) - t0) / 1000000 )) -gt 60000 ] && break
  sleep 0.01
done
echo back_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
echo disabled_seen=$disabled
echo ports=$ports
lv1=$(systemctl show -p MainPID --value libvirtd.service)
echo libvirtd_same=$([ "$lv1" = "$lv0" ] && echo 1 || echo 0)
echo still_disabled=$(bridge link show master mv6br0 | grep -c 'state disabled')
"""


def test_a_killed_keeper_is_back_within_a_bound(plan_a):
    """SIGKILL to the keeper: its tables go with it, systemd's ExecStopPost disables the
    parallel ports, the keeper is started again, loads the tables and puts the ports back.
    libvirtd and the guests are not restarted."""
    addresses = fleet.guest_addresses(plan_a)
    before = kept_tables("hv1")
    out = fleet.ssh("hv1", KILL_KEEPER, timeout=120)
    values = dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)
    assert out.returncode == 0 and "back_ms" in values, (out.stdout, out.stderr)
    back_ms = int(values["back_ms"])
    figure("keeper_killed_back_ms", back_ms)
    assert back_ms < 10000, values  # the bound docs/isolation.md states
    # Every port at once (the keeper's supervisor puts the bridge down), not only one.
    assert int(values["ports"]) >= 2 and values["disabled_seen"] == values["ports"], values
    assert values["libvirtd_same"] == "1", values
    assert values["still_disabled"] == "0", values
    assert kept_tables("hv1") == before
    assert ping_soon("hv1", "web6-1", addresses["web6-2"][1])


def test_a_rebooted_host_comes_back_by_itself(plan_a, tmp_path):
    """hv1's container restarts: its kernel state is gone (fresh network namespace). Bridge,
    taps, tables and guest come back without site.yml, the table before libvirtd started any
    guest, and verify.yml is clean."""
    start = time.monotonic()
    fleet.fleet("restart", "hv1")
    booted = time.monotonic() - start
    agent = wait_agent("hv1", "web6-1")
    figure("reboot_host_s", round(booted, 1))
    figure("reboot_guest_agent_s", round(agent, 1))
    show = fleet.ssh(
        "hv1",
        "systemctl show -p ActiveEnterTimestampMonotonic mv6-mv6-isolation.service;"
        "systemctl show -p InactiveExitTimestampMonotonic libvirtd.service;"
        "nft list tables; ip -o link show master mv6br0",
    ).stdout
    values = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    table_up = int(values["ActiveEnterTimestampMonotonic"])
    libvirt_start = int(values["InactiveExitTimestampMonotonic"])
    assert 0 < table_up < libvirt_start, show
    assert "table bridge mv6_isolation" in show and "table inet mv6_isolation" in show
    assert "mv6up0" in show and "mv6p0" in show
    wait_route("hv1", "web6-1")
    result = fleet.playbook("verify.yml", extra={"mv6_verify_report_dir": str(tmp_path)})
    assert result["rc"] == 0, result["failures"]
    figure("reboot_window_s", round(time.monotonic() - start, 1))


def test_an_unreachable_host_fails_alone(plan_a):
    """hv3's management link goes down while site.yml runs: hv3 fails, hv1 and hv2
    converge, and hv3's plan entries stay as they were."""
    before = fleet.allocations(fleet.plan(), "hv3")
    cmd_result = {}

    def cut_later() -> None:
        time.sleep(25)
        fleet.fleet("cut", "hv3")
        cmd_result["cut_at"] = time.monotonic()

    cutter = threading.Thread(target=cut_later, daemon=True)
    cutter.start()
    try:
        result = fleet.playbook("site.yml", "-f", "3", log="unreachable.log")  # no --limit
    finally:
        cutter.join(timeout=60)
        fleet.fleet("mend", "hv3")
    assert "cut_at" in cmd_result
    assert result["rc"] != 0
    stats = result["stats"]
    # hv1 fails only the report (run_once there), which names hv3; hv2 not at all.
    assert stats["hv2"]["failures"] == 0 and stats["hv2"]["unreachable"] == 0, stats
    assert stats["hv1"]["failures"] <= 1 and stats["hv1"]["unreachable"] == 0, stats
    assert stats["hv3"]["unreachable"] > 0 or stats["hv3"]["failures"] > 0, stats
    assert set(result["failures"]) <= {"hv3", "hv1", "web6-3"}, result["failures"]
    # The report names hv3 (on hv1, where it runs), and only hv3.
    report = result["failures"].get("hv1", [])
    assert report and all("hv3" in m for m in report), report
    assert fleet.allocations(fleet.plan(), "hv3") == before
    # Once reachable again, hv3 is as the fleet left it.
    fleet.ssh("hv3", "true")
    wait_agent("hv3", "web6-3")
    # When the cut fell inside a role's locked section, hv3's run died holding the network's
    # lock: its release is in an `always` that could not reach hv3, so the lock stays for its
    # lease (1 h), naming its holder, and the next run there waits and fails with "if it is
    # dead, remove /run/mv6/locks/....lock". Whether the cut falls there depends on how fast
    # hv3 ran (the CI run of 2026-12-03: yes, and the teardown below waited 600 s for it). Do
    # what that message tells an operator to do, after checking the lock is the dead run's.
    held = fleet.ssh("hv3", "cat /run/mv6/locks/net-*.lock 2>/dev/null || true").stdout
    if held.strip():
        assert "(mv6.transition." in held, held
        assert fleet.ssh("hv3", "rm -f /run/mv6/locks/net-*.lock").returncode == 0


def test_teardown_of_one_host_while_the_others_run(adoption, plan_a):
    addresses = fleet.guest_addresses(plan_a)
    targets = {name: addresses[name][1] for name in ("web6-1", "web6-3")}
    with fleet.Pinger(targets) as pinger:
        result = fleet.playbook(
            "teardown.yml", "--limit", "hv2", extra={"mv6_teardown_purge_disks": True}
        )
    assert result["rc"] == 0, result["failures"]
    figure("teardown_hv2_s", result["seconds"])
    figure("teardown_pings", {"ok": pinger.ok, "lost": pinger.lost})
    assert all(n > 0 for n in pinger.ok.values()), pinger.ok
    assert pinger.lost == {"web6-1": 0, "web6-3": 0}, pinger.lost
    assert fleet.native_differences("hv2", adoption["before"]["hv2"]) == []
    assert fleet.mv6_objects("hv2") == []


def test_scenario_1_shared_layout_across_two_hosts(adoption):
    """Scenario 1's other layout: hv2 (torn down above) and hv3 (torn down here while hv1
    runs) adopted again with one IPv6 /64 across their uplinks (segment 100), the parallel
    router's gateway address on the same segment."""
    down = fleet.playbook(
        "teardown.yml", "--limit", "hv3", extra={"mv6_teardown_purge_disks": True}
    )
    assert down["rc"] == 0, down["failures"]
    assert fleet.native_differences("hv3", adoption["before"]["hv3"]) == []
    fleet.plan_and_route(inventory=fleet.SITE_A_SHARED, plan_file=fleet.PLAN_A_SHARED, site="a")
    result = fleet.playbook("site.yml", inventory=fleet.SITE_A_SHARED, log="site-a-shared.log")
    assert result["rc"] == 0, result["failures"]
    figure("site_a_shared_converge_s", result["seconds"])
    shared = fleet.plan(fleet.PLAN_A_SHARED)
    assert {e["subnet"] for e in shared["hosts"].values()} == {"2001:db8:700::/64"}
    addresses = fleet.guest_addresses(shared)
    assert set(addresses) == {"shared6-2", "shared6-3"}
    assert_guests_reach_each_other(addresses)
    for src, (host, _address) in addresses.items():
        assert fleet.guest_ping(host, src, "2001:db8:700::1"), f"{src} -> the gateway"
        for dst, what in CROSS_FAMILY:
            assert not fleet.guest_ping(host, src, dst), f"{src} reached {what} ({dst})"
    assert_hosts_take_no_l3_part(("hv2", "hv3"), addresses, "2001:db8:700")


def test_site_b_ipv4_guests_on_an_ipv6_host():
    """Scenario 2 on hv4: IPv6-native host, IPv4-only guest; the router is its gateway."""
    fleet.PLAN_B.parent.mkdir(parents=True, exist_ok=True)
    fleet.plan_and_route(inventory=fleet.SITE_B, plan_file=fleet.PLAN_B, site="b")
    result = fleet.playbook("site.yml", inventory=fleet.SITE_B, log="site-b.log")
    assert result["rc"] == 0, result["failures"]
    figure("site_b_converge_s", result["seconds"])
    # Site b names its table mv6_site_b: site.yml's audit and native-state check passed
    # above by that name (they once read mv6_isolation whatever the role was given).
    assert fleet.ssh("hv4", "nft list table bridge mv6_site_b").returncode == 0
    assert fleet.guest_ping("hv4", "legacy4", "198.51.100.129")
    assert not fleet.guest_ping("hv4", "legacy4", "2001:db8:100::62")
    assert not fleet.guest_ping("hv4", "legacy4", "2001:db8:ff:4::1")
    proc = fleet.ssh("hv4", "python3 /usr/local/lib/mv6-fleet/lab_site.py ping 198.51.100.130")
    assert proc.returncode != 0, "hv4 reached its guest over IPv4"
    again = fleet.playbook("site.yml", inventory=fleet.SITE_B)
    assert again["rc"] == 0 and again["stats"]["hv4"]["changed"] == 0, again["stats"]


def test_critical_services_answered_throughout():
    """Every host's critical native service, probed once a second from the native LAN since
    create. Only hv1 may miss, and only while it rebooted."""
    proc = subprocess.run(
        ["bash", str(fleet.FLEET_SH), "probe", "stop", "whole-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = dict(
        (parts[1], {k: int(v) for k, v in (p.split("=") for p in parts[2:])})
        for parts in (line.split() for line in proc.stdout.splitlines())
    )
    figure("critical_probes", lines)
    window = json.loads((fleet.ephemeral() / "fleet-figures.json").read_text())["reboot_window_s"]
    for host in ("hv2", "hv3", "hv4"):
        assert lines[host]["failed"] == 0, lines
        assert lines[host]["ok"] > 0, lines
    assert lines["hv1"]["failed"] <= window + 5, (lines, window)
