"""Benchmark of the MV6 address planner (plugins/module_utils/_plan.py).

One run prints, as medians over --repeat runs (wall clock and process CPU time):
  1. a fresh plan for --hosts hypervisors x --guests guests (target: <= 1.0 s);
  2. adding one hypervisor to that plan, (a) with only the new host in the play (--limit, the
     incremental-adoption path) and (b) with the whole fleet in the play (target: <= 0.1 s,
     0 allocations moved);
  3. the plan files of the fleet of part 1 on disk: the round trip of adopting one host (read
     the whole plan, plan the new host, write what changed; target: <= 5 s for 10,000 x 64)
     and one host's entry read from its own file;
  4. the baseline: the same per-host subnet and per-guest address plan for --baseline-hosts
     hosts, written the way playbooks do it today (ansible.utils.ipsubnet / ipmath in a
     set_fact loop), really run with ansible-playbook, against the planner on the same input
     (target: planner >= 100x faster). The ratio is printed.

Usage: .venv/bin/python bench/plan_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _plan  # noqa: E402

PARALLEL = {"prefix": "2001:db8:600::/40"}  # 65,536 /64 slices: room for 10,000 hosts
BASELINE_PARALLEL = {"prefix": "2001:db8:600::/48", "address_mode": "sequential"}


def fleet(hosts: int, guests: int, start: int = 0) -> dict:
    """hvNNNNN -> guests named web<j>-hv<NNNNN>: unique names, as a real fleet has."""
    return {
        f"hv{i:05d}": [
            {
                "name": f"web{j:02d}-hv{i:05d}",
                "vcpus": 1,
                "memory_mib": 512,
                "image": "debian12",
                "persistence": "persistent",
            }
            for j in range(guests)
        ]
        for i in range(start, start + hosts)
    }


def timed(func, repeat: int):
    """(median wall s, median CPU s, last result) of func() over repeat runs."""
    walls, cpus, result = [], [], None
    for _run in range(repeat):
        result = None
        gc.collect()
        w0, c0 = time.perf_counter(), time.process_time()
        result = func()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus), result


def moved_allocations(before: dict, after: dict) -> int:
    keys = ("slot", "mac", "address", "link_local", "port")
    moved = 0
    for h, e in before["hosts"].items():
        f = after["hosts"].get(h)
        if f is None or (f["slot"], f["subnet"]) != (e["slot"], e["subnet"]):
            moved += 1 + len(e["guests"])
            continue
        fg = f["guests"]
        for n, x in e["guests"].items():
            y = fg.get(n)
            if y is None or any(x.get(k) != y.get(k) for k in keys):
                moved += 1
    return moved


def verdict(value: float, limit: float, above: bool = False) -> str:
    ok = value >= limit if above else value <= limit
    return "ok" if ok else "MISSED"


BASELINE_PLAYBOOK = """\
- name: Per-host parallel subnet and guest addresses, the ansible.utils way
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Cut this host's subnet from the site prefix
      ansible.builtin.set_fact:
        mv6_subnet: >-
          {{ mv6_parallel.prefix
             | ansible.utils.ipsubnet(64, groups['fleet'].index(inventory_hostname)) }}

    - name: Give every guest the next address of the subnet
      ansible.builtin.set_fact:
        mv6_addresses: >-
          {{ mv6_addresses | default({})
             | combine({item.name: mv6_subnet | ansible.utils.ipmath(idx + 2)}) }}
      loop: "{{ mv6_guests }}"
      loop_control:
        index_var: idx
        label: "{{ item.name }}"

- name: Collect the plan
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Write what the fleet got
      ansible.builtin.copy:
        dest: "{{ playbook_dir }}/baseline_plan.json"
        content: >-
          {{ dict(groups['fleet'] | zip(groups['fleet'] | map('extract', hostvars)
             | map(attribute='mv6_addresses'))) | to_json }}
        mode: "0644"
"""

EMPTY_PLAYBOOK = """\
- name: Nothing (ansible-playbook start-up and the host loop only)
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Nothing
      ansible.builtin.meta: noop
"""

PLANNER_PLAYBOOK = """\
- name: The same plan with mv6.transition.address_plan
  hosts: fleet
  gather_facts: false
  tasks:
    - name: Plan
      mv6.transition.address_plan:
        plan_file: "{{ playbook_dir }}/mv6_plan.yml"
      run_once: true
"""


def write_inventory(directory: Path, guests_by_host: dict) -> None:
    import json

    lines = ["all:", "  vars:", "    ansible_connection: local"]
    lines.append('    ansible_python_interpreter: "{{ ansible_playbook_python }}"')
    lines.append("    mv6_native_family: ipv4")
    lines.append(f"    mv6_parallel: {json.dumps(BASELINE_PARALLEL)}")
    lines += ["  children:", "    fleet:", "      hosts:"]
    for host, guests in guests_by_host.items():
        lines.append(f"        {host}:")
        lines.append(f"          mv6_guests: {json.dumps(guests)}")
    (directory / "hosts.yml").write_text("\n".join(lines) + "\n")


def run_playbook(directory: Path, name: str, text: str) -> float:
    (directory / name).write_text(text)
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(ROOT / "ansible.cfg")
    env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.null"
    env["ANSIBLE_FORKS"] = "10"
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    cmd = ["ansible-playbook", "-i", str(directory / "hosts.yml"), str(directory / name)]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, env=env, cwd=directory, capture_output=True, text=True, timeout=1800, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def baseline(hosts: int, guests: int, repeat: int) -> None:
    import json

    guests_by_host = fleet(hosts, guests)
    directory = Path(tempfile.mkdtemp(prefix="mv6-plan-bench-"))
    try:
        write_inventory(directory, guests_by_host)
        base_walls, empty_walls, planner_pb_walls = [], [], []
        for _run in range(repeat):
            base_walls.append(run_playbook(directory, "baseline.yml", BASELINE_PLAYBOOK))
            empty_walls.append(run_playbook(directory, "empty.yml", EMPTY_PLAYBOOK))
            (directory / "mv6_plan.yml").unlink(missing_ok=True)
            planner_pb_walls.append(run_playbook(directory, "planner.yml", PLANNER_PLAYBOOK))
        wall, cpu, plan = timed(
            lambda: _plan.build_plan("ipv4", BASELINE_PARALLEL, guests_by_host), max(repeat, 5)
        )
        # The two plans must agree, or the comparison means nothing.
        got = json.loads((directory / "baseline_plan.json").read_text())
        ours = {
            h: {n: g["address"] for n, g in e["guests"].items()} for h, e in plan["hosts"].items()
        }
        same = got == ours
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    b, e, p = (statistics.median(x) for x in (base_walls, empty_walls, planner_pb_walls))
    n = hosts * guests
    print(f"\n4. baseline: {hosts} hosts x {guests} guests ({n} addresses), sequential /64s")
    print(f"   ansible-playbook, ipsubnet + ipmath set_fact loop : {b:8.2f} s wall")
    print(f"   ansible-playbook, same inventory, one noop task   : {e:8.2f} s wall")
    print(f"   ansible-playbook, mv6.transition.address_plan     : {p:8.2f} s wall")
    print(f"   planner core (build_plan), same input             : {wall:8.4f} s wall, ", end="")
    print(f"{cpu:.4f} s CPU")
    print(f"   both give the same subnets and addresses          : {same}")
    ratio = b / wall
    print(f"   ratio baseline playbook / planner core            : {ratio:8.0f}x  ", end="")
    print(f"[{verdict(ratio, 100, True)} >= 100x]")
    print(f"   ratio (baseline - start-up) / planner core        : {(b - e) / wall:8.0f}x")
    print(f"   ratio baseline playbook / address_plan playbook   : {b / p:8.1f}x")


def plan_files(fresh: dict, args, new_host: dict) -> None:
    """Part 3: the plan files (plan v2: a site file and one JSON file per host) of the fleet
    of part 1, on disk in a temporary directory: the round trip of adopting one host (read
    and check the whole plan, plan the new host, write what changed) and one host's entry
    read from its own file."""
    directory = Path(tempfile.mkdtemp(prefix="mv6-plan-files-", dir="/var/tmp"))
    path = str(directory / "mv6_plan.yml")
    try:
        w0 = time.perf_counter()
        files = _plan.dump_plan(fresh, path)
        _plan.write_plan(path, {}, files)
        first_write = time.perf_counter() - w0
        size = sum(len(t) for t in files.values())
        del files
        rounds, reads = [], []
        for _run in range(args.repeat):
            gc.collect()
            w0 = time.perf_counter()
            previous, before = _plan.read_plan(path)
            read_wall = time.perf_counter() - w0
            after_plan = _plan.build_plan("ipv4", PARALLEL, new_host, previous)
            after = _plan.dump_plan(after_plan, path, previous, before)
            written = _plan.write_plan(path, before, after)
            rounds.append(time.perf_counter() - w0)
            reads.append(read_wall)
            # back to the fleet of part 1 for the next round: the new host's file goes
            _plan.write_plan(path, after, before)
        assert len(written) == 2, written  # the new host's file and the site file
        one, _cpu, entry = timed(lambda: _plan.read_host_entry(path, "hv00042"), args.repeat)
        assert entry == fresh["hosts"]["hv00042"]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    n = args.hosts * args.guests
    wall = statistics.median(rounds)
    print(f"\n3. plan files, {args.hosts} hosts x {args.guests} guests ({n} guests, ", end="")
    print(f"{size / 1e6:.0f} MB in {args.hosts + 1} files)")
    print(f"   first write of every file             : {first_write:8.2f} s wall")
    print(f"   round trip: read, add 1 host, write   : {wall:8.2f} s wall ", end="")
    print(f"(read and check {statistics.median(reads):.2f} s)  [{verdict(wall, 5.0)} <= 5 s]")
    print(f"   one host's entry, from its own file   : {one * 1000:8.2f} ms wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10_000)
    parser.add_argument("--guests", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--baseline-hosts", type=int, default=500)
    parser.add_argument("--baseline-guests", type=int, default=8)
    parser.add_argument("--baseline-repeat", type=int, default=3)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke test")
    args = parser.parse_args()
    if args.quick:
        args.hosts, args.guests, args.repeat = 200, 8, 3
        args.baseline_hosts, args.baseline_guests, args.baseline_repeat = 20, 2, 1

    print(
        f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.2f} "
        f"({os.cpu_count()} CPUs); medians of {args.repeat} runs"
    )
    guests_by_host = fleet(args.hosts, args.guests)
    n = args.hosts * args.guests
    wall, cpu, fresh = timed(
        lambda: _plan.build_plan("ipv4", PARALLEL, guests_by_host), args.repeat
    )
    print(f"\n1. fresh plan, {args.hosts} hosts x {args.guests} guests ({n} guests)")
    print(f"   {wall:.3f} s wall, {cpu:.3f} s CPU  [{verdict(wall, 1.0)} <= 1.0 s wall]")

    new_host = fleet(1, args.guests, start=args.hosts)
    wall, cpu, limited = timed(
        lambda: _plan.build_plan("ipv4", PARALLEL, new_host, fresh), args.repeat
    )
    moved = moved_allocations(fresh, limited)
    print("\n2a. add 1 host, only the new host in the play (--limit)")
    print(
        f"   {wall:.3f} s wall, {cpu:.3f} s CPU, {moved} allocations moved  "
        f"[{verdict(wall, 0.1)} <= 0.1 s wall, {'ok' if moved == 0 else 'MISSED'} 0 moved]"
    )
    everyone = {**guests_by_host, **new_host}
    wall, cpu, whole = timed(
        lambda: _plan.build_plan("ipv4", PARALLEL, everyone, fresh), args.repeat
    )
    moved = moved_allocations(fresh, whole)
    print("2b. add 1 host, the whole fleet in the play (every guest validated again)")
    print(
        f"   {wall:.3f} s wall, {cpu:.3f} s CPU, {moved} allocations moved  "
        f"[{verdict(wall, 0.1)} <= 0.1 s wall, {'ok' if moved == 0 else 'MISSED'} 0 moved]"
    )

    plan_files(fresh, args, new_host)

    if not args.skip_baseline:
        baseline(args.baseline_hosts, args.baseline_guests, args.baseline_repeat)


if __name__ == "__main__":
    main()
