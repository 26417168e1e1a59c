"""Disks are files (discard, commit, backup/restore), in v6_parallel's verify step after the
network checks; its two guests are non-persistent and share one golden image.

The tests run in file order and share the guests' state on purpose: a write, a restart with
discard, a write, a commit, a backup, the disk destroyed, a restore. Disk operations go
through the collection's module (mv6.transition.guest_disk) with the guest shut off;
contents are read inside the guests over the guest agent; hashes are computed here.
(Until 3 Dec this was the verify step of a scenario of its own, ``disks``.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from pathlib import Path

import libvirt
import pytest
from mv6mol import ansible_run
from mv6mol.agent import Guest
from mv6mol.scenario import Scenario, load
from mv6mol.site import ephemeral_dir

GUESTS_DIR = Path("/var/lib/mv6/guests")
IMAGES_DIR = Path("/var/lib/mv6/images")
MARK_FILE = "/var/lib/mv6-mol-mark"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@pytest.fixture(scope="module")
def scn() -> Scenario:
    return load()


@pytest.fixture(scope="module")
def state() -> dict:
    """What the ordered tests hand on to each other."""
    return {}


@pytest.fixture(scope="module")
def first(scn: Scenario) -> Guest:
    g = Guest(scn.guests[0].name)
    g.wait_agent(300)
    yield g
    g.close()


@pytest.fixture(scope="module")
def sibling(scn: Scenario) -> Guest:
    g = Guest(scn.guests[1].name)
    g.wait_agent(300)
    yield g
    g.close()


def golden_of(name: str) -> Path:
    """The versioned golden file at the bottom of a guest's chain (read from its domain)."""
    conn = libvirt.open("qemu:///system")
    try:
        xml = conn.lookupByName(name).XMLDesc(0)
    finally:
        conn.close()
    sources = [
        line.split("'")[1]
        for line in xml.splitlines()
        if "<source file=" in line and ".qcow2" in line
    ]
    golden = [Path(s) for s in sources if Path(s).resolve().parent == IMAGES_DIR]
    assert golden, f"{name}: no layer of its chain is in {IMAGES_DIR}: {sources}"
    return golden[-1].resolve()


def write_mark(g: Guest, token: str) -> None:
    res = g.sh(f"echo {token} > {MARK_FILE} && sync && cat {MARK_FILE}")
    assert res.rc == 0 and res.stdout.strip() == token, res


def read_mark(g: Guest) -> str | None:
    res = g.sh(f"cat {MARK_FILE} 2>/dev/null")
    return res.stdout.strip() if res.rc == 0 else None


def stop(g: Guest, timeout: float = 120) -> None:
    """Clean shutdown through the agent (the guest flushes its disk), then wait for shutoff."""
    if not g.dom.isActive():
        return
    # The agent goes away while the guest powers off: no reply is expected.
    with contextlib.suppress(libvirt.libvirtError):
        g._agent("guest-shutdown", {"mode": "powerdown"}, timeout=10)
    end = time.monotonic() + timeout
    while g.dom.isActive():
        if time.monotonic() > end:
            raise TimeoutError(f"{g.name} did not power off within {timeout} s")
        time.sleep(1)


def start(g: Guest) -> None:
    g.dom.create()
    g.wait_agent(300)


def disk(op: str, scn: Scenario, name: str, **extra) -> dict:
    args = {"name": name, "op": op} | extra
    return ansible_run.module(scn.hypervisor, "mv6.transition.guest_disk", args)


def test_the_guests_are_what_the_checks_assume(scn: Scenario) -> None:
    """The first guest non-persistent (a persistent layer and a session layer on top), its
    sibling persistent (its persistent layer alone)."""
    assert len(scn.guests) >= 2, "the checks need a guest and its sibling"
    first, sibling = (GUESTS_DIR / g.name for g in scn.guests[:2])
    assert (first / "persistent.qcow2").exists(), first
    assert (first / "session.qcow2").exists(), f"{first.name} is not non-persistent"
    assert (sibling / "persistent.qcow2").exists(), sibling
    assert not (sibling / "session.qcow2").exists(), f"{sibling.name} is not persistent"


def test_golden_image_is_recorded(scn: Scenario, state: dict) -> None:
    gold_a, gold_b = golden_of(scn.guests[0].name), golden_of(scn.guests[1].name)
    assert gold_a == gold_b, "the two guests must share one golden image"
    assert oct(gold_a.stat().st_mode & 0o777) == "0o444", f"{gold_a} is writable"
    state["golden"] = gold_a
    state["golden_sha"] = sha256(gold_a)
    sidecar = json.loads(gold_a.with_suffix(".recipe.json").read_text())
    assert sidecar["sha256"] == state["golden_sha"], "golden image differs from its sidecar sha256"


def test_write_is_gone_after_restart_with_discard(scn: Scenario, first: Guest) -> None:
    token = secrets.token_hex(8)
    write_mark(first, token)
    stop(first)
    res = disk("discard", scn, first.name)
    assert res["changed"], res
    start(first)
    assert read_mark(first) is None, "the write survived a restart with discard"


def test_write_is_kept_after_commit(scn: Scenario, first: Guest, state: dict) -> None:
    token = secrets.token_hex(8)
    write_mark(first, token)
    stop(first)
    res = disk("commit", scn, first.name)
    assert res["changed"], res
    start(first)
    assert read_mark(first) == token, "the committed write is gone"
    # That it is in the persistent layer, not the session's, is the next test's: the guest
    # starts there on a fresh session layer over the restored persistent one.
    state["committed"] = token


def test_backup_destroy_restore_bring_back_identical_content(
    scn: Scenario, first: Guest, state: dict
) -> None:
    layer = GUESTS_DIR / first.name / "persistent.qcow2"
    backup = ephemeral_dir() / "backups" / f"{first.name}.qcow2"
    backup.parent.mkdir(exist_ok=True)
    backup.unlink(missing_ok=True)
    stop(first)
    before = sha256(layer)
    res = disk("backup", scn, first.name, backup=str(backup))
    assert res["changed"], res
    assert sha256(backup) == before, "the backup differs from the persistent layer"
    side = json.loads(Path(f"{backup}.json").read_text())
    assert before in json.dumps(side), f"the sidecar does not carry the layer's sha256: {side}"
    # Destroy the guest's disks.
    disk("absent", scn, first.name)
    assert not layer.exists(), "op=absent left the persistent layer"
    res = disk("restore", scn, first.name, backup=str(backup))
    assert res["changed"], res
    assert sha256(layer) == before, "restored persistent layer differs from the backup"
    # A non-persistent guest needs its session layer back on the restored layer.
    disk("create", scn, first.name, golden=str(state["golden"]), persistence="non_persistent")
    check = disk("check", scn, first.name, golden=str(state["golden"]))
    assert not check.get("failed"), check
    start(first)
    assert read_mark(first) == state["committed"], "the restored guest lost its committed write"


def test_sibling_never_sees_the_first_guests_writes(
    scn: Scenario, sibling: Guest, state: dict
) -> None:
    assert read_mark(sibling) is None, "the sibling sees the first guest's write"
    # The sibling is persistent: its own write survives a stop and a start, and it still
    # does not see the first guest's (nothing was merged into their golden image: its hash
    # is the next test's).
    token = secrets.token_hex(8)
    sibling.sh(f"echo {token} > {MARK_FILE}.own && sync")
    stop(sibling)
    start(sibling)
    res = sibling.sh(f"cat {MARK_FILE}.own")
    assert res.rc == 0 and res.stdout.strip() == token, "a persistent guest lost its write"
    assert read_mark(sibling) is None, "after a restart the sibling sees the first guest's write"


def test_golden_image_never_changed(state: dict) -> None:
    golden = state["golden"]
    assert sha256(golden) == state["golden_sha"], f"{golden} changed"
    assert oct(golden.stat().st_mode & 0o777) == "0o444", f"{golden} became writable"
    sidecar = json.loads(golden.with_suffix(".recipe.json").read_text())
    assert sidecar["sha256"] == state["golden_sha"], "golden image differs from its build record"
