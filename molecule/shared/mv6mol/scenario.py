"""What a scenario's tests know about its site: names from site.json, addresses from the plan."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from mv6mol import planfile
from mv6mol.site import bare, ephemeral_dir, load_site, run

NETNS_PYTHON = "/usr/bin/python3"
RAWNET_PATH = Path(__file__).parent / "rawnet.py"


@dataclass
class PlannedGuest:
    name: str
    mac: str
    address: str
    prefixlen: int
    port: str
    link_local: str | None = None
    router: bool = False


@dataclass
class Scenario:
    site: dict
    plan: dict
    hypervisor: str
    guests: list[PlannedGuest] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.site["parallel_family"]

    @property
    def bridge(self) -> str:
        return self.site["bridge"]

    @property
    def subnet(self) -> str:
        return self.plan["hosts"][self.hypervisor]["subnet"]

    @property
    def peer(self) -> dict:
        return self.site["parallel"]

    @property
    def native(self) -> dict:
        return self.site["native"]

    def bridge_mac(self) -> str:
        return Path(f"/sys/class/net/{self.bridge}/address").read_text().strip()

    def ports(self) -> list[str]:
        out = run("ip", "-j", "link", "show", "master", self.bridge)
        return sorted(link["ifname"] for link in json.loads(out or "[]"))

    def peer_mac(self) -> str:
        ns, dev = self.peer["ns"], self.peer["peer_if"]
        return run("cat", f"/sys/class/net/{dev}/address", netns=ns).strip()

    def host_macs(self) -> set[str]:
        links = json.loads(run("ip", "-j", "link", "show"))
        return {link["address"] for link in links if link.get("address")} - {"00:00:00:00:00:00"}

    def spare_address(self) -> str:
        """An address of the parallel subnet that nobody holds (for spoofing)."""
        net = ipaddress.ip_network(self.subnet)
        taken = {g.address for g in self.guests} | {bare(self.peer["peer_addr"])}
        candidate = net.network_address + (0xDEAD if net.version == 6 else net.num_addresses - 3)
        assert str(candidate) not in taken
        return str(candidate)

    def netns_rawnet(self, ns: str, command: str, arg: dict, timeout: float = 120) -> dict:
        return rawnet(command, arg, ns=ns, timeout=timeout)


def load() -> Scenario:
    site = load_site()
    plan_file = Path(os.environ.get("MV6_MOL_PLAN", ephemeral_dir() / "mv6_plan.yml"))
    plan = planfile.read(plan_file)
    hosts = [h for h, v in plan["hosts"].items() if not v.get("released")]
    assert len(hosts) == 1, f"one hypervisor expected in the plan, got {hosts}"
    hv = hosts[0]
    guests = [
        PlannedGuest(
            name=name,
            mac=g["mac"].lower(),
            address=g["address"],
            prefixlen=int(g["prefixlen"]),
            port=g["port"],
            link_local=g.get("link_local"),
            router=bool(g.get("router", False)),
        )
        for name, g in sorted(plan["hosts"][hv]["guests"].items())
        if not g.get("released")
    ]
    return Scenario(site=site, plan=plan, hypervisor=hv, guests=guests)


def rawnet(command: str, arg: dict, ns: str | None = None, timeout: float = 120) -> dict:
    """Run a rawnet command in namespace ``ns`` (or on the host itself) and return its JSON."""
    argv = [NETNS_PYTHON, str(RAWNET_PATH), command, json.dumps(arg)]
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    where = f"in {ns}" if ns else "on the host"
    assert proc.returncode == 0, f"rawnet {command} {where}: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_planned(
    native_family: str, parallel_family: str, guests: int = 2, parallel_peer: bool = True
) -> Scenario:
    """The collection planned this scenario's directions: ``guests`` guests in the parallel
    subnet, the native peer of the other family and, with ``parallel_peer``, the parallel peer
    as the gateway and no guest's address. Returns the scenario for further checks."""
    scn = load()
    assert scn.plan["site"]["native_family"] == native_family
    assert scn.plan["site"]["parallel_family"] == parallel_family
    assert scn.site["native_family"] == native_family
    assert len(scn.guests) == guests, [g.name for g in scn.guests]
    subnet = ipaddress.ip_network(scn.subnet)
    for g in scn.guests:
        assert ipaddress.ip_address(g.address) in subnet, (g.name, g.address, subnet)
    native_peer = ipaddress.ip_address(bare(scn.native["peer_addr"]))
    assert native_peer.version != subnet.version, "the native peer must be of the other family"
    if parallel_peer:
        peer = ipaddress.ip_address(bare(scn.peer["peer_addr"]))
        assert peer in subnet, f"the parallel peer {peer} is outside {subnet}"
        assert str(peer) == scn.plan["hosts"][scn.hypervisor]["gateway"], "the peer is the gateway"
        assert str(peer) not in {g.address for g in scn.guests}, "a guest got the peer's address"
    return scn
