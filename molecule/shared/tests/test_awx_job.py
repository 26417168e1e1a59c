"""The local lab run the AWX way (in v6_parallel, after the adoption checks): site.yml and
verify.yml as jobs through ansible-runner (molecule/shared/mv6mol/awx.py: a fresh private data
directory and project per job, AWX's inventory script and extra variables), from the
collection built and installed from its tarball as an execution environment holds it, never
from the checkout. The fleet scenario runs the same jobs over SSH with the plan on a keeper
(molecule/fleet/tests/test_fleet_awx.py).
"""

from __future__ import annotations

import pytest
from mv6mol import awx
from mv6mol.ansible_run import inventory
from mv6mol.scenario import Scenario, load
from mv6mol.site import ephemeral_dir


@pytest.fixture(scope="module")
def scn() -> Scenario:
    return load()


@pytest.fixture(scope="module")
def collections(tmp_path_factory):
    return awx.installed_collection(tmp_path_factory.mktemp("ee") / "collections")


def job(tmp_path, collections, playbook: str, name: str, **kw) -> dict:
    """A job of a project that holds no playbook of its own: the playbooks are the installed
    collection's, the inventory the scenario's (AWX would have synced it into its database)."""
    project = tmp_path / f"project-{name}"
    project.mkdir()
    return awx.Job(
        project,
        playbook,
        [inventory()],
        collections=collections,
        name=name,
        log_dir=ephemeral_dir() / "awx-jobs",
        **kw,
    ).run()


def test_an_adopt_job_from_the_installed_collection_changes_nothing(
    scn: Scenario, tmp_path, collections
) -> None:
    """The "MV6 adopt one host" job template's run (its limit: the host and mv6_guests) on
    the converged lab host: nothing to change, the audit clean, the plan unchanged."""
    before = (ephemeral_dir() / "mv6_plan.yml").read_bytes()
    result = job(
        tmp_path, collections, "mv6.transition.site", "adopt", limit=f"{scn.hypervisor},mv6_guests"
    )
    assert result["rc"] == 0, awx.summary(result)
    assert awx.changed(result).get(scn.hypervisor, 0) == 0, awx.summary(result)
    audit = result["artifacts"]["mv6_audit"]
    assert audit["violation_count"] == 0, audit
    assert (ephemeral_dir() / "mv6_plan.yml").read_bytes() == before


def test_a_verify_job_returns_the_lab_audit_as_artifacts(
    scn: Scenario, tmp_path, collections
) -> None:
    result = job(tmp_path, collections, "mv6.transition.verify", "verify")
    assert result["rc"] == 0, awx.summary(result)
    audit = result["artifacts"]["mv6_verify"]
    assert audit["violation_count"] == 0, audit
    guests = audit["hosts"][scn.hypervisor]["guests"]
    assert sorted(guests) == sorted(g.name for g in scn.guests), audit
    assert all(v == [] for v in guests.values()), audit
