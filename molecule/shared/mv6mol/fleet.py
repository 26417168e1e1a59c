"""The fleet scenario's helpers: the fleet test site (scripts/fleet.sh), playbook runs over
SSH against its inventory, and reads of a host that change nothing on it.

    python -m mv6mol.fleet adopt     prepare: adopt hv1, then hv2, one at a time, recording
                                     what the not-yet-adopted hosts looked like (JSON in the
                                     scenario's ephemeral directory); tests assert on it

Reads of a host that is not adopted must leave nothing on it: the native state is read
with mv6.transition.native_state in check mode (which returns the state and writes no
record), and compared with op=compare and a reference (which writes nothing either).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from mv6mol import planfile
from mv6mol.agent import Guest

PROJECT = Path(__file__).resolve().parents[3]
FLEET_SH = PROJECT / "scripts" / "fleet.sh"
FLEET_SITE = PROJECT / "scripts" / "fleet_site.py"
LAB_SITE = (PROJECT / "scripts" / "lab_site.py").read_bytes()
STATE = Path("/var/lib/mv6-fleet")
KEY = STATE / "ssh" / "id_ed25519"
SSH = STATE / "bin" / "ssh"  # the controller's client, in the management namespace
SITE_A = PROJECT / "inventories" / "fleet"
SITE_B = PROJECT / "inventories" / "fleet_v4"
SITE_A_SHARED = PROJECT / "inventories" / "fleet_shared"
PLAN_A = STATE / "plans" / "site-a.yml"
PLAN_A_SHARED = STATE / "plans" / "site-a-shared.yml"
PLAN_B = STATE / "plans" / "site-b.yml"
MGMT = {
    "hv1": "203.0.113.2",
    "hv2": "203.0.113.6",
    "hv3": "203.0.113.10",
    "hv4": "2001:db8:ff:4::2",
}
# What MV6 leaves on a host it adopted; a host that was not adopted has none of it.
MV6_OBJECTS = (
    "ls -d /var/lib/mv6 /etc/nftables.d/mv6* /etc/sysctl.d/60-mv6* /etc/systemd/network/60-mv6* "
    "/etc/systemd/system/mv6-* /etc/network/interfaces.d/mv6* 2>/dev/null; "
    "ip -o link show type bridge | grep -o 'mv6br[0-9]*'; "
    "nft list tables | grep mv6; virsh -q -c qemu:///system list --all --name; true"
)


def ephemeral() -> Path:
    """Where the scenario keeps its records and logs. Not Molecule's ephemeral directory,
    which its destroy step empties: a failed run's logs must survive it."""
    return Path(os.environ.get("MV6_FLEET_RUN_DIR", "/var/tmp/mv6-fleet-run"))


def figure(name: str, value) -> None:
    """Record a figure the fleet measured in fleet-figures.json of the run directory."""
    path = ephemeral() / "fleet-figures.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = value
    path.write_text(json.dumps(data, indent=1, sort_keys=True))


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        {
            "PATH": f"{PROJECT / '.venv' / 'bin'}:{out.get('PATH', '')}:/usr/sbin:/sbin",
            "ANSIBLE_CONFIG": out.get("ANSIBLE_CONFIG") or str(PROJECT / "ansible.cfg"),
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    return out


def fleet(*argv: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["bash", str(FLEET_SH), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fleet.sh {' '.join(argv)}: exit {proc.returncode}: {proc.stderr}")
    return proc


def ssh(host: str, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return fleet("ssh", host, command, timeout=timeout, check=False)


def router(plan: Path, site: str) -> str:
    proc = subprocess.run(
        [
            str(PROJECT / ".venv" / "bin" / "python"),
            str(FLEET_SITE),
            "router",
            str(plan),
            site,
            "mv6f-rtr",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env(),
    )
    assert proc.returncode == 0, f"router: {proc.stdout} {proc.stderr}"
    return proc.stdout


def playbook(
    name: str,
    *args: str,
    inventory: Path = SITE_A,
    extra: dict | None = None,
    timeout: float = 1200,
    log: str | None = None,
) -> dict:
    """Run playbooks/NAME against a fleet inventory with the JSON callback.

    Returns {"rc", "stats", "failures": {host: [task: msg]}, "seconds"}."""
    cmd = ["ansible-playbook", "-i", str(inventory), str(PROJECT / "playbooks" / name), *args]
    if extra:
        cmd += ["-e", json.dumps(extra)]
    run_env = env()
    run_env.update(
        {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    )
    start = time.monotonic()
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=run_env, check=False
    )
    seconds = time.monotonic() - start
    if log:
        (ephemeral() / log).write_text(proc.stdout)
        (ephemeral() / f"{log}.stderr").write_text(proc.stderr)
    try:
        data = json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError(
            f"{name}: rc={proc.returncode}: {proc.stdout[-3000:]} {proc.stderr[-3000:]}"
        ) from e
    failures: dict[str, list[str]] = {}
    for play in data.get("plays", []):
        for task in play.get("tasks", []):
            for host, res in task.get("hosts", {}).items():
                if (res.get("failed") or res.get("unreachable")) and not res.get("ignore_errors"):
                    failures.setdefault(host, []).append(
                        f"{task['task']['name']}: {res.get('msg')}"
                    )
    return {
        "rc": proc.returncode,
        "stats": data.get("stats", {}),
        "failures": failures,
        "seconds": round(seconds, 1),
    }


def module(
    host: str, name: str, args: dict, *, check: bool = False, inventory: Path = SITE_A
) -> dict:
    cmd = ["ansible", host, "-i", str(inventory), "-m", name, "-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    run_env = env()
    run_env.update(
        {"ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1"}
    )
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=300, env=run_env, check=False
    )
    try:
        result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError) as e:
        raise AssertionError(
            f"ansible -m {name} {host}: {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
        ) from e
    if result.get("failed") or result.get("unreachable"):
        raise AssertionError(f"{name} on {host}: {result.get('msg')}")
    return result


def native_state(host: str, inventory: Path = SITE_A) -> dict:
    """The host's native state, read without writing a record (check mode)."""
    return module(
        host,
        "mv6.transition.native_state",
        {"op": "record", "label": "fleet"},
        check=True,
        inventory=inventory,
    )["native_state"]


def native_differences(host: str, reference: dict, inventory: Path = SITE_A) -> list[str]:
    return module(
        host,
        "mv6.transition.native_state",
        {"op": "compare", "reference": reference},
        inventory=inventory,
    )["differences"]


def mv6_objects(host: str) -> list[str]:
    proc = ssh(host, MV6_OBJECTS)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def plan(path: Path = PLAN_A) -> dict:
    return planfile.read(path)


def allocations(plan_data: dict, host: str) -> dict:
    """What must never move for a host: its slot and subnet and its guests' entries."""
    entry = plan_data["hosts"][host]
    return {"slot": entry["slot"], "subnet": entry["subnet"], "guests": entry["guests"]}


def uri(host: str) -> str:
    addr = MGMT[host]
    addr = f"[{addr}]" if ":" in addr else addr
    return f"qemu+ssh://root@{addr}/system?keyfile={KEY}&command={SSH}&no_tty=1"


def guest(host: str, name: str) -> Guest:
    return Guest(name, uri(host))


def guest_ping(host: str, name: str, dst: str) -> bool:
    """One ICMP/ICMPv6 echo from inside a guest (lab_site.py's raw-socket ping)."""
    return guest(host, name).run(["python3", "-", "ping", dst], stdin=LAB_SITE, timeout=30).rc == 0


def guest_addresses(plan_data: dict) -> dict[str, tuple[str, str]]:
    """{guest: (hypervisor, address)} of every guest that holds a slot."""
    out = {}
    for host, entry in plan_data["hosts"].items():
        for name, g in entry["guests"].items():
            if not g.get("released"):
                out[name] = (host, g["address"])
    return out


class Pinger:
    """Pings targets from the parallel router once a second until stopped; counts losses."""

    def __init__(self, targets: dict[str, str]) -> None:
        self.targets = targets
        self.ok: dict[str, int] = dict.fromkeys(targets, 0)
        self.lost: dict[str, int] = dict.fromkeys(targets, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, addr in self.targets.items():
                proc = subprocess.run(
                    ["ip", "netns", "exec", "mv6f-rtr", sys.executable, "-", "ping", addr],
                    input=LAB_SITE,
                    capture_output=True,
                    timeout=10,
                    check=False,
                )
                if proc.returncode == 0:
                    self.ok[name] += 1
                else:
                    self.lost[name] += 1
            self._stop.wait(1)

    def __enter__(self) -> Pinger:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def plan_and_route(
    *limit: str, inventory: Path = SITE_A, plan_file: Path = PLAN_A, site: str = "a"
) -> dict:
    """Plan (playbooks/plan.yml changes no host), then configure the parallel router from the
    plan, as a site's network team would before the hosts are adopted."""
    result = playbook("plan.yml", *limit, inventory=inventory)
    assert result["rc"] == 0, result["failures"]
    router(plan_file, site)
    return result


def adopt() -> int:
    """Prepare: adopt hv1, then hv2, recording what the others looked like meanwhile; then
    plan the whole of site a so that the router serves hv3 before converge adopts it."""
    out = ephemeral()
    out.mkdir(parents=True, exist_ok=True)
    PLAN_A.parent.mkdir(parents=True, exist_ok=True)
    record: dict = {"before": {}, "objects_before": {}, "seconds": {}}
    for host in ("hv1", "hv2", "hv3"):
        record["before"][host] = native_state(host)
        record["objects_before"][host] = mv6_objects(host)
    plan_and_route("--limit", "hv1")
    first = playbook("site.yml", "--limit", "hv1,mv6_guests", log="adopt-hv1.log")
    record["adopt_hv1"] = first
    record["plan_after_hv1"] = plan() if PLAN_A.exists() else None
    record["after_hv1"] = {
        h: {"differences": native_differences(h, record["before"][h]), "objects": mv6_objects(h)}
        for h in ("hv2", "hv3")
    }
    plan_and_route("--limit", "hv2")
    second = playbook("site.yml", "--limit", "hv2,mv6_guests", log="adopt-hv2.log")
    record["adopt_hv2"] = second
    record["plan_after_hv2"] = plan() if PLAN_A.exists() else None
    record["after_hv2"] = {
        "hv3": {
            "differences": native_differences("hv3", record["before"]["hv3"]),
            "objects": mv6_objects("hv3"),
        }
    }
    plan_and_route()
    (out / "adoption.json").write_text(json.dumps(record, indent=1, sort_keys=True))
    print(
        json.dumps(
            {
                "hv1": first["rc"],
                "hv2": second["rc"],
                "seconds": {"hv1": first["seconds"], "hv2": second["seconds"]},
            }
        )
    )
    return 0 if first["rc"] == 0 and second["rc"] == 0 else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["adopt"]:
        sys.exit(adopt())
    print(__doc__, file=sys.stderr)
    sys.exit(2)
