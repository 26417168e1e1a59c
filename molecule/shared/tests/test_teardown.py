"""Last of v6_parallel's verify step: playbooks/teardown.yml takes the host out of MV6 and
the host is exactly where it started, the uplink included, its native service the same
process and still answering; a second teardown is harmless. It runs after the network and
storage checks (Molecule sorts the verify files by path) and before the scenario's destroy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from mv6mol import ansible_run
from mv6mol.adoption import compare, service_answers, service_pid
from mv6mol.scenario import Scenario, load
from mv6mol.site import ephemeral_dir, link_exists, native_snapshot, run


@pytest.fixture(scope="module")
def scn() -> Scenario:
    return load()


def test_parallel_network_is_up_before_teardown(scn: Scenario) -> None:
    """Control for the teardown test: there is something to take down."""
    assert link_exists(scn.bridge), f"{scn.bridge} is missing after converge"
    assert run("nft", "list", "table", "bridge", "mv6_isolation", check=False).strip()
    domains = run("virsh", "-c", "qemu:///system", "list", "--name").split()
    assert {g.name for g in scn.guests} <= set(domains), domains


def test_teardown_returns_the_host_to_where_it_started(scn: Scenario) -> None:
    pid = service_pid()
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
    compare(before, native_snapshot(scn.site, strict=True))
    assert service_pid() == pid
    os.kill(pid, 0)
    assert service_answers(scn).startswith("mv6-mol host-native"), "native service lost"


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
    compare(before, native_snapshot(scn.site, strict=True))
