"""Run the collection's modules and playbooks from a verify step, against the scenario inventory.

Molecule hands the verifier its environment (ANSIBLE_CONFIG of the scenario, which carries
collections_path, and MOLECULE_INVENTORY_FILE); the JSON callback gives results to assert on.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def inventory() -> str:
    return str(Path(os.environ["MOLECULE_INVENTORY_FILE"]).parent)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    return env


def module(host: str, name: str, args: dict, timeout: float = 600) -> dict:
    """Run one module on one host; return its result (raises on a failed or broken run)."""
    proc = subprocess.run(
        ["ansible", host, "-i", inventory(), "-m", name, "-a", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        check=False,
    )
    try:
        data = json.loads(proc.stdout)
        result = data["plays"][0]["tasks"][0]["hosts"][host]
    except (ValueError, KeyError, IndexError) as e:
        raise AssertionError(
            f"ansible {name}: rc={proc.returncode} {proc.stdout} {proc.stderr}"
        ) from e
    if result.get("failed"):
        raise AssertionError(f"{name} {args} failed: {result.get('msg')}")
    return result


def playbook(path: str | Path, extra_vars: dict | None = None, timeout: float = 1200) -> dict:
    """Run a playbook; return {"rc", "stats", "failures": [msg]}."""
    cmd = ["ansible-playbook", "-i", inventory(), str(path)]
    if extra_vars:
        cmd += ["-e", json.dumps(extra_vars)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=_env(), check=False
    )
    try:
        data = json.loads(proc.stdout)
    except ValueError as e:
        raise AssertionError(
            f"{path}: rc={proc.returncode}: {proc.stdout[-3000:]} {proc.stderr}"
        ) from e
    failures = [
        f"{task['task']['name']}: {res.get('msg')}"
        for play in data.get("plays", [])
        for task in play.get("tasks", [])
        for res in task.get("hosts", {}).values()
        if res.get("failed") and not res.get("ignore_errors")
    ]
    return {"rc": proc.returncode, "stats": data.get("stats", {}), "failures": failures}
