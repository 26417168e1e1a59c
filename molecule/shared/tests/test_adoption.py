"""Verify step of the ``adoption`` scenario: MV6 arrives on a host that already runs things.

In order: after converge the native state is identical and the native service was never
disturbed (same process, still answering); then playbooks/teardown.yml takes the host out of
MV6 and the host is exactly where it started, the uplink included; a second teardown
is harmless.
"""

from __future__ import annotations

import difflib
import json
import os
import subprocess
from pathlib import Path

import pytest
from mv6mol import ansible_run
from mv6mol.scenario import NETNS_PYTHON, Scenario, load
from mv6mol.site import bare, ephemeral_dir, link_exists, native_snapshot, run


@pytest.fixture(scope="module")
def scn() -> Scenario:
    return load()


def _compare(before: dict, now: dict) -> None:
    for key in sorted(before):
        if before[key] != now.get(key):
            diff = "\n".join(
                difflib.unified_diff(
                    before[key].splitlines(),
                    now.get(key, "").splitlines(),
                    "before",
                    "now",
                    lineterm="",
                )
            )
            pytest.fail(f"native {key} differs:\n{diff}")


def _service_pid() -> int:
    return int((ephemeral_dir() / "service-host-native.pid").read_text())


def _service_answers(scn: Scenario) -> str:
    """Ask the host's native service from the native peer, as a client of the site would."""
    code = (
        "import socket,sys\n"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=5)\n"
        "print(s.recv(100).decode().strip())\n"
    )
    proc = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            scn.native["ns"],
            NETNS_PYTHON,
            "-c",
            code,
            bare(scn.native["host_addr"]),
            str(scn.site["adoption"]["service_port"]),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return proc.stdout.strip()


def test_native_state_identical_after_converge(scn: Scenario) -> None:
    before = json.loads((ephemeral_dir() / "native-before.json").read_text())
    _compare(before, native_snapshot(scn.site))


def test_native_configuration_is_still_there(scn: Scenario) -> None:
    adopt = scn.site["adoption"]
    assert run("ip", "-4", "route", "show", adopt["route"]).strip(), "the native route is gone"
    family, name = adopt["nft_table"].split()
    assert run("nft", "list", "table", family, name, check=False).strip(), "native table gone"


def test_native_service_was_never_disturbed(scn: Scenario) -> None:
    pid = _service_pid()
    os.kill(pid, 0)  # the very process started before converge still runs
    answer = _service_answers(scn)
    assert answer == f"mv6-mol host-native {bare(scn.native['peer_addr'])}", answer


def test_parallel_network_is_up_before_teardown(scn: Scenario) -> None:
    """Control for the teardown test: there is something to take down."""
    assert link_exists(scn.bridge), f"{scn.bridge} is missing after converge"
    assert run("nft", "list", "table", "bridge", "mv6_isolation", check=False).strip()
    domains = run("virsh", "-c", "qemu:///system", "list", "--name").split()
    assert {g.name for g in scn.guests} <= set(domains), domains


def test_teardown_returns_the_host_to_where_it_started(scn: Scenario) -> None:
    pid = _service_pid()
    res = ansible_run.playbook(
        ansible_run.PROJECT / "playbooks" / "teardown.yml",
        {"mv6_teardown_purge_disks": True},
    )
    assert res["rc"] == 0 and not res["failures"], res
    assert not link_exists(scn.bridge), f"{scn.bridge} survived the teardown"
    tables = run("nft", "list", "tables")
    assert "table bridge mv6_isolation" not in tables, tables
    domains = run("virsh", "-c", "qemu:///system", "list", "--all", "--name").split()
    assert not ({g.name for g in scn.guests} & set(domains)), domains
    assert not list(Path("/etc/sysctl.d").glob(f"*{scn.bridge}*"))
    for g in scn.guests:
        assert not Path("/var/lib/mv6/guests", g.name).exists(), f"{g.name}'s disks survived"
    # Exactly where it started: addresses, routes, rules, ruleset, global sysctls, and the
    # uplink with its own sysctls, as recorded before converge.
    before = json.loads((ephemeral_dir() / "native-before-strict.json").read_text())
    _compare(before, native_snapshot(scn.site, strict=True))
    assert _service_pid() == pid
    os.kill(pid, 0)
    assert _service_answers(scn).startswith("mv6-mol host-native"), "native service lost"


def test_second_teardown_is_harmless(scn: Scenario) -> None:
    """Teardown on a host that is already out of MV6 succeeds and leaves it as it is.

    (Its recap is not asserted to be changed=0: after a purge it writes a new native-state
    record, which is bookkeeping, not a change to the host's network.)
    """
    res = ansible_run.playbook(
        ansible_run.PROJECT / "playbooks" / "teardown.yml",
        {"mv6_teardown_purge_disks": True},
    )
    assert res["rc"] == 0 and not res["failures"], res
    before = json.loads((ephemeral_dir() / "native-before-strict.json").read_text())
    _compare(before, native_snapshot(scn.site, strict=True))
