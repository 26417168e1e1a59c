"""Run commands in a guest through its QEMU guest agent (no network involved).

The guests are managed over the virtio-serial agent channel, as the collection does with
community.libvirt's libvirt_qemu connection. Tests need only "run this, give me rc and
output", and must be able to start a long-running command (a sniffer) and collect it later;
one libvirt call per step (guest-exec, guest-exec-status) does that in well under a second,
where an Ansible task over the connection plugin costs several seconds.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from pathlib import Path

import libvirt
import libvirt_qemu

RAWNET = (Path(__file__).parent / "rawnet.py").read_text()
GUEST_PYTHON = "/usr/bin/python3"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Result:
    rc: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        lines = self.stdout.strip().splitlines()
        if not lines:
            raise AssertionError(f"no output (rc={self.rc}): {self.stderr}")
        return json.loads(lines[-1])


class Guest:
    def __init__(self, name: str, uri: str = "qemu:///system") -> None:
        self.name = name
        self.conn = libvirt.open(uri)
        self.dom = self.conn.lookupByName(name)

    def _agent(self, command: str, arguments: dict | None = None, timeout: int = 30) -> dict:
        msg = {"execute": command}
        if arguments is not None:
            msg["arguments"] = arguments
        reply = libvirt_qemu.qemuAgentCommand(self.dom, json.dumps(msg), timeout, 0)
        return json.loads(reply)["return"]

    def ping(self) -> bool:
        try:
            self._agent("guest-ping", timeout=5)
        except libvirt.libvirtError:
            return False
        return True

    def wait_agent(self, timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.dom.isActive() and self.ping():
                return
            time.sleep(2)
        raise TimeoutError(f"guest {self.name}: agent does not answer after {timeout} s")

    def spawn(self, argv: list[str], stdin: bytes | None = None) -> int:
        args = {
            "path": argv[0],
            "arg": argv[1:],
            "env": [f"PATH={GUEST_PATH}", "LC_ALL=C"],
            "capture-output": True,
        }
        if stdin is not None:
            args["input-data"] = base64.b64encode(stdin).decode()
        return self._agent("guest-exec", args)["pid"]

    def collect(self, pid: int, timeout: float = 120) -> Result:
        end = time.monotonic() + timeout
        while True:
            st = self._agent("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                break
            if time.monotonic() > end:
                raise TimeoutError(f"guest {self.name}: pid {pid} still running after {timeout} s")
            time.sleep(0.2)
        out = base64.b64decode(st.get("out-data", "")).decode(errors="replace")
        err = base64.b64decode(st.get("err-data", "")).decode(errors="replace")
        return Result(st.get("exitcode", -1 if st.get("signal") else 0), out, err)

    def run(self, argv: list[str], timeout: float = 120, stdin: bytes | None = None) -> Result:
        return self.collect(self.spawn(argv, stdin), timeout)

    def sh(self, script: str, timeout: float = 120) -> Result:
        return self.run(["/bin/sh", "-c", script], timeout)

    def rawnet(self, command: str, arg: dict, timeout: float = 180) -> dict:
        res = self.run([GUEST_PYTHON, "-c", RAWNET, command, json.dumps(arg)], timeout)
        if res.rc != 0:
            raise AssertionError(f"guest {self.name}: rawnet {command} rc={res.rc}: {res.stderr}")
        return res.json()

    def rawnet_spawn(self, command: str, arg: dict) -> int:
        return self.spawn([GUEST_PYTHON, "-c", RAWNET, command, json.dumps(arg)])

    def rawnet_collect(self, pid: int, timeout: float = 180) -> dict:
        res = self.collect(pid, timeout)
        if res.rc != 0:
            raise AssertionError(f"guest {self.name}: rawnet rc={res.rc}: {res.stderr}")
        return res.json()

    def exists(self, path: str) -> bool:
        return self.run(["/usr/bin/test", "-e", path], timeout=30).rc == 0

    def close(self) -> None:
        self.conn.close()
