"""The fleet test site's own pieces (scripts/fleet.sh): the image server and the router.

  serve-images DIR PORT ADDR...   serve DIR read-only over HTTP on ADDR:PORT (each address
                                  a management link of the controller)
  router PLAN SITE NS             configure the parallel router in namespace NS from a plan
                                  file: an address in every host's parallel subnet on the
                                  host's VLAN (per_host) or on the untagged segment (shared),
                                  router advertisements for IPv6, forwarding between them,
                                  and the parallel service (TCP 8080) on each address
  router-down NS                  remove what `router` set up

The router reads the plan as a site's network team would: it is configured from the plan,
never the other way round. Run `router` with the venv's Python (it reads YAML).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import ipaddress
import os
import signal
import socketserver
import subprocess
import sys
import threading
from pathlib import Path

PARALLEL_PORT = 8080
STATE = Path(os.environ.get("MV6_FLEET_STATE", "/var/lib/mv6-fleet"))
LAB_SITE = Path(__file__).with_name("lab_site.py")


def serve_images(directory: str, port: str, addrs: list[str]) -> None:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    servers = []
    for addr in addrs:
        family = socketserver.socket.AF_INET6 if ":" in addr else socketserver.socket.AF_INET

        class Server(http.server.ThreadingHTTPServer):
            address_family = family
            allow_reuse_address = True

        server = Server((addr, int(port)), handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    signal.sigwait({signal.SIGTERM, signal.SIGINT})


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


def host_segment(host: str, site: str, shared: bool) -> int:
    """The parallel segment of a host's uplink, as scripts/fleet.sh wires the switch."""
    if site == "b":
        return 200
    if shared:
        return 100
    return 100 + int(host.removeprefix("hv"))


def router_addresses(plan: dict, site: str) -> dict[str, set[str]]:
    """{router interface: {address/len}} for a plan."""
    wanted: dict[str, set[str]] = {}
    shared = plan["site"]["layout"] == "shared"
    for host, entry in sorted(plan.get("hosts", {}).items()):
        if entry.get("released"):
            continue
        subnet = ipaddress.ip_network(entry["subnet"])
        gateway = entry.get("gateway") or str(subnet.network_address + 1)
        ifname = f"r{host_segment(host, site, shared)}"
        wanted.setdefault(ifname, set()).add(f"{gateway}/{subnet.prefixlen}")
    return wanted


def router(plan_file: str, site: str, ns: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "shared"))
    from mv6mol import planfile

    plan = planfile.read(plan_file)
    wanted = router_addresses(plan, site)
    router_down(ns)
    run_dir = STATE / "router"
    run_dir.mkdir(parents=True, exist_ok=True)
    radvd = []
    for ifname, addrs in sorted(wanted.items()):
        for addr in sorted(addrs):
            ip = ipaddress.ip_interface(addr)
            if ip.version == 6:
                sh(
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    "-w",
                    f"net.ipv6.conf.{ifname}.accept_ra=0",
                )
                sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname, "nodad")
                radvd.append((ifname, str(ip.network)))
            else:
                sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
            log = run_dir / f"service-{ifname}-{ip.ip}.log"
            with open(log, "w") as out:
                proc = subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        ns,
                        sys.executable,
                        str(LAB_SITE),
                        "serve",
                        str(ip.ip),
                        str(PARALLEL_PORT),
                        f"parallel-{ip.ip}",
                    ],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            (run_dir / f"service-{ifname}-{ip.ip}.pid").write_text(f"{proc.pid}\n")
    if radvd:
        conf = run_dir / "radvd.conf"
        conf.write_text(
            "".join(
                f"interface {ifname} {{\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n"
                f"  MaxRtrAdvInterval 10;\n"
                f"  prefix {prefix} {{ AdvOnLink on; AdvAutonomous on; }};\n}};\n"
                for ifname, prefix in radvd
            )
        )
        sh(
            "ip",
            "netns",
            "exec",
            ns,
            "radvd",
            "-C",
            str(conf),
            "-p",
            str(run_dir / "radvd.pid"),
            "-m",
            "logfile",
            "-l",
            str(run_dir / "radvd.log"),
        )
    for ifname, addrs in sorted(wanted.items()):
        print(f"router {ifname}: {' '.join(sorted(addrs))}")


def router_down(ns: str) -> None:
    run_dir = STATE / "router"
    for pidfile in sorted(run_dir.glob("*.pid")) if run_dir.is_dir() else []:
        # The services lead a session of their own (killpg); radvd forked away from it.
        try:
            pid = int(pidfile.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):  # radvd removes its own at SIGTERM
            continue
        if pid <= 0:
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        pidfile.unlink(missing_ok=True)
    links = sh("ip", "-n", ns, "-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        name = line.split(": ")[1].split("@")[0]
        if name[:1] == "r" and name[1:].isdigit():
            sh("ip", "-n", ns, "addr", "flush", "dev", name, "scope", "global", check=False)


def main(argv: list[str]) -> int:
    # sysctl and radvd live in sbin, which a non-login environment (Ansible's) may lack.
    path = os.environ.get("PATH", "").split(":")
    os.environ["PATH"] = ":".join(path + [d for d in ("/usr/sbin", "/sbin") if d not in path])
    if len(argv) >= 4 and argv[1] == "serve-images":
        serve_images(argv[2], argv[3], argv[4:])
        return 0
    if len(argv) == 5 and argv[1] == "router":
        router(argv[2], argv[3], argv[4])
        return 0
    if len(argv) == 3 and argv[1] == "router-down":
        router_down(argv[2])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
