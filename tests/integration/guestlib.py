"""Helpers shared by the integration tests that boot real guests (test_guest.py and
test_guest_network.py): a private copy of the golden image, the guest agent, and clean-up."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

URI = "qemu:///system"
GOLDEN_CACHE = Path("/var/tmp/t-gst/golden")
GOLDEN_FILES = {"path": ".qcow2", "kernel": ".vmlinuz", "initrd": ".initrd"}
# Commands that only read state may be asked again when the agent of a TCG guest on a busy
# machine misses its deadline once; guest-exec itself is never repeated.
_REPEATABLE = {"guest-exec-status", "guest-ping", "guest-info"}
_ATTEMPTS = 3


# A virsh call is ~0.02 s with a valid QEMU capabilities cache, but 30-40 s when libvirt
# re-probes QEMU (docs/hypervisor.md, "The /dev/kvm device"), and TCG guests load the host.
VIRSH_TIMEOUT = 180


def sh(*argv: str, timeout: int = 60, check: bool = True) -> subprocess.CompletedProcess:
    if argv and argv[0] == "virsh":
        timeout = max(timeout, VIRSH_TIMEOUT)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def golden_image() -> dict | None:
    """The golden image to test with, {path, kernel, initrd[, cmdline]}, or None.

    The newest image of roles/golden_image (or MV6_TEST_GOLDEN: a .qcow2 with .vmlinuz and
    .initrd beside it) is copied, sparse and read-only, into GOLDEN_CACHE, so another
    engineer's teardown of /var/lib/mv6/images cannot pull it away in the middle of a run.
    """
    source = None
    candidates = [os.environ.get("MV6_TEST_GOLDEN", ""), "/var/lib/mv6/images/debian12.qcow2"]
    for path in filter(None, candidates):
        base = path[: -len(".qcow2")]
        files = {"path": path, "kernel": base + ".vmlinuz", "initrd": base + ".initrd"}
        if all(Path(f).is_file() for f in files.values()):
            source = {k: Path(v).resolve() for k, v in files.items()}
            recipe = Path(base + ".recipe.json")
            cmdline = json.loads(recipe.read_text()).get("cmdline") if recipe.is_file() else None
            break
    staged = {k: GOLDEN_CACHE / f"debian12{ext}" for k, ext in GOLDEN_FILES.items()}
    stamp = GOLDEN_CACHE / "source.json"
    if source is not None:
        wanted = {"source": str(source["path"]), "cmdline": cmdline}
        if not stamp.is_file() or json.loads(stamp.read_text()) != wanted:
            shutil.rmtree(GOLDEN_CACHE, ignore_errors=True)
            GOLDEN_CACHE.mkdir(parents=True)
            for key, dest in staged.items():
                sh("cp", "--sparse=always", str(source[key]), str(dest), timeout=300)
                dest.chmod(0o444)
            stamp.write_text(json.dumps(wanted))
        for directory in (GOLDEN_CACHE.parent, GOLDEN_CACHE):
            directory.chmod(0o755)
    if not stamp.is_file():
        return None
    image = {k: str(v) for k, v in staged.items()}
    cmdline = json.loads(stamp.read_text()).get("cmdline")
    if cmdline:
        image["cmdline"] = cmdline
    return image


def agent(domain: str, command: dict, timeout: int = 10) -> dict:
    """One QEMU guest agent command through libvirt; its "return" member."""
    argv = ("virsh", "-q", "-c", URI, "qemu-agent-command", "--timeout", str(timeout), domain)
    attempts = _ATTEMPTS if command["execute"] in _REPEATABLE else 1
    for attempt in range(1, attempts + 1):
        proc = sh(*argv, json.dumps(command), timeout=timeout + 10, check=attempt == attempts)
        if proc.returncode == 0:
            break
        time.sleep(1)
    return json.loads(proc.stdout)["return"]


def guest_run(domain: str, path: str, args: list[str], timeout: int = 60) -> tuple[int, str]:
    """Run a program in the guest through its agent; return its exit code and stdout."""
    pid = agent(
        domain,
        {
            "execute": "guest-exec",
            "arguments": {"path": path, "arg": args, "capture-output": True},
        },
    )["pid"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = agent(domain, {"execute": "guest-exec-status", "arguments": {"pid": pid}})
        if status["exited"]:
            return status.get("exitcode", -1), base64.b64decode(status.get("out-data", "")).decode()
        time.sleep(0.3)
    raise TimeoutError(f"{path} {args} did not finish in {domain} within {timeout} s")


def remove_domains(prefix: str) -> None:
    names = sh("virsh", "-q", "-c", URI, "list", "--all", "--name", check=False).stdout.split()
    for name in names:
        if name.startswith(prefix):
            sh("virsh", "-c", URI, "destroy", name, check=False)
            sh("virsh", "-c", URI, "undefine", name, check=False)
