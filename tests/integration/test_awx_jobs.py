"""Jobs run the AWX way (ansible-runner, a fresh private data directory and project copy per
job, AWX's extra variables, limits as job slices) against the plan keeper.

The hypervisors here are planned only (plan.yml gathers their network facts, over the local
connection, and changes nothing on them); the keeper is reached over the local connection and
keeps the plan in this test's own directory. The fleet scenario runs the same jobs against a
keeper that is a remote host over SSH, and site.yml and verify.yml as jobs
(molecule/fleet/tests/test_fleet_awx.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(PROJECT / "molecule" / "shared"))
sys.path.insert(0, str(PROJECT / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _plan  # noqa: E402
from mv6mol import awx  # noqa: E402

pytestmark = [pytest.mark.files_only, pytest.mark.timeout(600)]

GUESTS = {"hva": ["web6", "db6"], "hvb": ["app6"]}


def write_project(root: Path, kept: Path | None, guests: dict[str, list[str]]) -> Path:
    """A user's AWX project: an inventory of hypervisors, and the keeper when kept is given."""
    inventory = root / "inventory"
    (inventory / "host_vars").mkdir(parents=True, exist_ok=True)
    site = {
        "mv6_native_family": "ipv4",
        "mv6_parallel": {"prefix": "2001:db8:6f0::/48"},
    }
    if kept is not None:
        # These sites are new: the keeper may start their plan (it refuses by default).
        site.update(
            {
                "mv6_plan_keeper": "keeper",
                "mv6_plan_file": str(kept),
                "mv6_plan_keeper_create": True,
            }
        )
    hosts = {
        "all": {
            "vars": {
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            },
            "children": {
                "mv6_hypervisors": {"hosts": {h: {} for h in guests}, "vars": site},
                "mv6_plan_keepers": {"hosts": {"keeper": {}}},
            },
        }
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    for host, names in guests.items():
        entry = {"mv6_guests": [{"name": n} for n in names]}
        (inventory / "host_vars" / f"{host}.yml").write_text(yaml.safe_dump(entry))
    # The user's own playbook: plan, then hand the plan to AWX as an artifact.
    (root / "plan_and_show.yml").write_text(SHOW)
    return root


SHOW = """---
- name: Plan
  ansible.builtin.import_playbook: mv6.transition.plan

- name: Show the plan
  hosts: mv6_hypervisors
  gather_facts: false
  tasks:
    - name: The plan as an artifact
      ansible.builtin.set_stats:
        data:
          plan: "{{ mv6_plan }}"
      run_once: true
"""


@pytest.fixture(scope="module")
def collections(tmp_path_factory) -> Path:
    """The collection as an execution environment holds it: built and installed."""
    return awx.installed_collection(tmp_path_factory.mktemp("ee") / "collections")


def plan_job(project: Path, collections: Path, name: str, **kw) -> awx.Job:
    return awx.Job(
        project,
        "mv6.transition.plan",
        ["inventory/hosts.yml"],
        collections=collections,
        name=name,
        **kw,
    )


def allocations(plan: dict) -> dict:
    """Every guest's slot, MAC, address and port, and every host's slot and subnet."""
    out = {}
    for host, entry in plan["hosts"].items():
        out[host] = (entry["slot"], entry["subnet"])
        for guest, g in entry["guests"].items():
            out[f"{host}/{guest}"] = (g["slot"], g["mac"], g["address"], g["port"])
    return out


def show_job(project: Path, collections: Path) -> dict:
    result = awx.Job(
        project, "plan_and_show.yml", ["inventory/hosts.yml"], collections=collections, name="show"
    ).run()
    assert result["rc"] == 0, awx.summary(result)
    return result["artifacts"]["plan"]


def test_without_a_keeper_a_job_refuses_the_plan_file_that_goes_with_it(tmp_path, collections):
    """Why the keeper exists: the default plan file is in the job's inventory directory,
    inside its private data directory, and gone after the job; each job would plan from
    nothing (removing db6 moved web6 to db6's address and MAC, the measurement in issue 14).
    So an AWX job without a keeper and without mv6_plan_file is refused before any change."""
    project = write_project(tmp_path / "p1", None, GUESTS)
    result = plan_job(project, collections, "plan").run()
    assert result["rc"] != 0
    failures = " ".join(m for msgs in result["failures"].values() for m in msgs)
    assert "mv6_plan_keeper: this is AWX job" in failures, awx.summary(result)
    assert "set mv6_plan_file to a path that outlives the job" in failures
    assert not list(tmp_path.rglob("mv6_plan.yml"))


def test_a_keeper_starts_a_new_plan_only_when_told_to(tmp_path, collections):
    """A mistyped path, or a plan never moved from the controller's file, would otherwise be
    a new plan with new addresses for every host: refused, and nothing is written there."""
    kept = tmp_path / "keeper" / "site.yml"
    project = write_project(tmp_path / "p", kept, GUESTS)
    result = plan_job(
        project, collections, "plan", extra_vars={"mv6_plan_keeper_create": False}
    ).run()
    assert result["rc"] != 0
    failures = " ".join(m for msgs in result["failures"].values() for m in msgs)
    assert "mv6_plan_keeper_create: no plan at" in failures, awx.summary(result)
    assert "plan_move.yml" in failures
    assert not kept.parent.exists()
    # Told to, it starts one; after that the variable is not needed.
    created = plan_job(project, collections, "plan").run()
    assert created["rc"] == 0, awx.summary(created)
    again = plan_job(project, collections, "plan", extra_vars={"mv6_plan_keeper_create": False})
    result = again.run()
    assert result["rc"] == 0 and awx.changed(result) == {}, awx.summary(result)


def test_with_a_keeper_the_same_jobs_keep_web6_where_it_was(tmp_path, collections):
    kept = tmp_path / "keeper" / "site.yml"
    project = write_project(tmp_path / "p1", kept, GUESTS)
    first = show_job(project, collections)["hosts"]["hva"]["guests"]
    write_project(project, kept, {"hva": ["web6"], "hvb": ["app6"]})
    second = show_job(project, collections)["hosts"]["hva"]["guests"]
    assert second["db6"]["released"] is True
    assert second["web6"] == first["web6"]


def test_jobs_in_a_row_keep_every_allocation_on_the_keeper(tmp_path, collections):
    kept = tmp_path / "keeper" / "site.yml"
    project = write_project(tmp_path / "p", kept, GUESTS)
    first = plan_job(project, collections, "plan").run()
    assert first["rc"] == 0, awx.summary(first)
    before = allocations(_plan.read_plan(str(kept))[0])
    # Each AWX job's plan picture is its artifact (issue 17): the job's files are gone.
    assert first["artifacts"]["mv6_plan_picture"].startswith("<?xml"), first["artifacts"].keys()
    assert first["artifacts"]["mv6_plan_picture_file"] == f"keeper:{kept.with_suffix('.svg')}"

    again = plan_job(project, collections, "plan").run()
    assert again["rc"] == 0 and awx.changed(again) == {}, awx.summary(again)
    assert allocations(_plan.read_plan(str(kept))[0]) == before

    # db6 removed, and a new hypervisor hv0 that sorts first: nothing given moves.
    write_project(project, kept, {"hv0": ["new6"], "hva": ["web6"], "hvb": ["app6"]})
    third = plan_job(project, collections, "plan").run()
    assert third["rc"] == 0, awx.summary(third)
    plan = _plan.read_plan(str(kept))[0]
    after = allocations(plan)
    for key, value in before.items():
        assert after[key] == value, key
    assert plan["hosts"]["hva"]["guests"]["db6"]["released"] is True
    assert "hv0/new6" in after


PLANNER = "Compute the address plan"


@contextlib.contextmanager
def holding(lock: Path):
    """The plan's lock, as another run on the keeper would hold it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def test_concurrent_job_slices_lose_nothing(tmp_path, collections):
    """Two slices of one sliced job template run at the same time, each limited to its own
    hosts, each adding a guest from its own project copy. The test holds the keeper's lock
    until both slices are planning, so both wait for it and then contend: each must have
    waited, and both guests must be in the plan with no allocation moved."""
    kept = tmp_path / "keeper" / "site.yml"
    guests = {h: list(names) for h, names in GUESTS.items()}
    base = write_project(tmp_path / "base", kept, guests)
    assert plan_job(base, collections, "plan").run()["rc"] == 0
    before = allocations(_plan.read_plan(str(kept))[0])
    a = write_project(tmp_path / "a", kept, {**guests, "hva": [*guests["hva"], "sa6"]})
    b = write_project(tmp_path / "b", kept, {**guests, "hvb": [*guests["hvb"], "sb6"]})
    jobs = (
        plan_job(a, collections, "slice1", limit="hva"),
        plan_job(b, collections, "slice2", limit="hvb"),
    )
    with holding(Path(f"{kept}.lock")):
        threads = awx.start(*jobs)
        awx.wait_until(
            lambda: all(j.saw("runner_on_start", PLANNER) for j in jobs),
            240,
            "both slices planning",
        )
        time.sleep(2)
        # Neither planned while the lock was held.
        assert not any(j.saw("runner_on_ok", PLANNER) for j in jobs), [j.seen for j in jobs]
    one, two = awx.finish(threads, jobs, 300)
    assert one["rc"] == 0, awx.summary(one)
    assert two["rc"] == 0, awx.summary(two)
    plan = _plan.read_plan(str(kept))[0]
    assert "sa6" in plan["hosts"]["hva"]["guests"]
    assert "sb6" in plan["hosts"]["hvb"]["guests"]
    after = allocations(plan)
    for key, value in before.items():
        assert after[key] == value, key


def test_a_plan_moves_to_the_keeper_and_back_with_every_allocation(tmp_path, collections):
    controller = tmp_path / "controller" / "mv6_plan.yml"
    kept = tmp_path / "keeper" / "site.yml"
    project = write_project(tmp_path / "p", None, GUESTS)
    (project / "inventory" / "group_vars").mkdir()
    (project / "inventory" / "group_vars" / "all.yml").write_text(
        yaml.safe_dump({"mv6_plan_file": str(controller)})
    )
    assert plan_job(project, collections, "plan").run()["rc"] == 0
    original = allocations(_plan.read_plan(str(controller))[0])

    write_project(project, kept, GUESTS)
    (project / "inventory" / "group_vars" / "all.yml").write_text(
        yaml.safe_dump({"mv6_plan_controller_file": str(controller)})
    )
    move = awx.Job(
        project,
        "mv6.transition.plan_move",
        ["inventory/hosts.yml"],
        collections=collections,
        extra_vars={"mv6_plan_move": "to_keeper"},
        name="move",
    ).run()
    assert move["rc"] == 0, awx.summary(move)
    assert allocations(_plan.read_plan(str(kept))[0]) == original
    assert kept.with_suffix(".svg").exists()  # drawn beside the moved plan
    # Planning on the keeper now changes nothing.
    again = plan_job(project, collections, "plan").run()
    assert again["rc"] == 0 and awx.changed(again) == {}, awx.summary(again)

    back = tmp_path / "controller2" / "mv6_plan.yml"
    (project / "inventory" / "group_vars" / "all.yml").write_text(
        yaml.safe_dump({"mv6_plan_controller_file": str(back)})
    )
    home = awx.Job(
        project,
        "mv6.transition.plan_move",
        ["inventory/hosts.yml"],
        collections=collections,
        extra_vars={"mv6_plan_move": "to_controller"},
        name="move",
    ).run()
    assert home["rc"] == 0, awx.summary(home)
    assert allocations(_plan.read_plan(str(back))[0]) == original
    # A different plan at the destination is never replaced.
    refused = awx.Job(
        project,
        "mv6.transition.plan_move",
        ["inventory/hosts.yml"],
        collections=collections,
        extra_vars={"mv6_plan_move": "to_keeper", "mv6_plan_file": str(tmp_path / "other.yml")},
        name="move",
    )
    other = tmp_path / "other.yml"
    write_project(tmp_path / "o", None, {"hva": ["x6"]})
    (tmp_path / "o" / "inventory" / "group_vars").mkdir()
    (tmp_path / "o" / "inventory" / "group_vars" / "all.yml").write_text(
        yaml.safe_dump({"mv6_plan_file": str(other)})
    )
    assert plan_job(tmp_path / "o", collections, "plan").run()["rc"] == 0
    text = other.read_text()
    failed = refused.run()
    assert failed["rc"] != 0
    assert any(
        "already holds a different plan" in m for ms in failed["failures"].values() for m in ms
    )
    assert other.read_text() == text
