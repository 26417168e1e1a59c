"""Site b run the AWX way (molecule/shared/mv6mol/awx.py: ansible-runner, a fresh private
data directory and project copy per job, AWX's extra variables), with its plan kept on hv1,
a remote host reached over SSH like any other, and the collection installed from its built
tarball as an execution environment holds it (docs/awx.md). Runs after tests/test_fleet.py,
which leaves site b adopted on hv4 with its plan in the controller's file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest
import yaml
from mv6mol import awx, fleet
from mv6mol.fleet import figure

pytestmark = pytest.mark.timeout(900)

KEEPER = "hv1"
KEPT = "/var/lib/mv6-plan/site-b.yml"
KEPT_C = "/var/lib/mv6-plan/site-c.yml"
SSH_VARS = yaml.safe_load(
    """
ansible_connection: ssh
ansible_user: root
ansible_ssh_private_key_file: /var/lib/mv6-fleet/ssh/id_ed25519
ansible_ssh_executable: /var/lib/mv6-fleet/bin/ssh
ansible_ssh_common_args: >-
  -o UserKnownHostsFile=/var/lib/mv6-fleet/known_hosts -o StrictHostKeyChecking=yes
  -o ServerAliveInterval=5 -o ServerAliveCountMax=3
ansible_python_interpreter: /usr/bin/python3
"""
)
PING = """---
- name: Reach the plan's guests over their guest agents
  hosts: mv6_guests
  gather_facts: false
  tasks:
    - name: Ping
      ansible.builtin.ping:

    - name: The guest's own addresses
      ansible.builtin.command: ip -o addr show
      changed_when: false
      register: addresses

    - name: Hand them to AWX
      ansible.builtin.set_stats:
        data:
          guest_addresses: "{{ {inventory_hostname: addresses.stdout} }}"
"""


def allocations(plan: dict) -> dict:
    out = {}
    for host, entry in plan["hosts"].items():
        out[host] = (entry["slot"], entry["subnet"])
        for guest, g in entry["guests"].items():
            out[f"{host}/{guest}"] = (g["slot"], g["mac"], g["address"], g["port"], g["released"])
    return out


def kept_plan(path: str = KEPT) -> dict:
    """The keeper's plan, read on the keeper by the collection's own reader."""
    result = fleet.module(KEEPER, "mv6.transition.plan_keeper", {"op": "read", "plan_file": path})
    return result["plan"]


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    return awx.installed_collection(tmp_path_factory.mktemp("ee") / "collections")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Site b's AWX project: its inventory, the keeper hv1 in a group of its own, the plan
    kept there, the plan inventory source for the guests, and a playbook of the user's."""
    root = tmp_path_factory.mktemp("site-b-project")
    inventory = root / "inventory"
    shutil.copytree(fleet.SITE_B, inventory)
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["mv6_plan_keepers"] = {
        "hosts": {KEEPER: {"ansible_host": fleet.MGMT[KEEPER]}},
        "vars": SSH_VARS,
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    site = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())
    controller_file = site.pop("mv6_plan_file")
    site.update(
        {
            "mv6_plan_keeper": KEEPER,
            "mv6_plan_file": KEPT,
            "mv6_plan_controller_file": controller_file,
        }
    )
    (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(site))
    (root / "guests.mv6.yml").write_text(
        yaml.safe_dump({"plugin": "mv6.transition.plan", "plan_file": KEPT, "keeper": KEEPER})
    )
    (root / "ping_guests.yml").write_text(PING)
    yield root
    for host in (KEEPER, "hv4"):
        fleet.ssh(host, "rm -rf /var/lib/mv6-plan")


def job(project, collections, playbook, name, **kw) -> dict:
    result = awx.Job(
        project,
        playbook,
        kw.pop("inventory", ["inventory/hosts.yml"]),
        collections=collections,
        name=name,
        log_dir=fleet.ephemeral(),
        **kw,
    ).run()
    return result


def test_the_plan_moves_to_a_remote_keeper_with_every_allocation(project, collections):
    original = allocations(fleet.plan(fleet.PLAN_B))
    result = job(
        project,
        collections,
        "mv6.transition.plan_move",
        "move",
        extra_vars={"mv6_plan_move": "to_keeper"},
    )
    assert result["rc"] == 0, awx.summary(result)
    assert allocations(kept_plan()) == original
    # Moving again changes nothing: the same plan is there.
    again = job(
        project,
        collections,
        "mv6.transition.plan_move",
        "move",
        extra_vars={"mv6_plan_move": "to_keeper"},
    )
    assert again["rc"] == 0 and awx.changed(again) == {}, awx.summary(again)


def test_adopting_the_host_as_a_job_changes_nothing_and_keeps_the_plan(project, collections):
    """The site job template with its limit (adopt one host), from the installed collection:
    hv4 was adopted by ansible-playbook, and its job finds nothing to change."""
    before = allocations(kept_plan())
    result = job(project, collections, "mv6.transition.site", "adopt", limit="hv4,mv6_guests")
    assert result["rc"] == 0, awx.summary(result)
    figure("awx_site_job_s", result["seconds"])
    assert awx.changed(result).get("hv4", 0) == 0, awx.summary(result)
    assert allocations(kept_plan()) == before
    assert result["artifacts"]["mv6_audit"]["violation_count"] == 0, result["artifacts"]
    assert result["artifacts"]["mv6_plan_picture"].startswith("<?xml")
    assert result["artifacts"]["mv6_plan_picture_file"] == f"{KEEPER}:/var/lib/mv6-plan/site-b.svg"


def test_a_verify_job_returns_its_audit_as_artifacts(project, collections):
    result = job(project, collections, "mv6.transition.verify", "verify")
    assert result["rc"] == 0, awx.summary(result)
    figure("awx_verify_job_s", result["seconds"])
    audit = result["artifacts"]["mv6_verify"]
    assert audit["violation_count"] == 0, audit
    assert audit["hosts"]["hv4"] == {"violations": [], "guests": {"legacy4": []}}, audit


def test_the_plan_inventory_source_yields_the_guests_from_the_keeper(project, collections):
    def inventory(*args):
        proc = subprocess.run(
            [
                str(awx.VENV_BIN / "ansible-inventory"),
                "-i",
                str(project / "inventory" / "hosts.yml"),
                "-i",
                str(project / "guests.mv6.yml"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                **fleet.env(),
                "ANSIBLE_COLLECTIONS_PATH": f"{collections}:{awx.SITE_PACKAGES}",
                "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "1",
            },
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    assert inventory("--list")["mv6_guests"]["hosts"] == ["legacy4"]
    legacy4 = inventory("--host", "legacy4")
    assert legacy4["mv6_guest_hypervisor"] == "hv4", legacy4
    assert legacy4["ansible_connection"] == "mv6.transition.guest_agent", legacy4
    # As an AWX inventory source: a job of the user's reaches the guest through hv4.
    result = job(
        project,
        collections,
        "ping_guests.yml",
        "guests",
        inventory=["inventory/hosts.yml", "guests.mv6.yml"],
    )
    assert result["rc"] == 0, awx.summary(result)
    assert "198.51.100." in result["artifacts"]["guest_addresses"]["legacy4"]


def test_concurrent_slices_on_a_remote_keeper_lose_nothing(tmp_path, collections):
    """Site a's three hosts planned (only) into a third plan on the keeper by two slices at
    once, each adding a guest from its own project copy, while the test holds the keeper's
    lock: both wait, then take turns."""

    def site_c(root, guests):
        inventory = root / "inventory"
        inventory.mkdir(parents=True, exist_ok=True)
        hosts = {
            "all": {
                "children": {
                    "mv6_hypervisors": {
                        "hosts": {
                            h: {"ansible_host": fleet.MGMT[h], "mv6_guests": g}
                            for h, g in guests.items()
                        },
                        "vars": {
                            **SSH_VARS,
                            "mv6_native_family": "ipv4",
                            "mv6_parallel": {"prefix": "2001:db8:900::/48"},
                            "mv6_plan_keeper": KEEPER,
                            "mv6_plan_file": KEPT_C,
                            # a new site: the keeper may start its plan
                            "mv6_plan_keeper_create": True,
                        },
                    },
                    "mv6_plan_keepers": {
                        "hosts": {KEEPER: {"ansible_host": fleet.MGMT[KEEPER]}},
                        "vars": SSH_VARS,
                    },
                }
            }
        }
        (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
        return root

    base = {h: [{"name": f"c6-{h}"}] for h in ("hv1", "hv2", "hv3")}
    first = job(site_c(tmp_path / "base", base), collections, "mv6.transition.plan", "plan")
    assert first["rc"] == 0, awx.summary(first)
    before = allocations(kept_plan(KEPT_C))
    a = site_c(tmp_path / "a", {**base, "hv1": [*base["hv1"], {"name": "ca6"}]})
    b = site_c(tmp_path / "b", {**base, "hv3": [*base["hv3"], {"name": "cb6"}]})
    jobs = (
        awx.Job(
            a,
            "mv6.transition.plan",
            ["inventory/hosts.yml"],
            collections=collections,
            limit="hv1",
            name="slice1",
            log_dir=fleet.ephemeral(),
        ),
        awx.Job(
            b,
            "mv6.transition.plan",
            ["inventory/hosts.yml"],
            collections=collections,
            limit="hv2:hv3",
            name="slice2",
            log_dir=fleet.ephemeral(),
        ),
    )
    planner = "Compute the address plan"
    # The lock is held on the keeper until the holder's standard input closes.
    holder = subprocess.Popen(
        [
            "bash",
            str(fleet.FLEET_SH),
            "ssh",
            KEEPER,
            f"flock -x {KEPT_C}.lock sh -c 'echo held; read _'",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=fleet.env(),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        threads = awx.start(*jobs)
        awx.wait_until(
            lambda: all(j.saw("runner_on_start", planner) for j in jobs),
            300,
            "both slices planning",
        )
        time.sleep(3)
        assert not any(j.saw("runner_on_ok", planner) for j in jobs), [j.seen for j in jobs]
    finally:
        holder.stdin.close()
        holder.wait(60)
    one, two = awx.finish(threads, jobs, 600)
    assert one["rc"] == 0, awx.summary(one)
    assert two["rc"] == 0, awx.summary(two)
    plan = kept_plan(KEPT_C)
    assert "ca6" in plan["hosts"]["hv1"]["guests"]
    assert "cb6" in plan["hosts"]["hv3"]["guests"]
    after = allocations(plan)
    for key, value in before.items():
        assert after[key] == value, key


def test_the_plan_moves_back_to_the_controller_with_every_allocation(
    project, collections, tmp_path
):
    original = allocations(fleet.plan(fleet.PLAN_B))
    back = tmp_path / "site-b-back.yml"
    result = job(
        project,
        collections,
        "mv6.transition.plan_move",
        "move",
        extra_vars={"mv6_plan_move": "to_controller", "mv6_plan_controller_file": str(back)},
    )
    assert result["rc"] == 0, awx.summary(result)
    assert allocations(fleet.plan(back)) == original
