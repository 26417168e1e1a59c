"""The simulated site of one scenario: namespaces, veth pairs, services, native snapshots.

A scenario describes its site in ``mol_site`` (molecule.yml); create.yml writes it to
``$MOLECULE_EPHEMERAL_DIRECTORY/site.json`` and runs ``python -m mv6mol.site up``.

Shape of the site (names come from site.json, all prefixed ``t-mol``)::

    native namespace  [peer_if]==veth==[host_if]  host (native address, a native route)
    parallel namespace [peer_if]==veth==[host_if] == uplink port of the parallel bridge

The host end of the parallel veth is the bridge's uplink: the hypervisor role enslaves it,
it never gets an address. ``down`` removes everything ``up`` made and tolerates any partial
state, so destroy can always run it (also after a failed create).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

# Links and nft tables of other pieces' tests that may come and go while a scenario runs on a
# shared development machine (t-<piece>-..., t_<piece>_...). Never ours (t-mol...).
DEFAULT_IGNORE = r"^t[-_](?!mol)"


def run(*argv: str, check: bool = True, netns: str | None = None, timeout: float = 30) -> str:
    """Run a command, return stdout; raise with stderr on failure when ``check``."""
    cmd = list(argv)
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: rc={proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ephemeral_dir() -> Path:
    return Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"])


def load_site(path: str | Path | None = None) -> dict:
    path = Path(path) if path else ephemeral_dir() / "site.json"
    return json.loads(path.read_text())


def link_exists(name: str, netns: str | None = None) -> bool:
    cmd = ["ip", "link", "show", "dev", name]
    if netns:
        cmd = ["ip", "-n", netns, "link", "show", "dev", name]
    return subprocess.run(cmd, capture_output=True, check=False).returncode == 0


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def family_of(addr: str) -> str:
    return "ipv6" if ":" in addr else "ipv4"


def bare(addr: str) -> str:
    """Address without its prefix length."""
    return addr.split("/")[0]


# --- up ------------------------------------------------------------------------------------


def _veth(ns: str, host_if: str, peer_if: str) -> None:
    if not netns_exists(ns):
        run("ip", "netns", "add", ns)
    run("ip", "-n", ns, "link", "set", "lo", "up")
    if not link_exists(peer_if, ns):
        if link_exists(host_if):
            run("ip", "link", "del", host_if)
        run("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if, "netns", ns)
    run("ip", "-n", ns, "link", "set", peer_if, "up")


def _addr(dev: str, addr: str, ns: str | None = None) -> None:
    pre = ["ip", "-n", ns] if ns else ["ip"]
    have = run(*pre, "-o", "addr", "show", "dev", dev)
    if f" {addr} " in have:
        return
    extra = ["nodad"] if family_of(addr) == "ipv6" else []
    run(*pre, "addr", "add", addr, "dev", dev, *extra)


def _start_service(site: dict, key: str, ns: str | None, addr: str, port: int) -> None:
    """A TCP service that answers with a fixed line: the 'application' a peer runs."""
    pidfile = ephemeral_dir() / f"service-{key}.pid"
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pidfile.read_text()), 0)
            return
    code = (
        "import socket,sys\n"
        f"fam=socket.AF_INET6 if ':' in {addr!r} else socket.AF_INET\n"
        "s=socket.socket(fam,socket.SOCK_STREAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(({addr!r},{port}))\n"
        "s.listen(16)\n"
        "while True:\n"
        "    c,a=s.accept()\n"
        f"    c.sendall(b'mv6-mol {key} '+a[0].encode()+b'\\n')\n"
        "    c.close()\n"
    )
    cmd = [sys.executable, "-c", code]
    if ns:
        cmd = ["ip", "netns", "exec", ns, *cmd]
    log = open(ephemeral_dir() / f"service-{key}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(str(proc.pid))
    # Wait until it listens (an ipv6 nodad address is usable at once).
    for _try in range(50):
        if proc.poll() is not None:
            raise RuntimeError(f"service {key} exited: see {log.name}")
        probe = ["ss", "-Hltn", f"sport = :{port}"]
        if ns:
            probe = ["ip", "netns", "exec", ns, *probe]
        if subprocess.run(probe, capture_output=True, text=True, check=False).stdout.strip():
            return
        time.sleep(0.1)
    raise RuntimeError(f"service {key} does not listen on {addr} port {port}")


def up(site: dict) -> None:
    nat = site["native"]
    _veth(nat["ns"], nat["host_if"], nat["peer_if"])
    run("ip", "link", "set", nat["host_if"], "up")
    _addr(nat["host_if"], nat["host_addr"])
    _addr(nat["peer_if"], nat["peer_addr"], nat["ns"])
    # The native peer runs the site's critical native application.
    _start_service(site, "native-peer", nat["ns"], bare(nat["peer_addr"]), nat["service_port"])
    par = site.get("parallel")
    if par:
        _veth(par["ns"], par["host_if"], par["peer_if"])
        run("ip", "link", "set", par["host_if"], "up")
        _addr(par["peer_if"], par["peer_addr"], par["ns"])
        # The parallel peer: a legacy IPv4 or an IPv6 application on the parallel network.
        _start_service(
            site, "parallel-peer", par["ns"], bare(par["peer_addr"]), par["service_port"]
        )
    adopt = site.get("adoption")
    if adopt:
        # A host that already has native configuration: a static route, its own nft table,
        # and a service bound to its native address.
        fam = "-6" if family_of(nat["host_addr"]) == "ipv6" else "-4"
        if not run("ip", fam, "route", "show", adopt["route"]).strip():
            run("ip", fam, "route", "add", adopt["route"], "via", bare(nat["peer_addr"]))
        tables = run("nft", "list", "tables")
        if f"table {adopt['nft_table']}\n" not in tables + "\n":
            run(
                "nft",
                f"add table {adopt['nft_table']}; "
                f"add chain {adopt['nft_table']} probe "
                "{ type filter hook input priority 10; policy accept; }; "
                f"add rule {adopt['nft_table']} probe iifname {nat['host_if']} counter",
            )
        _start_service(site, "host-native", None, bare(nat["host_addr"]), adopt["service_port"])
    _wait_dad([nat["host_if"], *([par["host_if"]] if par else [])])


def _wait_dad(devs: list[str], timeout: float = 20) -> None:
    """Wait until the site's host-side links have no tentative address (their link-locals).

    The native record is made right after ``up``: taken during duplicate address detection it
    would carry a ``tentative`` flag that goes away by itself, and the comparison after
    converge would report a change nobody made.
    """
    end = time.monotonic() + timeout
    for dev in devs:
        while run("ip", "-6", "addr", "show", "dev", dev, "tentative", check=False).strip():
            if time.monotonic() > end:
                raise TimeoutError(f"{dev}: an address is still tentative after {timeout} s")
            time.sleep(0.2)


# --- down ----------------------------------------------------------------------------------


def _stop_services() -> None:
    for pidfile in ephemeral_dir().glob("service-*.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            pid = int(pidfile.read_text())
            # Only our own process group: the service was started in its own session.
            os.killpg(pid, signal.SIGTERM)
        pidfile.unlink(missing_ok=True)


def down(site: dict) -> list[str]:
    """Remove the site. Returns what was removed (empty = nothing was left)."""
    removed = []
    _stop_services()
    adopt = site.get("adoption")
    if adopt:
        fam = "-6" if family_of(site["native"]["host_addr"]) == "ipv6" else "-4"
        if run("ip", fam, "route", "show", adopt["route"], check=False).strip():
            run("ip", fam, "route", "del", adopt["route"], check=False)
            removed.append(f"route {adopt['route']}")
        if run("nft", "list", "table", *adopt["nft_table"].split(), check=False).strip():
            run("nft", "delete", "table", *adopt["nft_table"].split(), check=False)
            removed.append(f"nft table {adopt['nft_table']}")
    for part in (site.get("parallel"), site["native"]):
        if not part:
            continue
        if netns_exists(part["ns"]):
            # Deleting the namespace deletes the peer end, and with it the host end.
            run("ip", "netns", "del", part["ns"], check=False)
            removed.append(f"netns {part['ns']}")
        for _try in range(20):
            if not link_exists(part["host_if"]):
                break
            run("ip", "link", "del", part["host_if"], check=False)
            time.sleep(0.1)
        else:
            raise RuntimeError(f"cannot remove {part['host_if']}")
    return removed


# --- native state --------------------------------------------------------------------------

_LIFETIMES = re.compile(r"\s+valid_lft \S+ preferred_lft \S+")
_EXPIRES = re.compile(r" expires \d+sec")


def _own_ifaces(site: dict, strict: bool = False) -> set[str]:
    """Interfaces that belong to the parallel network: the bridge, its ports, the uplink.

    ``strict`` keeps the uplink: it is the site's interface, lent to MV6, and must be handed
    back as it was.
    """
    names = {site["bridge"]}
    if site.get("parallel") and not strict:
        names.add(site["parallel"]["host_if"])
    out = run("ip", "-o", "link", "show", "master", site["bridge"], check=False)
    names.update(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())
    return names


def _keep(line: str, skip: set[str], ignore: re.Pattern) -> bool:
    words = set(re.split(r"[\s:@]+", line))
    if words & skip:
        return False
    return not any(ignore.match(w) for w in words if w)


def strip_table(ruleset: str, family: str, name: str) -> str:
    """The ruleset text without one top-level table."""
    out, skipping = [], False
    for line in ruleset.splitlines():
        if line.startswith(f"table {family} {name} {{"):
            skipping = True
            continue
        if skipping:
            if line == "}":
                skipping = False
            continue
        out.append(line)
    return "\n".join(out)


def strip_tables(ruleset: str, ignore: re.Pattern) -> str:
    """Drop whole tables whose name matches ``ignore`` (other pieces' test tables)."""
    out, skipping = [], False
    for line in ruleset.splitlines():
        m = re.match(r"^table \S+ (\S+) \{", line)
        if m and ignore.match(m.group(1)):
            skipping = True
            continue
        if skipping:
            if line == "}":
                skipping = False
            continue
        out.append(line)
    return "\n".join(out)


def native_snapshot(site: dict, ignore: str | None = None, strict: bool = False) -> dict[str, str]:
    """The host's native state as text: addresses, routes, rules, ruleset, global sysctls.

    Left out: the parallel bridge, its ports and the uplink (their state is asserted on its
    own: no address, no route), the collection's own ``mv6_isolation`` tables (bridge, inet),
    lifetimes and counters (they change by themselves), and objects of other pieces'
    concurrently running tests (``MV6_MOL_IGNORE``, default ``^t[-_](?!mol)``).
    ``strict`` also records the uplink and the per-interface sysctls of the site's own
    interfaces (for a host that must end exactly where it started).
    """
    pattern = re.compile(ignore or os.environ.get("MV6_MOL_IGNORE", DEFAULT_IGNORE))
    skip = _own_ifaces(site, strict)

    def lines(*argv: str) -> str:
        out = run(*argv, check=False)
        kept = [_keep_line for _keep_line in out.splitlines() if _keep(_keep_line, skip, pattern)]
        return "\n".join(_EXPIRES.sub("", _LIFETIMES.sub("", x)) for x in kept)

    ruleset = run("nft", "-s", "list", "ruleset")
    # The collection's own tables: the bridge filter and the host guard.
    for family in ("bridge", "inet"):
        ruleset = strip_table(ruleset, family, "mv6_isolation")
    ruleset = strip_tables(ruleset, pattern)
    sysctls = {}
    for key in (
        "net/ipv4/ip_forward",
        "net/ipv6/conf/all/forwarding",
        "net/ipv6/conf/all/disable_ipv6",
        "net/ipv6/conf/default/disable_ipv6",
        "net/ipv6/conf/default/accept_ra",
        "net/ipv4/conf/all/arp_ignore",
        "net/ipv4/conf/default/arp_ignore",
    ):
        sysctls[key] = Path("/proc/sys", key).read_text().strip()
    if strict:
        ifaces = [site["native"]["host_if"]]
        if site.get("parallel"):
            ifaces.append(site["parallel"]["host_if"])
        for dev in ifaces:
            for fam in ("ipv4", "ipv6"):
                base = Path("/proc/sys/net", fam, "conf", dev)
                if base.is_dir():
                    for f in sorted(base.iterdir()):
                        if f.name.startswith("stable_secret"):
                            continue
                        try:
                            sysctls[f"net/{fam}/conf/{dev}/{f.name}"] = f.read_text().strip()
                        except OSError:
                            continue
    return {
        "addresses": lines("ip", "-o", "addr", "show"),
        "routes4": lines("ip", "-4", "route", "show", "table", "all"),
        "routes6": lines("ip", "-6", "route", "show", "table", "all"),
        "rules4": run("ip", "-4", "rule", "show"),
        "rules6": run("ip", "-6", "rule", "show"),
        "ruleset": ruleset,
        "sysctls": json.dumps(sysctls, sort_keys=True, indent=1),
    }


# --- sharing the host -----------------------------------------------------------------------

NFT_FILE = Path("/etc/nftables.d/mv6_isolation.nft")


def isolation_table_owner() -> str | None:
    """The bridge the host's ``bridge mv6_isolation`` table was made for (None: no table)."""
    if not run("nft", "list", "table", "bridge", "mv6_isolation", check=False).strip():
        return None
    text = NFT_FILE.read_text() if NFT_FILE.exists() else ""
    m = re.search(r"isolation of the parallel bridge (\S+)", text)
    return m.group(1) if m else "?"


def foreign_mv6(site: dict) -> list[str]:
    """Another MV6 parallel network on this host, which a scenario would break.

    The hypervisor role keeps ONE ``bridge mv6_isolation`` table per host, and the planner
    names guest taps mv6p<slot> in every plan: a scenario converging next to the lab (or
    another scenario) would replace that network's table and collide on tap names.
    """
    found = []
    owner = isolation_table_owner()
    if owner not in (None, site["bridge"]):
        found.append(f"table bridge mv6_isolation (for bridge {owner})")
    for line in run("ip", "-o", "link", "show").splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if re.match(r"^mv6p\d+$", name) and f" master {site['bridge']} " not in line:
            found.append(f"tap {name}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mv6mol.site", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "snapshot", "preflight", "owner"])
    parser.add_argument("--site", help="site.json (default: in the ephemeral directory)")
    parser.add_argument("--out", help="snapshot: file to write")
    parser.add_argument("--strict", action="store_true", help="snapshot: keep the uplink too")
    args = parser.parse_args(argv)
    site = load_site(args.site)
    if args.action == "preflight":
        found = foreign_mv6(site)
        if found:
            print(
                "another MV6 parallel network is up on this host: "
                + ", ".join(found)
                + ". The hypervisor role keeps one isolation table per host and tap names are "
                "mv6p<slot> in every plan, so this scenario would break it. Take it down first "
                "(scripts/lab.sh down), then run the scenario.",
                file=sys.stderr,
            )
            return 1
        print(json.dumps({"changed": False}))
    elif args.action == "owner":
        owner = isolation_table_owner()
        print(json.dumps({"owner": owner, "mine": owner == site["bridge"]}))
    elif args.action == "up":
        up(site)
        print(json.dumps({"changed": True}))
    elif args.action == "down":
        removed = down(site)
        print(json.dumps({"changed": bool(removed), "removed": removed}))
    else:
        snap = native_snapshot(site, strict=args.strict)
        Path(args.out).write_text(json.dumps(snap, indent=1, sort_keys=True))
        print(json.dumps({"changed": True, "file": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
