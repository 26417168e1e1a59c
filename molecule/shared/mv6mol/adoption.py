"""What the adoption checks share (molecule/shared/tests/test_adoption.py and
test_teardown.py): the comparison of native-state records and the host's native service."""

from __future__ import annotations

import difflib
import subprocess

import pytest

from mv6mol.scenario import NETNS_PYTHON, Scenario
from mv6mol.site import bare, ephemeral_dir


def compare(before: dict, now: dict) -> None:
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


def service_pid() -> int:
    return int((ephemeral_dir() / "service-host-native.pid").read_text())


def service_answers(scn: Scenario) -> str:
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
