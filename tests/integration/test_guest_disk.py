"""mv6.transition.guest_disk through ansible-playbook, on real qcow2 chains made by qemu-img.

The golden image is a small qcow2 (64 MiB, 0xab in its first MiB), read-only like a real one.
Guests live in a work directory under /var/tmp (world-traversable, so the QEMU user's view can
be checked); the whole directory is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import run_playbook

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.files_only,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown to libvirt-qemu)"),
    pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img"),
]

PLAYBOOK = """\
- name: Drive guest_disk once
  hosts: localhost
  gather_facts: false
  tasks:
    - name: guest_disk
      mv6.transition.guest_disk:
        name: "{{ disk.name }}"
        op: "{{ disk.op | default(omit) }}"
        golden: "{{ disk.golden | default(omit) }}"
        golden_format: "{{ disk.golden_format | default(omit) }}"
        persistence: "{{ disk.persistence | default(omit) }}"
        backup: "{{ disk.backup | default(omit) }}"
        guests_dir: "{{ disk.guests_dir }}"
        images_dir: "{{ disk.images_dir }}"
        qemu_img: "{{ disk.qemu_img | default(omit) }}"
"""


def sh(*argv, timeout=60, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, timeout=timeout, check=check
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def chain(path: Path) -> list[dict]:
    out = sh("qemu-img", "info", "-U", "--output=json", "--backing-chain", path).stdout
    return json.loads(out)


def reads(path: Path, pattern: int, offset: str, length: str = "64k") -> bool:
    """True when the guest would read ``pattern`` at ``offset`` through this layer's chain."""
    proc = sh(
        "qemu-io", "-r", "-U", "-c", f"read -P {pattern:#x} {offset} {length}", path, check=False
    )
    if "Pattern verification failed" in proc.stdout + proc.stderr:
        return False
    assert proc.returncode == 0, f"qemu-io could not read {path}: {proc.stderr}"
    return True


def write(path: Path, pattern: int, offset: str, length: str = "64k") -> None:
    sh("qemu-io", "-f", "qcow2", "-c", f"write -P {pattern:#x} {offset} {length}", path)


class Lab:
    def __init__(self, root: Path):
        self.root = root
        self.images = root / "images"
        self.guests = root / "guests"
        self.backups = root / "backups"
        self.playbook = root / "guest_disk.yml"
        self.playbook.write_text(PLAYBOOK)
        self.images.mkdir()
        self.golden = self.make_golden("golden-v1.qcow2")

    def make_golden(self, name: str) -> Path:
        path = self.images / name
        sh("qemu-img", "create", "-q", "-f", "qcow2", path, "64M")
        write(path, 0xAB, "0", "1M")
        path.chmod(0o444)
        return path

    def disk(self, name: str, check: bool = False, diff: bool = False, **args) -> dict:
        """Run the module once; return the task result (with ``failed``/``msg`` on failure)."""
        args = {
            "name": name,
            "guests_dir": str(self.guests),
            "images_dir": str(self.images),
            **{k: str(v) if isinstance(v, Path) else v for k, v in args.items()},
        }
        old = os.environ.get("ANSIBLE_DIFF_ALWAYS")
        os.environ["ANSIBLE_DIFF_ALWAYS"] = "1" if diff else "0"
        try:
            result = run_playbook(self.playbook, {"disk": args}, check=check, timeout=120)
        finally:
            if old is None:
                os.environ.pop("ANSIBLE_DIFF_ALWAYS")
            else:
                os.environ["ANSIBLE_DIFF_ALWAYS"] = old
        try:
            task = result["plays"][0]["tasks"][0]
        except (KeyError, IndexError):
            raise AssertionError(f"playbook did not run: {result}") from None
        return task["hosts"]["localhost"]

    def ok(self, name: str, **args) -> dict:
        res = self.disk(name, **args)
        assert not res.get("failed"), res.get("msg")
        return res

    def layer(self, guest: str, which: str = "persistent") -> Path:
        return self.guests / guest / f"{which}.qcow2"


@pytest.fixture(scope="module")
def lab():
    root = Path(tempfile.mkdtemp(prefix="t-img-disk-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield Lab(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_create_check_mode_apply_idempotence_and_diff(lab):
    res = lab.ok("t-img-a", golden=lab.golden, check=True, diff=True)
    assert res["changed"] is True
    assert not (lab.guests / "t-img-a").exists()
    assert res["diff"]["after"]["persistent"]["backing"] == str(lab.golden)

    res = lab.ok("t-img-a", golden=lab.golden, diff=True)
    assert res["changed"] is True
    assert res["diff"]["before"] == {}
    top = chain(lab.layer("t-img-a"))
    assert top[0]["backing-filename"] == str(lab.golden)
    assert top[0]["backing-filename-format"] == "qcow2"
    assert reads(lab.layer("t-img-a"), 0xAB, "0", "1M")

    st = lab.layer("t-img-a").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (
        0o660,
        int(sh("id", "-u", "libvirt-qemu").stdout),
        int(sh("getent", "group", "kvm").stdout.split(":")[2]),
    )
    assert (lab.guests / "t-img-a").stat().st_mode & 0o777 == 0o750
    # The unprivileged QEMU user can open the whole chain.
    sh("runuser", "-u", "libvirt-qemu", "--", "qemu-img", "info", "-U", "--backing-chain",
       lab.layer("t-img-a"))  # fmt: skip

    res = lab.ok("t-img-a", golden=lab.golden, diff=True)
    assert res["changed"] is False
    assert res["diff"]["before"] == res["diff"]["after"]
    assert lab.ok("t-img-a", golden=lab.golden, check=True)["changed"] is False


def test_create_through_symlink_names_the_versioned_file(lab):
    link = lab.images / "golden.qcow2"
    link.symlink_to(lab.golden.name)
    try:
        lab.ok("t-img-l", golden=link)
        assert chain(lab.layer("t-img-l"))[0]["backing-filename"] == str(lab.golden)
    finally:
        link.unlink()
        lab.ok("t-img-l", op="absent")


def test_create_refuses_a_layer_with_another_backing(lab):
    other = lab.make_golden("golden-other.qcow2")
    lab.ok("t-img-w", golden=lab.golden)
    res = lab.disk("t-img-w", golden=other)
    assert res["failed"]
    assert f"is backed by {lab.golden}, expected {other}" in res["msg"]
    assert chain(lab.layer("t-img-w"))[0]["backing-filename"] == str(lab.golden)
    lab.ok("t-img-w", op="absent")


def test_bad_input_fails_before_any_change(lab):
    res = lab.disk("../escape", golden=lab.golden)
    assert res["failed"] and "name: '../escape' is not a valid guest name" in res["msg"]
    res = lab.disk("t-img-n")
    assert res["failed"] and "golden" in res["msg"]
    res = lab.disk("t-img-n", golden=lab.images / "missing.qcow2")
    assert res["failed"] and "does not exist" in res["msg"]
    assert not (lab.guests / "t-img-n").exists()


def test_session_write_then_discard_is_gone(lab):
    lab.ok("t-img-s", golden=lab.golden, persistence="non_persistent")
    session = lab.layer("t-img-s", "session")
    assert chain(session)[0]["backing-filename"] == str(lab.layer("t-img-s"))
    write(session, 0xCD, "2M")
    assert reads(session, 0xCD, "2M")

    res = lab.ok("t-img-s", op="discard", check=True)
    assert res["changed"] is True and reads(session, 0xCD, "2M")
    res = lab.ok("t-img-s", op="discard", diff=True)
    assert res["changed"] is True
    assert res["diff"]["before"]["session"]["dirty"] is True
    assert res["diff"]["after"]["session"]["dirty"] is False
    assert reads(session, 0x00, "2M")
    assert reads(session, 0xAB, "0", "1M")
    assert lab.ok("t-img-s", op="discard")["changed"] is False


def test_session_write_then_commit_is_kept_and_golden_unchanged(lab):
    golden_before = sha256(lab.golden)
    lab.ok("t-img-c", golden=lab.golden, persistence="non_persistent")
    lab.ok("t-img-sib", golden=lab.golden, persistence="non_persistent")
    session = lab.layer("t-img-c", "session")
    write(session, 0xCD, "2M")

    assert lab.ok("t-img-c", op="commit", check=True)["changed"] is True
    assert reads(lab.layer("t-img-c"), 0x00, "2M")  # check mode committed nothing

    res = lab.ok("t-img-c", op="commit", diff=True)
    assert res["changed"] is True
    assert reads(lab.layer("t-img-c"), 0xCD, "2M")
    assert reads(session, 0xCD, "2M")  # the new session sees it through its backing
    assert res["layers"]["session"]["dirty"] is False
    assert sha256(lab.golden) == golden_before
    assert lab.ok("t-img-c", op="commit")["changed"] is False

    # The sibling made from the same golden image never sees the writes.
    for layer in ("persistent", "session"):
        assert reads(lab.layer("t-img-sib", layer), 0x00, "2M")
        assert reads(lab.layer("t-img-sib", layer), 0xAB, "0", "1M")


def test_commit_refuses_to_target_the_golden_image(lab):
    lab.ok("t-img-g", golden=lab.golden)
    session = lab.layer("t-img-g", "session")
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", lab.golden, "-F", "qcow2", session)
    write(session, 0xEE, "3M")
    golden_before = sha256(lab.golden)

    res = lab.disk("t-img-g", op="commit", golden=lab.golden)
    assert res["failed"]
    assert res["msg"] == (
        f"refusing to commit: the session layer is backed directly by the golden image "
        f"{lab.golden}; commit would write into the read-only shared base"
    )
    res = lab.disk("t-img-g", op="commit")  # no golden given: the images directory guards
    assert res["failed"]
    assert res["msg"] == (
        f"refusing to commit: target {lab.golden} is inside the golden image directory {lab.images}"
    )
    assert sha256(lab.golden) == golden_before
    assert reads(session, 0xEE, "3M")
    # check reports the broken chain too
    res = lab.disk("t-img-g", op="check")
    assert res["failed"] and f"session layer {session} is backed by {lab.golden}" in res["msg"]
    lab.ok("t-img-g", op="absent")


def test_check_on_a_good_chain(lab):
    lab.ok("t-img-k", golden=lab.golden, persistence="non_persistent")
    res = lab.ok("t-img-k", op="check", golden=lab.golden)
    assert res["changed"] is False
    assert set(res["check"]) == {"persistent", "session"}
    assert all(r["check-errors"] == 0 and r["rc"] == 0 for r in res["check"].values())
    lab.ok("t-img-k", op="absent")


def test_backup_absent_restore_gives_identical_layer(lab):
    lab.ok("t-img-b", golden=lab.golden)
    write(lab.layer("t-img-b"), 0x5A, "5M", "1M")
    original = sha256(lab.layer("t-img-b"))
    backup = lab.backups / "t-img-b.qcow2"

    res = lab.ok("t-img-b", op="backup", backup=backup, check=True)
    assert res["changed"] is True and not backup.exists()
    res = lab.ok("t-img-b", op="backup", backup=backup)
    assert res["changed"] is True
    side = json.loads(backup.with_name(backup.name + ".json").read_text())
    assert side["sha256"] == original == sha256(backup)
    assert side["backing_file"] == str(lab.golden)
    assert side["backing_sha256"] == sha256(lab.golden)
    assert lab.ok("t-img-b", op="backup", backup=backup)["changed"] is False

    res = lab.ok("t-img-b", op="absent")
    assert not (lab.guests / "t-img-b").exists()
    assert lab.golden.exists()

    assert lab.ok("t-img-b", op="restore", backup=backup, check=True)["changed"] is True
    assert not (lab.guests / "t-img-b").exists()
    res = lab.ok("t-img-b", op="restore", backup=backup, golden=lab.golden)
    assert res["changed"] is True
    assert sha256(lab.layer("t-img-b")) == original
    assert reads(lab.layer("t-img-b"), 0x5A, "5M", "1M")
    assert lab.ok("t-img-b", op="restore", backup=backup)["changed"] is False


def test_restore_of_a_tampered_backup_fails(lab):
    lab.ok("t-img-t", golden=lab.golden)
    write(lab.layer("t-img-t"), 0x11, "1M")
    backup = lab.backups / "t-img-t.qcow2"
    lab.ok("t-img-t", op="backup", backup=backup)
    write(lab.layer("t-img-t"), 0x22, "1M")  # the guest moved on after the backup
    current = sha256(lab.layer("t-img-t"))
    backup.chmod(0o600)
    write(backup, 0x66, "8M")  # someone changed the backup
    res = lab.disk("t-img-t", op="restore", backup=backup)
    assert res["failed"]
    assert f"backup {backup} fails its checksum: sha256 is {sha256(backup)}" in res["msg"]
    assert "the backup is damaged or was modified" in res["msg"]
    assert sha256(lab.layer("t-img-t")) == current
    lab.ok("t-img-t", op="absent")


def test_restore_against_another_golden_version_fails(lab):
    golden = lab.make_golden("golden-v2.qcow2")
    lab.ok("t-img-v", golden=golden)
    backup = lab.backups / "t-img-v.qcow2"
    lab.ok("t-img-v", op="backup", backup=backup)
    lab.ok("t-img-v", op="absent")
    old_sha = sha256(golden)
    golden.chmod(0o644)  # a new version of the base under the same name
    write(golden, 0x77, "6M")
    golden.chmod(0o444)
    res = lab.disk("t-img-v", op="restore", backup=backup)
    assert res["failed"]
    assert res["msg"] == (
        f"backup {backup} was taken on golden image version {old_sha[:12]} (sha256 {old_sha}), "
        f"but {golden} is now version {sha256(golden)[:12]} (sha256 {sha256(golden)}); "
        "restoring it would give a corrupt disk"
    )
    assert not (lab.guests / "t-img-v").exists()


def test_absent_removes_only_its_own_files(lab):
    lab.ok("t-img-x", golden=lab.golden, persistence="non_persistent")
    lab.ok("t-img-y", golden=lab.golden, persistence="non_persistent")
    sibling = {p: sha256(p) for p in (lab.guests / "t-img-y").iterdir()}
    golden_sha = sha256(lab.golden)

    res = lab.ok("t-img-x", op="absent", check=True)
    assert res["changed"] is True and lab.layer("t-img-x").exists()
    res = lab.ok("t-img-x", op="absent")
    assert res["changed"] is True
    assert sorted(res["removed"]) == sorted(
        [str(lab.layer("t-img-x")), str(lab.layer("t-img-x", "session")),
         str(lab.guests / "t-img-x")]
    )  # fmt: skip
    assert not (lab.guests / "t-img-x").exists()
    assert lab.ok("t-img-x", op="absent")["changed"] is False
    assert {p: sha256(p) for p in (lab.guests / "t-img-y").iterdir()} == sibling
    assert sha256(lab.golden) == golden_sha

    # A layer that is a symlink to the golden image: refuse, remove nothing.
    (lab.guests / "t-img-z").mkdir()
    lab.layer("t-img-z").symlink_to(lab.golden)
    lab.layer("t-img-z", "session").write_bytes(b"")
    res = lab.disk("t-img-z", op="absent")
    assert res["failed"]
    assert "outside the guest's own directory; refusing to remove anything" in res["msg"]
    assert lab.layer("t-img-z", "session").exists() and lab.golden.exists()

    # A guest directory that is a symlink into another guest: refuse.
    (lab.guests / "t-img-q").symlink_to(lab.guests / "t-img-y")
    res = lab.disk("t-img-q", op="absent")
    assert res["failed"] and "refusing to remove anything" in res["msg"]
    assert {p: sha256(p) for p in (lab.guests / "t-img-y").iterdir()} == sibling


@contextlib.contextmanager
def held(layer: Path):
    """qemu-io holding ``layer`` open for writing: it stands in for a running guest's QEMU."""
    holder = subprocess.Popen(
        ["qemu-io", "-f", "qcow2", str(layer)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # Wait for QEMU's OFD locks on the file to show in /proc/locks. Probing with a locking
        # qemu-img would race the holder's own open: either could then fail on the other's lock.
        inode = re.compile(rf"^\d+: OFDLCK .* [0-9a-f]+:[0-9a-f]+:{layer.stat().st_ino} ", re.M)
        deadline = time.monotonic() + 30
        while not inode.search(Path("/proc/locks").read_text()):
            assert holder.poll() is None, f"qemu-io exited early (rc={holder.returncode})"
            assert time.monotonic() < deadline, "qemu-io did not take the image lock in 30 s"
            time.sleep(0.2)
        assert sh("qemu-img", "info", layer, check=False).returncode != 0, "image not locked"
        yield
    finally:
        holder.communicate(b"quit\n", timeout=10)


IN_USE = "cannot be opened for a consistent read (is the guest running?)"


def test_layers_in_use_are_not_touched(lab):
    lab.ok("t-img-u", golden=lab.golden, persistence="non_persistent")
    session = lab.layer("t-img-u", "session")
    write(session, 0x42, "2M")
    with held(session):
        for op in ("discard", "commit"):
            res = lab.disk("t-img-u", op=op)
            assert res["failed"], op
            assert IN_USE in res["msg"]
        assert reads(session, 0x42, "2M")
    assert lab.ok("t-img-u", op="discard")["changed"] is True
    lab.ok("t-img-u", op="absent")


def test_a_completed_commit_is_not_finished_over_a_session_in_use(lab):
    """A crash after the commit, before the new session: the journal says 'committed' and the
    next operation makes the session anew. Before, it did so even while a guest (started by
    hand after the crash) ran on that session, losing what the guest wrote since."""
    lab.ok("t-img-c", golden=lab.golden, persistence="non_persistent")
    session = lab.layer("t-img-c", "session")
    journal = lab.guests / "t-img-c" / "commit.journal"
    journal.write_text(
        json.dumps(
            {
                "op": "commit",
                "stage": "committed",
                "session": str(session),
                "target": str(lab.layer("t-img-c")),
                "time": int(time.time()),
            }
        )
    )
    write(session, 0x37, "2M")
    with held(session):
        res = lab.disk("t-img-c", op="discard")
        assert res["failed"] and IN_USE in res["msg"], res
        assert journal.exists()
        assert reads(session, 0x37, "2M")
    res = lab.ok("t-img-c", op="discard")
    assert any(a.startswith("create session layer anew") for a in res["actions"]), res["actions"]
    assert not journal.exists()
    assert not reads(session, 0x37, "2M")
    lab.ok("t-img-c", op="absent")


def test_create_keeps_a_guest_on_an_earlier_version_of_its_image(lab):
    v1 = lab.make_golden("img-aaaa.qcow2")
    v2 = lab.make_golden("img-bbbb.qcow2")
    for path, version in ((v1, "img-aaaa"), (v2, "img-bbbb")):
        sidecar = path.with_name(f"{version}.recipe.json")
        sidecar.write_text(json.dumps({"name": "img", "version": version, "sha256": sha256(path)}))
    lab.ok("t-img-old", golden=v1)
    res = lab.ok("t-img-old", golden=v2)
    assert res["changed"] is False
    assert res["golden"] == str(v1)
    assert any("stays on" in w and "earlier version" in w for w in res.get("warnings", []))
    assert chain(lab.layer("t-img-old"))[0]["backing-filename"] == str(v1)
    lab.ok("t-img-old", op="absent")


def plant(layer: Path, hostile: Path) -> None:
    """What a guest's root can do through QEMU: rewrite its own layer's bytes (the file, its
    owner and its mode stay)."""
    data = hostile.read_bytes()
    with open(layer, "r+b") as handle:
        handle.write(data)
        handle.truncate()


def hostile_data_file(lab, victim: Path, backing: Path) -> Path:
    """A qcow2 image on ``backing`` whose header names ``victim`` as its external data file."""
    hostile = lab.root / f"hostile-{victim.name}.qcow2"
    victim.unlink(missing_ok=True)
    sh(
        "qemu-img",
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        backing,
        "-F",
        "qcow2",
        "-o",
        f"data_file={victim}",
        hostile,
        "64M",
    )
    # The victim stands for any host file: root's, with content that must not change.
    victim.write_bytes(os.urandom(1 << 20) * 4)
    victim.chmod(0o644)
    return hostile


def test_planted_data_file_headers_are_refused_by_every_op(lab):
    """A layer whose header names a data file: before, commit (run as root) wrote the
    session's bytes into that file. Now every operation refuses, naming file and field."""
    lab.ok("t-img-df", golden=lab.golden, persistence="non_persistent")
    persistent, session = lab.layer("t-img-df"), lab.layer("t-img-df", "session")
    backup = lab.backups / "t-img-df.qcow2"
    lab.ok("t-img-df", op="backup", backup=backup)
    clean = {p: p.read_bytes() for p in (persistent, session)}
    victim = lab.root / "victim.bin"
    cases = {
        session: hostile_data_file(lab, victim, persistent),
        persistent: hostile_data_file(lab, victim, lab.golden),
    }
    victim_sha = sha256(victim)
    for layer, hostile in cases.items():
        plant(layer, hostile)
        ops = [
            {"op": "commit"},
            {"op": "discard"},
            {"op": "create", "golden": lab.golden, "persistence": "non_persistent"},
            {"op": "check"},
        ]
        if layer == persistent:
            ops.append({"op": "backup", "backup": lab.backups / "t-img-df-2.qcow2"})
        for args in ops:
            res = lab.disk("t-img-df", **args)
            assert res.get("failed"), (layer.name, args, res)
            assert f"{layer}: the qcow2 header names an external data file" in res["msg"], res[
                "msg"
            ]
            assert "(field: data-file)" in res["msg"]
            assert sha256(victim) == victim_sha, (layer.name, args)
        layer.write_bytes(clean[layer])
    # A planted backup: the sidecar's checksum is made to match, the header still refuses.
    plant(backup, cases[persistent])
    sidecar = Path(f"{backup}.json")
    side = json.loads(sidecar.read_text())
    side["sha256"] = sha256(backup)
    sidecar.write_text(json.dumps(side))
    res = lab.disk("t-img-df", op="restore", backup=backup)
    assert res.get("failed") and "(field: data-file)" in res["msg"], res
    assert sha256(victim) == victim_sha
    assert persistent.read_bytes() == clean[persistent]
    lab.ok("t-img-df", op="absent")


def test_json_and_foreign_backing_names_are_refused(lab):
    lab.ok("t-img-js", golden=lab.golden, persistence="non_persistent")
    persistent, session = lab.layer("t-img-js"), lab.layer("t-img-js", "session")
    shadow = 'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}'
    other = lab.root / "other.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", other, "64M")
    for backing, fmt, field in (
        (shadow, "raw", "is not an absolute path (field: backing)"),
        (str(other), "qcow2", "is not the expected file (field: backing)"),
        ("../persistent.qcow2", "qcow2", "is not an absolute path (field: backing)"),
    ):
        sh("qemu-img", "rebase", "-u", "-F", fmt, "-b", backing, session)
        for op in ("commit", "discard", "check"):
            res = lab.disk("t-img-js", op=op)
            assert res.get("failed") and field in res["msg"], (backing, op, res)
    sh("qemu-img", "rebase", "-u", "-F", "qcow2", "-b", persistent, session)
    lab.ok("t-img-js", op="check")
    lab.ok("t-img-js", op="absent")


KILLER = """#!/bin/sh
# qemu-img, except that a commit runs at 16 MiB/s and is killed (SIGKILL) after one second.
if [ "$1" = commit ]; then
    shift
    exec timeout -s KILL 1 qemu-img commit -r 16M "$@"
fi
exec qemu-img "$@"
"""


def test_commit_killed_midway_is_finished_by_the_next_operation(lab):
    """Before, the next start's default (discard) threw the session away over a persistent
    layer holding part of it. Now the journal makes the next operation finish the commit."""
    lab.ok("t-img-k", golden=lab.golden, persistence="non_persistent")
    persistent, session = lab.layer("t-img-k"), lab.layer("t-img-k", "session")
    write(session, 0x5A, "4M", "48M")
    killer = lab.root / "qemu-img-killed"
    killer.write_text(KILLER)
    killer.chmod(0o755)

    res = lab.disk("t-img-k", op="commit", qemu_img=killer)
    assert res.get("failed") and "qemu-img commit" in res["msg"], res
    journal = lab.guests / "t-img-k" / "commit.journal"
    assert json.loads(journal.read_text())["stage"] == "committing"
    assert not reads(persistent, 0x5A, "4M", "48M"), "the commit was not interrupted midway"
    res = lab.disk("t-img-k", op="check")
    assert res.get("failed") and "a commit was interrupted" in res["msg"]

    res = lab.ok("t-img-k", op="discard", check=True)
    assert any(a.startswith("finish the commit") for a in res["actions"]), res["actions"]
    assert journal.exists()
    res = lab.ok("t-img-k", op="discard")
    assert any(a.startswith("finish the commit") for a in res["actions"]), res["actions"]
    assert not journal.exists()
    assert reads(persistent, 0x5A, "4M", "48M")
    assert reads(persistent, 0xAB, "0", "1M")
    assert reads(session, 0x5A, "4M", "48M")
    lab.ok("t-img-k", op="check")
    lab.ok("t-img-k", op="absent")


PUBLISH = """\
- name: Publish one image
  hosts: localhost
  gather_facts: false
  tasks:
    - name: image_file
      mv6.transition.image_file:
        op: publish
        path: "{{ src }}"
        dest: "{{ dest }}"
        marker: "{{ marker }}"
"""


def test_publish_never_replaces_a_complete_image(lab):
    """A golden image was published with `mv -f`: a second build of the same version replaced
    the file that guests' overlays were backed by. Now the same content is no change, other
    content is refused, and only a publish that never completed (no sidecar) is replaced."""
    playbook = lab.root / "publish.yml"
    playbook.write_text(PUBLISH)
    dest, marker = lab.images / "pub-1.qcow2", lab.images / "pub-1.recipe.json"

    def publish(content: bytes) -> dict:
        src = lab.images / "pub-1.qcow2.tmp"
        src.write_bytes(content)
        result = run_playbook(playbook, {"src": str(src), "dest": str(dest), "marker": str(marker)})
        return result["plays"][0]["tasks"][0]["hosts"]["localhost"]

    first = publish(b"one" * 1000)
    assert first["changed"] and not first.get("failed"), first
    assert dest.read_bytes() == b"one" * 1000 and dest.stat().st_mode & 0o777 == 0o444
    # Not complete yet (no sidecar): an interrupted publish is replaced.
    second = publish(b"two" * 1000)
    assert second["changed"] and dest.read_bytes() == b"two" * 1000, second
    marker.write_text("{}")
    inode = dest.stat().st_ino
    same = publish(b"two" * 1000)
    assert not same["changed"] and not same.get("failed"), same
    other = publish(b"six" * 1000)
    assert other.get("failed") and "is never replaced" in other["msg"], other
    assert dest.read_bytes() == b"two" * 1000 and dest.stat().st_ino == inode
    for path in (dest, marker, lab.images / "pub-1.qcow2.tmp"):
        path.unlink(missing_ok=True)
