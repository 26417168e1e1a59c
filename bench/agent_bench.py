"""The cost of a task in a guest: mv6.transition.guest_agent against community.libvirt's
libvirt_qemu, in one run on the same TCG guest (docs/guest_agent.md, "What a task costs").

Needs the local lab up (``make lab``; the guest is ``web6`` unless --guest names another
running domain with a guest agent). One playbook, so Ansible's start-up is paid once: for each
kind of task (``ping``, ``command``, ``copy`` of a 1 MiB file, ``template``, ``setup``) a
play of REPEATS such tasks through guest_agent, then the same through libvirt_qemu, then the
next kind. Task times come from the ansible.posix.json callback (each task's start and end).
Copies and templates go to a new path each time, so every one transfers.

For scale it also measures, outside Ansible: one bare agent exec of /bin/true through
libvirt-python, ``python3 -c pass`` in the guest, and the in-guest run of the ping module
itself (AnsiballZ, from the file guest_agent leaves when ANSIBLE_KEEP_REMOTE_FILES is set),
which no connection can make faster.

Run: ``.venv/bin/python bench/agent_bench.py [--repeats 5] [--guest web6]`` (as root, about
8 minutes with 5 repeats). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / ".venv" / "bin"
KINDS = {
    "ping": "ansible.builtin.ping:",
    "command": "ansible.builtin.command: /bin/true\n      changed_when: false",
    "copy_1MiB": (
        "ansible.builtin.copy:\n        src: '{blob}'\n        dest: /root/mv6-bench-{i}.bin\n"
        "        mode: '0600'"
    ),
    "template": (
        "ansible.builtin.template:\n        src: '{template}'\n"
        "        dest: /root/mv6-bench-{i}.conf\n        mode: '0644'"
    ),
    "setup": "ansible.builtin.setup:",
}
CONNECTIONS = {
    "guest_agent": {
        "ansible_connection": "mv6.transition.guest_agent",
        "mv6_guest_hypervisor": "localhost",
    },
    "libvirt_qemu": {
        "ansible_connection": "community.libvirt.libvirt_qemu",
        "ansible_libvirt_uri": "qemu:///system",
        # qemu-ga runs commands without HOME, so libvirt_qemu's "echo ~" answers "~" and
        # every remote tmp path is relative: copy and template then fail ("Source ... not
        # found"). An absolute remote_tmp gives it a fair run.
        "ansible_remote_tmp": "/root/.ansible/tmp",
    },
}


def agent_exec(domain, argv: list[str]) -> float:
    """Seconds for one guest-exec of argv and its status polls, through libvirt-python."""
    import libvirt_qemu

    def command(message: dict) -> dict:
        return json.loads(libvirt_qemu.qemuAgentCommand(domain, json.dumps(message), 30, 0))[
            "return"
        ]

    start = time.monotonic()
    pid = command({"execute": "guest-exec", "arguments": {"path": argv[0], "arg": argv[1:]}})["pid"]
    while not command({"execute": "guest-exec-status", "arguments": {"pid": pid}})["exited"]:
        time.sleep(0.005)
    return time.monotonic() - start


def floors(guest: str, repeats: int, env: dict, inventory: Path) -> dict:
    import libvirt

    conn = libvirt.open("qemu:///system")
    domain = conn.lookupByName(guest)
    out = {
        "bare_agent_exec_true": [agent_exec(domain, ["/bin/true"]) for _i in range(repeats)],
        "guest_python3_c_pass": [
            agent_exec(domain, ["/usr/bin/python3", "-c", "pass"]) for _i in range(repeats)
        ],
    }
    # The ping module's own run in the guest, from the file a kept remote tmp leaves.
    proc = subprocess.run(
        [
            str(BIN / "ansible"),
            "-i",
            str(inventory),
            "guest_agent",
            "-m",
            "ping",
            "-e",
            "ansible_pipelining=false",
        ],
        env=dict(env, ANSIBLE_KEEP_REMOTE_FILES="1"),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if proc.returncode == 0:
        import libvirt_qemu

        listing = ["/bin/sh", "-c", "ls -t /root/.ansible/tmp/*/AnsiballZ_ping.py | head -1"]
        pid = json.loads(
            libvirt_qemu.qemuAgentCommand(
                domain,
                json.dumps(
                    {
                        "execute": "guest-exec",
                        "arguments": {
                            "path": listing[0],
                            "arg": listing[1:],
                            "capture-output": True,
                        },
                    }
                ),
                30,
                0,
            )
        )["return"]["pid"]
        while True:
            status = json.loads(
                libvirt_qemu.qemuAgentCommand(
                    domain,
                    json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}}),
                    30,
                    0,
                )
            )["return"]
            if status["exited"]:
                break
            time.sleep(0.01)
        path = base64.b64decode(status.get("out-data", "")).decode().strip()
        if path:
            out["ping_module_in_guest"] = [
                agent_exec(domain, ["/usr/bin/python3", path]) for _i in range(repeats)
            ]
            agent_exec(domain, ["/bin/sh", "-c", "rm -rf /root/.ansible/tmp/ansible-tmp-*"])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--guest", default="web6")
    args = parser.parse_args()
    state = subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", "domstate", args.guest],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    if state != "running":
        print(f"agent_bench: guest {args.guest} is not running (make lab first)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="mv6-agent-bench-") as tmp:
        work = Path(tmp)
        blob = work / "blob.bin"
        blob.write_bytes(os.urandom(1 << 20))
        template = work / "bench.conf.j2"
        template.write_text("guest={{ inventory_hostname }}\nwhen={{ now() }}\n")
        hosts = {
            "localhost": {
                "ansible_connection": "local",
                "ansible_python_interpreter": str(BIN / "python"),
            }
        }
        for name, conn in CONNECTIONS.items():
            hosts[name] = dict(
                conn, ansible_host=args.guest, ansible_python_interpreter="/usr/bin/python3"
            )
        inventory = work / "inventory.json"
        inventory.write_text(json.dumps({"all": {"hosts": hosts}}))
        plays = []
        for kind, task in KINDS.items():
            for name in CONNECTIONS:
                tasks = [
                    f"    - name: {kind} {i}\n      ignore_errors: true\n      "
                    + task.format(blob=blob, template=template, i=f"{name}-{i}")
                    for i in range(args.repeats)
                ]
                plays.append(
                    f"- name: {kind} through {name}\n  hosts: {name}\n  gather_facts: false\n"
                    "  tasks:\n" + "\n".join(tasks)
                )
        plays.append(
            "- name: Clean up\n  hosts: guest_agent\n  gather_facts: false\n  tasks:\n"
            "    - name: Remove the bench files\n"
            "      ansible.builtin.shell: rm -f /root/mv6-bench-*\n"
        )
        playbook = work / "bench.yml"
        playbook.write_text("\n".join(plays) + "\n")
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
            ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
            PATH=f"{BIN}:{os.environ['PATH']}",
        )
        start = time.monotonic()
        proc = subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", str(inventory), str(playbook)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
        wall = time.monotonic() - start
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-4000:], file=sys.stderr)
            return 1
        result = json.loads(proc.stdout)
        times: dict[str, dict[str, list[float]]] = {}
        failures: dict[str, dict[str, list[str]]] = {}
        for play in result["plays"]:
            for task in play["tasks"]:
                kind = task["task"]["name"].rsplit(" ", 1)[0]
                for host, res in task["hosts"].items():
                    if host not in CONNECTIONS:
                        continue
                    if res.get("failed") or res.get("unreachable"):
                        failures.setdefault(kind, {}).setdefault(host, []).append(
                            str(res.get("msg", ""))[:300]
                        )
                        continue
                    duration = task["task"]["duration"]
                    seconds = (
                        datetime.fromisoformat(duration["end"].replace("Z", "+00:00"))
                        - datetime.fromisoformat(duration["start"].replace("Z", "+00:00"))
                    ).total_seconds()
                    times.setdefault(kind, {}).setdefault(host, []).append(seconds)
        summary = {}
        for kind, by_conn in times.items():
            medians = {c: round(statistics.median(v), 3) for c, v in by_conn.items()}
            entry = {
                "median_s": medians,
                "all_s": {c: [round(x, 3) for x in v] for c, v in by_conn.items()},
            }
            if medians.get("guest_agent") and medians.get("libvirt_qemu"):
                entry["libvirt_qemu_over_guest_agent"] = round(
                    medians["libvirt_qemu"] / medians["guest_agent"], 2
                )
            summary[kind] = entry
        floor = {
            k: round(statistics.median(v), 3)
            for k, v in floors(
                args.guest,
                args.repeats,
                env=dict(env, ANSIBLE_STDOUT_CALLBACK="default"),
                inventory=inventory,
            ).items()
        }
        print(
            json.dumps(
                {
                    "guest": args.guest,
                    "repeats": args.repeats,
                    "playbook_wall_s": round(wall, 1),
                    "tasks": summary,
                    "floors_median_s": floor,
                    "failures": failures,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
