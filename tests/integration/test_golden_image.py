"""roles/golden_image for real: build debian12 (or reuse it), prove idempotence and check mode,
import it by path with its sha256, and boot it under TCG until the guest agent answers.

SLOW the first time: building debian12 takes about 95 s (mmdebstrap ~65 s). The image goes
to the real /var/lib/mv6/images and is reused by later runs while the recipe is unchanged
(then the role run takes a few seconds and changes nothing). The boot takes 15-30 s under
TCG; the agent must answer guest-ping within BOOT_DEADLINE. See docs/testing.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from conftest import run_playbook

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mmdebstrap, /var/lib/mv6)"),
    pytest.mark.skipif(shutil.which("mmdebstrap") is None, reason="needs mmdebstrap"),
]

IMAGES = Path("/var/lib/mv6/images")
# The agent must answer before QEMU has used BOOT_DEADLINE seconds of CPU. On an idle host that
# is the same as wall time; on a host shared with other TCG guests the guest gets a fraction of
# a core, so wall time alone would measure the neighbours. BOOT_WALL_CAP bounds the wall time.
BOOT_DEADLINE = float(os.environ.get("MV6_BOOT_DEADLINE", "90"))
BOOT_WALL_CAP = 300.0

ROLE_PLAYBOOK = """\
- name: Golden images
  hosts: localhost
  gather_facts: false
  roles:
    - role: mv6.transition.golden_image
"""

DISK_PLAYBOOK = """\
- name: A guest disk on the golden image
  hosts: localhost
  gather_facts: false
  tasks:
    - name: guest_disk
      mv6.transition.guest_disk:
        name: t-img-boot
        golden: "{{ golden }}"
        guests_dir: "{{ guests_dir }}"
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def facts_of(result: dict) -> dict:
    found = None
    for play in result.get("plays", []):
        for task in play.get("tasks", []):
            for host in task["hosts"].values():
                images = host.get("ansible_facts", {}).get("mv6_golden_images")
                if images is not None:
                    found = images
    return found


def failures(result: dict) -> list[str]:
    """Messages of failed tasks, and of each failed item of a failed loop."""
    found = []
    for play in result.get("plays", []):
        for task in play.get("tasks", []):
            for host in task["hosts"].values():
                if host.get("failed"):
                    items = [r.get("msg") for r in host.get("results", []) if r.get("failed")]
                    for msg in items or [host.get("msg")]:
                        found.append(f"{task['task']['name']}: {msg}")
    return found


@pytest.fixture(scope="module")
def work():
    root = Path(tempfile.mkdtemp(prefix="t-img-gold-", dir="/var/tmp"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def built(work):
    """Build (or reuse) debian12, then run the role again: the second run changes nothing."""
    playbook = work / "golden.yml"
    playbook.write_text(ROLE_PLAYBOOK)
    first = run_playbook(playbook, {}, timeout=1500)
    assert first["rc"] == 0, failures(first) or first["stderr"][-2000:]
    second = run_playbook(playbook, {}, timeout=300)
    assert second["rc"] == 0, failures(second)
    return {"first": first, "second": second, "facts": facts_of(second), "playbook": playbook}


def test_build_is_idempotent_and_versioned(built):
    assert built["second"]["stats"]["localhost"]["changed"] == 0
    image = built["facts"]["debian12"]
    assert image == facts_of(built["first"])["debian12"]
    path = Path(image["path"])
    assert path.name == f"{image['version']}.qcow2"
    assert image["version"].startswith("debian12-") and len(image["version"]) == 21
    for key in ("path", "kernel", "initrd"):
        assert Path(image[key]).is_file()
        assert Path(image[key]).stat().st_mode & 0o777 == 0o444
    assert sha256(path) == image["sha256"]
    assert (IMAGES / "debian12.qcow2").resolve() == path
    sidecar = json.loads((IMAGES / f"{image['version']}.recipe.json").read_text())
    assert sidecar["sha256"] == image["sha256"]
    assert "qemu-guest-agent" in sidecar["recipe"]["packages"]
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", path],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    )
    assert info["format"] == "qcow2" and "backing-filename" not in info
    assert info["virtual-size"] == 2 << 30
    assert info["actual-size"] < 1 << 30  # sparse: only the used clusters


def test_changed_recipe_in_check_mode_builds_nothing(built, work):
    before = sorted(p.name for p in IMAGES.iterdir())
    recipes = [{"name": "debian12", "suite": "bookworm", "extra_packages": ["tcpdump"]}]
    result = run_playbook(
        built["playbook"], {"mv6_golden_image_recipes": recipes}, check=True, timeout=300
    )
    assert result["rc"] == 0, failures(result)
    image = facts_of(result)["debian12"]
    assert image["built"] is False
    assert image["version"] != built["facts"]["debian12"]["version"]
    assert sorted(p.name for p in IMAGES.iterdir()) == before
    assert not Path(image["path"]).exists()


def test_import_by_path_verifies_sha256(built, work):
    image = built["facts"]["debian12"]
    images_dir = work / "imported"
    good = {
        "name": "imported",
        "src": image["path"],
        "sha256": image["sha256"],
        "kernel": {"src": image["kernel"], "sha256": sha256(Path(image["kernel"]))},
    }
    extra = {"mv6_golden_image_dir": str(images_dir), "mv6_golden_image_recipes": []}

    missing = {k: v for k, v in good.items() if k != "sha256"}
    result = run_playbook(built["playbook"], {**extra, "mv6_golden_image_imports": [missing]})
    assert result["rc"] != 0
    assert any("sha256" in f for f in failures(result)), failures(result)
    assert not images_dir.exists()  # failed before anything was made

    wrong = {**good, "sha256": "0" * 64}
    result = run_playbook(built["playbook"], {**extra, "mv6_golden_image_imports": [wrong]})
    assert result["rc"] != 0
    assert any(f"expected {'0' * 64}" in f for f in failures(result)), failures(result)
    assert not list(images_dir.glob("*.qcow2"))

    result = run_playbook(built["playbook"], {**extra, "mv6_golden_image_imports": [good]})
    assert result["rc"] == 0, failures(result)
    imported = facts_of(result)["imported"]
    assert imported["version"] == f"imported-{image['sha256'][:12]}"
    assert Path(imported["path"]).stat().st_mode & 0o777 == 0o444
    assert Path(imported["kernel"]).is_file() and imported["initrd"] is None
    again = run_playbook(built["playbook"], {**extra, "mv6_golden_image_imports": [good]})
    assert again["stats"]["localhost"]["changed"] == 0


def test_import_refuses_a_header_that_names_another_file(built, work):
    """An imported qcow2 whose header names a host file as its external data file: before,
    qemu-img (as root) passed the import check and convert copied that file into the golden
    image. Now the import stops at the header, naming file and field; nothing is published."""
    victim = work / "victim.bin"
    hostile = work / "hostile.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={victim}", hostile, "8M"],
        check=True,
        timeout=60,
    )
    victim.write_bytes(os.urandom(1 << 20) * 8)
    victim_sum = sha256(victim)
    images_dir = work / "imported-hostile"
    item = {"name": "hostile", "src": str(hostile), "sha256": sha256(hostile)}
    extra = {
        "mv6_golden_image_dir": str(images_dir),
        "mv6_golden_image_build_dir": str(work / "build-hostile"),
        "mv6_golden_image_recipes": [],
        "mv6_golden_image_imports": [item],
    }
    result = run_playbook(built["playbook"], extra)
    assert result["rc"] != 0
    assert any(
        f"{hostile}: the qcow2 header names an external data file '{victim}' (field: data-file)"
        in f
        for f in failures(result)
    ), failures(result)
    assert not list(images_dir.glob("*.qcow2*")), list(images_dir.iterdir())
    assert sha256(victim) == victim_sum


@pytest.mark.parametrize("planted", ["symlink", "foreign"])
def test_a_planted_build_directory_is_refused(built, work, planted):
    """/var/tmp is everyone's: a build directory someone else made first (a symlink to their
    own directory, or a directory they own) is refused by name, and nothing is imported."""
    image = built["facts"]["debian12"]
    theirs = work / f"theirs-{planted}"
    theirs.mkdir()
    build_dir = work / f"planted-{planted}"
    if planted == "symlink":
        build_dir.symlink_to(theirs)
    else:
        build_dir.mkdir()
        os.chown(build_dir, 65534, 65534)
    extra = {
        "mv6_golden_image_dir": str(work / f"imported-{planted}"),
        "mv6_golden_image_build_dir": str(build_dir),
        "mv6_golden_image_recipes": [],
        "mv6_golden_image_imports": [
            {"name": "planted", "src": image["path"], "sha256": image["sha256"]}
        ],
    }
    result = run_playbook(built["playbook"], extra)
    assert result["rc"] != 0
    what = "a symlink" if planted == "symlink" else "owned by uid 65534"
    assert any(
        f"mv6_golden_image_build_dir: {build_dir} exists but is {what}" in " ".join(f.split())
        for f in failures(result)
    ), failures(result)
    assert list(theirs.iterdir()) == []
    assert not list((work / f"imported-{planted}").glob("*.qcow2"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Agent:
    """The QEMU guest agent protocol over the unix socket of a virtio-serial port."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(5)
        self.sock.connect(str(path))
        self.buf = b""

    def call(self, command: str, arguments: dict | None = None) -> object:
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("agent socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def sync(self) -> None:
        token = int(time.time()) & 0xFFFFFF
        reply = self.call("guest-sync", {"id": token})
        while reply.get("return") != token:  # drop answers meant for an earlier client
            line, self.buf = self.buf.split(b"\n", 1) if b"\n" in self.buf else (b"", b"")
            if not line:
                raise OSError(f"agent out of sync: {reply}")
            reply = json.loads(line)

    def close(self) -> None:
        self.sock.close()


def test_boots_under_tcg_and_agent_answers(built, work):
    image = built["facts"]["debian12"]
    guests = work / "guests"
    disk_playbook = work / "disk.yml"
    disk_playbook.write_text(DISK_PLAYBOOK)
    result = run_playbook(disk_playbook, {"golden": image["path"], "guests_dir": str(guests)})
    assert result["rc"] == 0, failures(result)
    disk = guests / "t-img-boot" / "persistent.qcow2"
    agent_sock = work / "qga.sock"
    console = work / "console.log"
    argv = [
        "qemu-system-x86_64", "-accel", "tcg", "-m", "512", "-smp", "1",
        "-display", "none", "-monitor", "none", "-no-reboot",
        # user-mode NIC: offers DHCP and RAs inside QEMU only; the guest must take neither
        "-nic", "user,model=virtio-net-pci,restrict=on",
        "-kernel", image["kernel"], "-initrd", image["initrd"],
        "-append", f"{image['cmdline']} panic=-1",
        "-drive", f"file={disk},format=qcow2,if=virtio",
        "-device", "virtio-serial",
        "-chardev", f"socket,path={agent_sock},server=on,wait=off,id=qga0",
        "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
        "-serial", f"file:{console}",
    ]  # fmt: skip
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    start = time.monotonic()
    try:
        answered, interfaces, last_error = None, None, None
        while (
            qemu.poll() is None
            and cpu_seconds(qemu.pid) < BOOT_DEADLINE
            and time.monotonic() - start < BOOT_WALL_CAP
        ):
            try:
                agent = Agent(agent_sock)
                try:
                    agent.sync()
                    if agent.call("guest-ping") == {"return": {}}:
                        answered = time.monotonic() - start
                        cpu = cpu_seconds(qemu.pid)
                        interfaces = agent.call("guest-network-get-interfaces")["return"]
                        break
                finally:
                    agent.close()
            except (OSError, ValueError) as exc:
                last_error = exc
                time.sleep(2)
        tail = console.read_text(errors="replace")[-3000:] if console.exists() else ""
        assert answered is not None, (
            f"no guest-ping answer within {BOOT_DEADLINE} s of QEMU CPU time or "
            f"{BOOT_WALL_CAP} s wall (qemu rc={qemu.poll()}, last error {last_error}, load "
            f"{os.getloadavg()}); console tail:\n{tail}"
        )
        print(f"guest agent answered guest-ping after {answered:.1f} s wall, {cpu:.1f} s CPU")
        # No DHCP, no address anywhere by default: only loopback has addresses.
        addressed = {
            i["name"]: [a["ip-address"] for a in i.get("ip-addresses", [])]
            for i in interfaces
            if i.get("ip-addresses") and i["name"] != "lo"
        }
        assert addressed == {}
        assert "FAILED" not in console.read_text(errors="replace")
    finally:
        qemu.send_signal(signal.SIGTERM)
        try:
            qemu.wait(timeout=20)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait(timeout=10)
