"""iperf3 throughput between two namespace "guests" over a bridge built by roles/hypervisor,
with the isolation table loaded and without it.

Run as root from the repository: ``.venv/bin/python bench/bridge_bench.py [--seconds 5]
[--rounds 10]``. Builds its own bridge ``t-hvbb0`` (ports ``t-hvb0``/``t-hvb1``, namespaces
``t-hv-b0``/``t-hv-b1``, table ``t_hv_bench``) with the role, alternates rounds with and
without the table (the keeper stopped and the ports enabled by hand), prints JSON with the
spread, and removes everything again (also on failure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from conftest import NetnsLab, run_playbook, sh, with_site

BRIDGE, TABLE = "t-hvbb0", "t_hv_bench"
PORTS = ("t-hvb0", "t-hvb1")
NS = ("t-hv-b0", "t-hv-b1")
MAC = ("02:6d:76:00:02:01", "02:6d:76:00:02:02")
ADDR = ("2001:db8:6:4::10", "2001:db8:6:4::11")

PLAYBOOK = """\
- name: Hypervisor role for the bridge benchmark
  hosts: localhost
  gather_facts: false
  roles:
    - role: mv6.transition.hypervisor
"""


def iperf(seconds: int) -> float:
    server = subprocess.Popen(
        ["ip", "netns", "exec", NS[1], "iperf3", "-s", "-1", "-B", ADDR[1]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        out = sh(
            "ip", "netns", "exec", NS[0], "iperf3", "-c", ADDR[1], "-t", str(seconds), "-J",
            timeout=seconds + 30,
        ).stdout  # fmt: skip
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def spread(values: list[float]) -> dict:
    """Minimum, quartiles and maximum (Gbit/s)."""
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "min": round(min(values), 2),
        "q1": round(q[0], 2),
        "q3": round(q[2], 2),
        "max": round(max(values), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="t-hv-bench-"))
    playbook = work / "hv.yml"
    playbook.write_text(PLAYBOOK)
    nft_file = work / f"{TABLE}.nft"
    guests = {
        f"bench{i}": {
            "released": False,
            "mac": MAC[i],
            "address": ADDR[i],
            "port": PORTS[i],
            "router": False,
        }
        for i in range(2)
    }
    extra = with_site(
        {
            "mv6_parallel": {"bridge": BRIDGE, "uplink": None},
            "mv6_plan": {"parallel_family": "ipv6", "hosts": {"localhost": {"guests": guests}}},
            "mv6_hypervisor_nft_table": TABLE,
            "mv6_hypervisor_nft_file": str(nft_file),
            "mv6_hypervisor_accel": "tcg",
            "mv6_hypervisor_install_packages": False,
            "mv6_hypervisor_persist": "none",
            "mv6_hypervisor_port_pattern": "t-hvb*",
        }
    )
    lab = NetnsLab()
    results = {"with_table": [], "without_table": []}
    try:
        for i in range(2):
            lab.add_ns(NS[i])
            lab.add_veth(PORTS[i], f"{PORTS[i]}x", NS[i], "eth0", MAC[i])
            sh("ip", "-n", NS[i], "addr", "add", f"{ADDR[i]}/64", "dev", "eth0", "nodad")
            sh("ip", "-n", NS[i], "link", "set", "eth0", "up")
        run = run_playbook(playbook, extra)
        if run["rc"] != 0:
            print(json.dumps(run)[-3000:], file=sys.stderr)
            return 1
        for port in PORTS:
            sh("ip", "link", "set", port, "master", BRIDGE)
            sh("ip", "link", "set", port, "up")
        iperf(1)  # warm-up: neighbour discovery, caches
        keeper = f"/usr/local/sbin/{TABLE.replace('_', '-')}-keeper"
        for _round in range(args.rounds):
            results["with_table"].append(iperf(args.seconds))
            # The keeper holds the tables (owner flag): stopping it removes them and disables
            # the ports (fail closed), which this bench then enables by hand.
            sh(keeper, "stop", "--table", TABLE)
            for port in PORTS:
                sh("bridge", "link", "set", "dev", port, "state", "3")
            results["without_table"].append(iperf(args.seconds))
            sh(keeper, "start", "--table", TABLE, "--file", str(nft_file), "--bridge", BRIDGE)
    finally:
        run_playbook(playbook, {**extra, "mv6_hypervisor_state": "absent"})
        lab.cleanup()
        sh("ip", "link", "del", BRIDGE, check=False)
        sh("nft", "delete", "table", "bridge", TABLE, check=False)
    with_t = statistics.median(results["with_table"])
    without_t = statistics.median(results["without_table"])
    print(
        json.dumps(
            {
                "gbit_per_s": results,
                "median_with_table": round(with_t, 2),
                "median_without_table": round(without_t, 2),
                "spread_with_table": spread(results["with_table"]),
                "spread_without_table": spread(results["without_table"]),
                "ratio_with_over_without": round(with_t / without_t, 3),
                "seconds_per_run": args.seconds,
                "rounds": args.rounds,
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
