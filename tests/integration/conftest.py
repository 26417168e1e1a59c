"""Shared fixtures for the integration tests: network namespaces and veth pairs.

Every test names what it creates with its own prefix (max 15 characters per interface name)
and everything is removed in a finalizer, also when the test fails.

- ``netns_lab`` (function scope) and ``make_netns_lab()`` (for wider scopes) give a
  :class:`NetnsLab` with ``add_ns(name)``, ``add_veth(host_end, peer_end, ns=None, ...)``,
  ``ns_exec(ns, *argv)`` and ``cleanup()``.
"""

from __future__ import annotations

import grp
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from guestlib import VIRSH_TIMEOUT

KVM = Path("/dev/kvm")


def virsh(*argv: str, check: bool = True, timeout: float = VIRSH_TIMEOUT):
    return sh("virsh", "-q", "-c", "qemu:///system", *argv, check=check, timeout=timeout)


def device_mode(path: Path = KVM) -> tuple[int, int, int]:
    """(uid, gid, permission bits) of a device node."""
    info = path.stat()
    return info.st_uid, info.st_gid, info.st_mode & 0o7777


def set_device_mode(mode: tuple[int, int, int], path: Path = KVM) -> None:
    os.chown(path, mode[0], mode[1])
    os.chmod(path, mode[2])


def _stop_on_sigterm(signum: int, _frame) -> None:
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def pytest_configure(config) -> None:
    """timeout(1) (the Makefile's bound) and scripts/test.sh stop a run with SIGTERM, which
    ends Python at once: the fixtures' finalizers never ran, and the links, namespaces,
    tables and guests of the tests under way stayed on the machine (the 3 Dec CI run left
    t-hvbr1, t-hv-q and a keeper's table). As KeyboardInterrupt, pytest stops the run and
    tears its fixtures down first; the Makefile gives it `timeout -k` seconds for that."""
    signal.signal(signal.SIGTERM, _stop_on_sigterm)


@pytest.fixture(scope="session", autouse=True)
def kvm_device_like_udev(request):
    """Without udev this machine's /dev/kvm is root:root 0600 and libvirt re-probes QEMU on
    every call (issue: 40 s per define). The tests that do not run roles/hypervisor get
    what the role gives a host (group kvm, 0660) for the session; the mode is put back.
    A session of ``files_only`` tests alone leaves the device alone: it runs beside the
    Molecule scenarios, whose roles own the device then."""
    files_only = all(item.get_closest_marker("files_only") for item in request.session.items)
    if files_only or not KVM.exists() or Path("/run/udev/control").exists():
        yield
        return
    original = device_mode()
    set_device_mode((0, grp.getgrnam("kvm").gr_gid, 0o660))
    try:
        yield
    finally:
        set_device_mode(original)


def sh(*argv: str, check: bool = True, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """Run a command with a time bound; output captured as text."""
    return subprocess.run(
        list(argv), check=check, timeout=timeout, capture_output=True, text=True, **kw
    )


class NetnsLab:
    """Namespaces and veth pairs that are removed again by cleanup()."""

    def __init__(self) -> None:
        self.namespaces: list[str] = []
        self.links: list[str] = []

    def add_ns(self, name: str) -> str:
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def add_veth(
        self,
        host_end: str,
        peer_end: str,
        ns: str | None = None,
        peer_name_in_ns: str | None = None,
        peer_mac: str | None = None,
    ) -> str:
        """A veth pair: *host_end* stays in the root namespace (down), the peer goes to *ns*."""
        assert len(host_end) <= 15 and len(peer_end) <= 15
        sh("ip", "link", "del", host_end, check=False)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        self.links.append(host_end)
        if ns is not None:
            sh("ip", "link", "set", peer_end, "netns", ns)
            name = peer_name_in_ns or peer_end
            if name != peer_end:
                sh("ip", "-n", ns, "link", "set", peer_end, "name", name)
            if peer_mac:
                sh("ip", "-n", ns, "link", "set", name, "address", peer_mac)
        return host_end

    def ns_exec(self, ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        return sh("ip", "netns", "exec", ns, *argv, **kw)

    def cleanup(self) -> None:
        for link in reversed(self.links):
            sh("ip", "link", "del", link, check=False)
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns, check=False)
        self.links.clear()
        self.namespaces.clear()


def make_netns_lab() -> NetnsLab:
    return NetnsLab()


@pytest.fixture
def netns_lab() -> Iterator[NetnsLab]:
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.cleanup()


# ------------------------------------------------------------------ running playbooks


REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"


def run_playbook(
    playbook: Path, extra_vars: dict, check: bool = False, timeout: float = 600
) -> dict:
    """Run *playbook* against localhost with the json callback; returns the parsed result
    plus ``rc`` and ``stderr``. ``result["stats"]["localhost"]["changed"]`` counts changes."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_CALLBACK_RESULT_FORMAT": "json",
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    vars_file = playbook.with_suffix(".vars.json")
    vars_file.write_text(json.dumps(extra_vars))
    argv = [
        str(VENV_BIN / "ansible-playbook"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={VENV_BIN / 'python'}",
        "-e",
        f"@{vars_file}",
        str(playbook),
    ]
    if check:
        argv.append("--check")
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
    try:
        result = json.loads(proc.stdout)
    except ValueError:
        result = {"raw": proc.stdout}
    result["rc"] = proc.returncode
    result["stderr"] = proc.stderr
    return result


def task_results(result: dict, name: str) -> list[dict]:
    """The per-host results of every task called *name* in a json-callback result."""
    found = []
    for play in result.get("plays", []):
        for task in play.get("tasks", []):
            if task["task"]["name"] == name:
                found.extend(task["hosts"].values())
    return found


def changed_tasks(result: dict) -> list[str]:
    names = []
    for play in result.get("plays", []):
        for task in play.get("tasks", []):
            for host_result in task["hosts"].values():
                if host_result.get("changed"):
                    names.append(task["task"]["name"])
    return names


def run_module(
    module: str, args: dict, netns: str | None = None, check: bool = False, timeout: float = 120
) -> dict:
    """Run one module ad hoc against localhost (optionally inside *netns*); its result."""
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
            "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    argv = [
        str(VENV_BIN / "ansible"),
        "-i",
        "localhost,",
        "-c",
        "local",
        "-e",
        f"ansible_python_interpreter={VENV_BIN / 'python'}",
        "-m",
        module,
        "-a",
        json.dumps(args),
        "localhost",
    ]
    if check:
        argv.append("--check")
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO, check=False
    )
    data = json.loads(proc.stdout)
    return data["plays"][0]["tasks"][0]["hosts"]["localhost"]


def with_site(extra: dict) -> dict:
    """A role test's variables with a version 2 plan: the site block the planner makes from
    the test's mv6_parallel (and nft table, host guard, native family), over the test's own
    host entries. The roles read every shared name from that block, as from a real plan."""
    collections = str(Path(__file__).resolve().parents[2] / ".collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    from ansible_collections.mv6.transition.plugins.module_utils import _plan

    out = dict(extra)
    plan = dict(out.get("mv6_plan") or {})
    old = plan.get("site") or {}
    family = plan.pop("parallel_family", None) or old.get("parallel_family", "ipv6")
    parallel = {k: v for k, v in (out.get("mv6_parallel") or {}).items() if v is not None}
    parallel["prefix"] = "2001:db8:6::/48" if family == "ipv6" else "198.51.96.0/20"
    parallel["nft_table"] = out.pop("mv6_hypervisor_nft_table", None) or old.get(
        "nft_table", _plan.DEFAULT_NFT_TABLE
    )
    guard = out.pop("mv6_hypervisor_host_guard", None)
    parallel["host_guard"] = old.get("host_guard", True) if guard is None else guard
    native = out.get("mv6_native_family") or ("ipv4" if family == "ipv6" else "ipv6")
    site = _plan.parse_site(native, parallel).to_site_block()
    for key in ("native_family", "prefix", "layout", "host_prefixlen", "address_mode"):
        plan.pop(key, None)
    out["mv6_plan"] = {**plan, "version": _plan.PLAN_VERSION, "site": site}
    return out
