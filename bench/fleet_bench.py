"""The fleet's figures (docs/performance.md, "Fleet"), in one run on the fleet test site.

Needs the fleet up and nothing adopted (``bash scripts/fleet.sh down; bash scripts/fleet.sh
up``). In order, on site a (inventories/fleet, one TCG guest of 256 MiB per host):

  1. one host from scratch: plan, router, ``site.yml --limit hv1``; then teardown of hv1;
  2. three hosts from scratch: ``site.yml`` on hv1..hv3 (forks 3);
  3. a re-run (``changed=0`` on every host is asserted), then ``--check`` (``changed=0``);
  4. teardown of one host (``--limit hv2``), then adopting it again (one more host).

For 1 and 2 it splits the wall time into the guests' boot (the guest role's wait for the
guest agents, which is TCG CPU: the guests compete for this machine's two cores) and
everything else (Ansible, SSH, libvirt, the roles), and prints the ratio of "everything
else" between three hosts and one (target: at most 1.5). It also reports the CPU seconds the
QEMU processes used during each run (read from /proc: the containers' processes are visible
from here).

Run: ``PYTHONPATH=molecule/shared .venv/bin/python bench/fleet_bench.py`` (as root, about
12 minutes). Prints one JSON line per step and a summary.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "shared"))

from mv6mol import fleet

WAIT_TASK = "Wait for the guest agent of each running guest"


def qemu_cpu_seconds() -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("qemu-system"):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def machine_busy_seconds() -> float:
    """CPU seconds this machine spent busy (all cores, everything but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_seconds(log: Path) -> float:
    """Duration of the guest role's wait for the agents, from the JSON callback's output."""
    data = json.loads(log.read_text())
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            if WAIT_TASK in task["task"]["name"]:
                d = task["task"]["duration"]
                start = datetime.datetime.fromisoformat(d["start"].replace("Z", "+00:00"))
                end = datetime.datetime.fromisoformat(d["end"].replace("Z", "+00:00"))
                return (end - start).total_seconds()
    return 0.0


def step(label: str, name: str, *args: str, extra: dict | None = None) -> dict:
    cpu = qemu_cpu_seconds()
    busy = machine_busy_seconds()
    log = f"bench-{label}.json"
    result = fleet.playbook(name, *args, extra=extra, log=log)
    qemu = qemu_cpu_seconds() - cpu
    out = {
        "step": label,
        "rc": result["rc"],
        "wall_s": result["seconds"],
        "qemu_cpu_s": round(qemu, 1),
        # Busy CPU seconds of the whole machine; minus QEMU's, what Ansible, SSH, the
        # modules and libvirt on every host took.
        "machine_busy_s": round(machine_busy_seconds() - busy, 1),
        "other_cpu_s": round(machine_busy_seconds() - busy - qemu, 1),
        "changed": {h: s.get("changed", 0) for h, s in sorted(result["stats"].items())},
    }
    if name == "site.yml" and "--check" not in args:
        try:
            boot = wait_seconds(fleet.ephemeral() / log)
        except ValueError:
            boot = 0.0
        out["guest_boot_wait_s"] = round(boot, 1)
        out["everything_else_s"] = round(result["seconds"] - boot, 1)
        # The same with the guests' CPU taken out as machine time (they share the cores).
        cores = os.cpu_count() or 1
        out["wall_minus_guest_cpu_s"] = round(result["seconds"] - qemu / cores, 1)
    print(json.dumps(out), flush=True)
    if result["rc"] != 0:
        raise SystemExit(f"{label}: failed: {result['failures']}")
    return out


def main() -> None:
    os.environ.setdefault("MV6_FLEET_RUN_DIR", "/var/tmp/mv6-fleet-bench")
    fleet.ephemeral().mkdir(parents=True, exist_ok=True)
    fleet.PLAN_A.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fleet.plan_and_route("--limit", "hv1")
    one = step("one-host", "site.yml", "--limit", "hv1,mv6_guests")
    step("teardown-hv1", "teardown.yml", "--limit", "hv1", extra={"mv6_teardown_purge_disks": True})
    fleet.plan_and_route()
    three = step("three-hosts", "site.yml", "-f", "3")
    rerun = step("re-run", "site.yml", "-f", "3")
    check = step("check", "site.yml", "-f", "3", "--check")
    teardown = step(
        "teardown-hv2", "teardown.yml", "--limit", "hv2", extra={"mv6_teardown_purge_disks": True}
    )
    more = step("adopt-one-more", "site.yml", "--limit", "hv2,mv6_guests")
    assert all(v == 0 for v in rerun["changed"].values()), rerun
    assert all(v == 0 for v in check["changed"].values()), check
    ratio = three["everything_else_s"] / one["everything_else_s"]
    print(
        json.dumps(
            {
                "summary": {
                    "one_host_s": one["wall_s"],
                    "three_hosts_s": three["wall_s"],
                    "everything_else_ratio_three_over_one": round(ratio, 2),
                    "wall_minus_guest_cpu_ratio_three_over_one": round(
                        three["wall_minus_guest_cpu_s"] / one["wall_minus_guest_cpu_s"], 2
                    ),
                    "other_cpu_ratio_three_over_one": round(
                        three["other_cpu_s"] / one["other_cpu_s"], 2
                    ),
                    "guest_boot_wait_one_s": one["guest_boot_wait_s"],
                    "guest_boot_wait_three_s": three["guest_boot_wait_s"],
                    "re_run_s": rerun["wall_s"],
                    "check_s": check["wall_s"],
                    "teardown_one_host_s": teardown["wall_s"],
                    "adopt_one_more_s": more["wall_s"],
                    "bench_total_s": round(time.monotonic() - started, 1),
                }
            }
        )
    )


if __name__ == "__main__":
    main()
