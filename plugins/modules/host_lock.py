#!/usr/bin/python
# Copyright (c) 2026, mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_lock
short_description: Take or release an MV6 host lock, so two runs never change one network at once
version_added: 0.4.0
description:
  - The roles take a lock per MV6 network (named after its bridge) and one for the golden images
    around everything they change on a host, and release it at the end, also when they fail. A
    second run (another C(site.yml), a teardown, an AWX job) waits for it, bounded by O(timeout),
    then fails before any change, naming who holds the lock. Two networks on one host have two
    locks and still work side by side.
  - The lock is a small JSON file, O(lock_dir)/O(name).lock, holding a random owner token, the
    controller, the time taken and a lease. Every read and write of it happens under
    C(flock(2)) on O(lock_dir)/O(name).guard, so two runs cannot both take it. A run that died
    without releasing (a killed controller) holds it until its lease ends.
  - A run that dies without releasing (a controller killed, Ctrl-C) frees the lock as soon as
    the process that carried it to the host is gone, or else when its lease ends. That process
    (the anchor) is the run's C(sshd) session on the host (it lives as long as the controller's
    connection) or, with a local connection, the C(ansible-playbook) process; its PID and start
    time are in the lock record, so a reused PID does not keep a dead lock alive.
  - Why not a held C(flock) alone - no process of a run stays on the host between two tasks.
    docs/security.md says more.
author:
  - mv6.transition developers (@mv6-transition)
options:
  name:
    description:
      - Name of the lock; letters, digits and C(_ . -), 1 to 64 characters.
    type: str
    required: true
  state:
    description:
      - V(acquired) takes the lock, waiting up to O(timeout) seconds for another owner to
        release it or for its lease to end.
      - V(released) gives it back when O(owner) holds it; releasing a lock that is gone or held
        by another owner changes nothing (and warns for the latter).
    type: str
    choices: [acquired, released]
    default: acquired
  owner:
    description:
      - The owner token that V(acquired) returned. Required for V(released).
    type: str
  timeout:
    description: Seconds to wait for the lock before failing.
    type: int
    default: 600
  lease:
    description:
      - Seconds the lock stays held if it is never released. Longer than the longest run of a role
        on one host (a golden image build, the guest agents' wait).
    type: int
    default: 3600
  holder:
    description: Who takes the lock, shown to a run that waits (for example the controller's name).
    type: str
    default: ""
  for_path:
    description:
      - A path the lock stands for (for example the golden images' directory). The lock is
        then C(NAME-HASH), HASH the first 12 hex digits of the SHA-1 of the path resolved on
        the host (symlinks, C(..), C(//) and a trailing C(/) taken out), so that two runs
        naming one directory in two spellings take one lock.
    type: path
  lock_dir:
    description: Directory of the lock files (root's, 0700).
    type: path
    default: /run/mv6/locks
attributes:
  check_mode:
    description:
      - Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      The lock is taken in check mode too: a check run reads the state that a concurrent run
      would be changing. It reports no change.
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check_mode).
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
"""

EXAMPLES = r"""
- name: Take the lock of this network
  mv6.transition.host_lock:
    name: net-mv6br0
    holder: "{{ lookup('ansible.builtin.pipe', 'hostname') }}"
  register: __lock

- name: Give it back
  mv6.transition.host_lock:
    name: net-mv6br0
    state: released
    owner: "{{ __lock.owner }}"
"""

RETURN = r"""
name:
  description: The lock's name (with O(for_path), its name on the host).
  returned: always
  type: str
  sample: images-5d1c1e0c3b2a
owner:
  description: The owner token of the lock taken (pass it to O(state=released)).
  returned: O(state=acquired)
  type: str
waited:
  description: Seconds waited for the lock.
  returned: O(state=acquired)
  type: float
previous:
  description: >-
    The record of the run that held the lock before, when this run waited or took over an
    ended lease.
  returned: when there was one
  type: dict
"""

import fcntl  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import secrets  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils._disk import (  # noqa: E402
    remove_durable,
    write_durable,
)

NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


def proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def anchor() -> dict | None:
    """The process that lives as long as this run: the nearest ancestor that is an sshd
    session, else the topmost ansible-playbook/ansible-runner process (a task runs in a forked
    worker of ansible-playbook that ends with the task, so the nearest one would not do)."""
    pid, found = os.getppid(), None
    for _step in range(64):
        if pid <= 1:
            break
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
            with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        here = {"pid": pid, "start": proc_start(pid), "cmd": cmdline[:80].strip()}
        if cmdline.startswith("sshd:") and found is None:
            return here
        if "ansible-playbook" in cmdline or "ansible-runner" in cmdline:
            found = here
        pid = ppid
    return found


def alive(record: dict) -> bool:
    """Whether the run that wrote ``record`` can still be running: its lease has not ended and
    its anchor process (when it had one) is still the same process."""
    if record.get("expires", 0) <= time.time():
        return False
    held_by = record.get("anchor")
    if isinstance(held_by, dict) and held_by.get("pid"):
        return proc_start(int(held_by["pid"])) == held_by.get("start")
    return True


def lock_name(name: str, for_path: str | None) -> str:
    """The lock's name on the host: NAME, or NAME-HASH of the resolved for_path."""
    if not for_path:
        return name
    resolved = os.path.realpath(for_path)
    return f"{name}-{hashlib.sha1(resolved.encode('utf-8')).hexdigest()[:12]}"


class Lock:
    def __init__(self, module: AnsibleModule):
        self.module = module
        params = module.params
        self.dir = params["lock_dir"]
        self.name = lock_name(params["name"], params["for_path"])
        self.path = os.path.join(self.dir, f"{self.name}.lock")
        self.guard = os.path.join(self.dir, f"{self.name}.guard")

    def ensure_dir(self) -> None:
        os.makedirs(self.dir, 0o700, exist_ok=True)
        st = os.lstat(self.dir)
        if not os.path.isdir(self.dir) or os.path.islink(self.dir) or st.st_uid != os.geteuid():
            self.module.fail_json(
                msg=f"lock_dir: {self.dir} is not a directory of this user; refusing to use it"
            )

    def read(self) -> dict | None:
        try:
            with open(self.path, encoding="utf-8") as handle:
                record = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"owner": "?", "expires": 0}  # unreadable: treat as ended
        return record if isinstance(record, dict) else {"owner": "?", "expires": 0}

    def under_guard(self, action):
        fd = os.open(self.guard, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return action()
        finally:
            os.close(fd)

    def acquire(self) -> dict:
        params = self.module.params
        owner = secrets.token_hex(16)
        start = time.monotonic()
        previous: dict = {}

        def attempt():
            now = time.time()
            record = self.read()
            if record is not None and alive(record):
                previous.update(record)
                return False
            if record is not None:
                previous.update(record, ended=True)
            mine = {
                "owner": owner,
                "holder": params["holder"],
                "anchor": anchor(),
                "since": round(now, 3),
                "expires": round(now + params["lease"], 3),
            }
            write_durable(self.path, json.dumps(mine, sort_keys=True) + "\n")
            return True

        while True:
            if self.under_guard(attempt):
                result = {
                    "changed": False,
                    "owner": owner,
                    "waited": round(time.monotonic() - start, 2),
                }
                if previous:
                    result["previous"] = {k: previous[k] for k in previous if k != "owner"}
                return result
            waited = time.monotonic() - start
            if waited >= params["timeout"]:
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(previous.get("since", 0)))
                until = time.strftime(
                    "%Y-%m-%d %H:%M:%S", time.localtime(previous.get("expires", 0))
                )
                self.module.fail_json(
                    msg=f"lock {self.name} on this host is held by another mv6 run "
                    f"(holder {previous.get('holder') or 'unknown'}, since {since}, lease until "
                    f"{until}); waited {int(waited)} s (timeout). Nothing was changed. Wait for "
                    f"that run, or if it is dead, remove {self.path}",
                    previous={k: previous[k] for k in previous if k != "owner"},
                )
            time.sleep(min(1.0, max(0.05, params["timeout"] - waited)))

    def release(self) -> dict:
        owner = self.module.params["owner"]
        if not owner:
            self.module.fail_json(msg="owner: required for state=released")

        def attempt():
            record = self.read()
            if record is None:
                return "gone"
            if record.get("owner") != owner:
                return "other"
            remove_durable(self.path)
            return "released"

        outcome = self.under_guard(attempt)
        if outcome == "other":
            self.module.warn(
                f"lock {self.name} is held by another run now (this run's lease ended); left to it"
            )
        return {"changed": False, "outcome": outcome}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "default": "acquired", "choices": ["acquired", "released"]},
            "owner": {"type": "str", "no_log": False},
            "timeout": {"type": "int", "default": 600},
            "lease": {"type": "int", "default": 3600},
            "holder": {"type": "str", "default": ""},
            "for_path": {"type": "path"},
            "lock_dir": {"type": "path", "default": "/run/mv6/locks"},
        },
        required_if=[("state", "released", ("owner",))],
        supports_check_mode=True,
    )
    params = module.params
    if not NAME.fullmatch(params["name"]):
        module.fail_json(
            msg=f"name: {params['name']!r} must be 1 to 64 letters, digits, '_', '.' or '-'"
        )
    for key in ("timeout", "lease"):
        if params[key] < (0 if key == "timeout" else 1):
            module.fail_json(msg=f"{key}: must be positive, got {params[key]}")
    lock = Lock(module)
    lock.ensure_dir()
    result = lock.acquire() if params["state"] == "acquired" else lock.release()
    module.exit_json(name=lock.name, **result)


if __name__ == "__main__":
    main()
