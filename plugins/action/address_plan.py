# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Controller side of mv6.transition.address_plan: read the play, plan, write the plan file.

All planning is in module_utils/_plan.py; this file only gathers plain data from hostvars and
handles check mode, diff mode and the result. The documentation is in modules/address_plan.py.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Mapping

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible_collections.mv6.transition.plugins.module_utils import _diagram, _plan

ARGUMENT_SPEC = {
    "plan_file": {"type": "path"},
    "prune": {"type": "bool", "default": False},
    "release_hosts": {"type": "list", "elements": "str", "default": []},
    "lock_timeout": {"type": "int", "default": 120},
    "diagram": {"type": "raw"},
}
SITE_VARIABLES = ("mv6_native_family", "mv6_parallel")
# Settings that plan v2 moved into mv6_parallel: an inventory that still sets one would be
# planned (and a version 1 plan migrated) with the default instead, so it is refused first.
MOVED = {
    "mv6_hypervisor_nft_table": "mv6_parallel.nft_table",
    "mv6_hypervisor_host_guard": "mv6_parallel.host_guard",
    "mv6_guest_network_dhcp_pool_offset": "mv6_parallel.dhcp4_pool_size (the pool is planned)",
    "mv6_guest_network_dhcp_pool_size": "mv6_parallel.dhcp4_pool_size",
}


def _plain(value):
    """A copy made of plain dict/list/str/int/float/bool/None (hostvars hold tagged types)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return value


def _native_facts(facts) -> dict:
    """The host's own addresses, gateways and networks, when facts were gathered."""
    if not isinstance(facts, Mapping):
        return {}
    native = {}
    for family in ("ipv4", "ipv6"):
        key = f"all_{family}_addresses"
        if facts.get(key):
            native[f"ansible_{key}"] = _plain(facts[key])
        default = facts.get(f"default_{family}")
        if isinstance(default, Mapping) and default:
            values = [default.get("address"), default.get("gateway")]
            if default.get("network") and default.get("netmask"):
                values.append(f"{default['network']}/{default['netmask']}")
            if default.get("address") and default.get("prefix"):
                values.append(f"{default['address']}/{default['prefix']}")
            native[f"ansible_default_{family}"] = [_plain(v) for v in values if v]
    return native


def _current_picture(path: str | None, writing: bool = True) -> str | None:
    """The text of the picture at path, None when there is none yet; ValueError when what is
    there is anything but a picture this collection drew in a regular file (it is never
    replaced), or when the picture could not be written there."""
    if not path:
        return None
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory) and not writing:
        return None  # check mode on a new site: nothing is there, and nothing is written
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(
            f"diagram: the directory of {path} does not exist or is not writable; nothing was "
            f"written (name another path, or an empty one for no picture)"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"diagram: {path} is not a regular file (a symlink, a directory, a FIFO or a "
            f"device); it was kept, and nothing was written"
        )
    try:
        # O_NOFOLLOW and O_NONBLOCK: what is swapped in after the lstat is not followed and
        # cannot block the run (and with it the plan's lock).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"diagram: cannot read {path} ({reason}); nothing was written") from None
    if not _diagram.drawn_here(text):
        raise ValueError(
            f"diagram: {path} exists and is not a plan picture this collection drew; it was "
            f"kept, and nothing was written (name another path, or an empty one for none)"
        )
    return text


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True
    _supports_async = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        task_vars = task_vars or {}
        hostvars = task_vars["hostvars"]
        play_hosts = [str(h) for h in task_vars.get("ansible_play_hosts_all") or []]
        if not play_hosts:
            play_hosts = [str(task_vars["inventory_hostname"])]

        site = {}
        guests_by_host = {}
        native_by_host = {}
        for host in sorted(play_hosts):
            hv = hostvars[host]
            for name, new in MOVED.items():
                if name in hv:
                    raise AnsibleActionFail(
                        f"{name}: is set for host {host}, but it moved into the plan (plan "
                        f"version 2): set {new} instead; nothing was planned or written"
                    )
            for name in SITE_VARIABLES:
                value = self._host_var(hv, host, name)
                if value is None:
                    raise AnsibleActionFail(f"{name}: is not defined for host {host}")
                if name not in site:
                    site[name] = (host, value)
                elif site[name][1] != value:
                    raise AnsibleActionFail(
                        f"{name}: host {host} has a different value than host {site[name][0]}; "
                        f"one plan needs one site-wide value (set it in group_vars)"
                    )
            guests_by_host[host] = self._host_var(hv, host, "mv6_guests")
            native = _native_facts(self._host_var(hv, host, "ansible_facts"))
            if native:
                native_by_host[host] = native

        # Guests this run already added to the in-memory inventory (add_host) are not hosts
        # a guest name may not take: they are the guests themselves.
        groups = task_vars.get("groups") or {}
        added = set(groups.get("mv6_guests", []))
        self._inventory_hosts = [str(h) for h in groups.get("all", []) if h not in added]
        plan_file = args["plan_file"] or self._plan_file(hostvars, task_vars)
        if args["lock_timeout"] < 0:
            raise AnsibleActionFail(
                f"lock_timeout: must be 0 or more seconds, got {args['lock_timeout']}"
            )
        diagram = self._diagram_file(args["diagram"], hostvars, task_vars, plan_file)
        try:
            _current_picture(diagram, not self._task.check_mode)  # before anything is written
        except ValueError as e:
            raise AnsibleActionFail(str(e)) from e
        # Check mode reads a file that is only ever replaced by rename: no lock needed, and
        # no lock file is created.
        lock = (
            contextlib.nullcontext()
            if self._task.check_mode
            else _plan.locked_plan_file(plan_file, args["lock_timeout"])
        )
        try:
            with lock:
                before, after, plan = self._read_build_write(
                    site, guests_by_host, native_by_host, plan_file, args
                )
                drawn = self._draw(plan, diagram)
        except ValueError as e:
            raise AnsibleActionFail(str(e)) from e
        changed = after != before or drawn

        result.update(changed=changed, plan=plan, plan_file=plan_file, diagram_file=diagram)
        result["ansible_facts"] = {"mv6_plan": plan}
        if self._task.diff and changed:
            # One diff per file that changes: at fleet scale the host added, not the fleet.
            directory = _plan.hosts_dir(plan_file)
            result["diff"] = [
                {
                    "before": before.get(name, ""),
                    "after": after.get(name, ""),
                    "before_header": os.path.join(directory, name) if name else plan_file,
                    "after_header": os.path.join(directory, name) if name else plan_file,
                }
                for name in sorted(set(before) | set(after))
                if before.get(name) != after.get(name)
            ]
        return result

    def _read_build_write(self, site, guests_by_host, native_by_host, plan_file, args):
        """Read the plan, build it, write the files that changed (not in check mode). A
        version 1 plan file is migrated in place (a copy stays as PLAN_FILE.v1)."""
        previous, before = _plan.read_plan(plan_file)
        plan = _plan.build_plan(
            site["mv6_native_family"][1],
            site["mv6_parallel"][1],
            guests_by_host,
            previous,
            prune=args["prune"],
            release_hosts=args["release_hosts"],
            native_by_host=native_by_host,
            inventory_hosts=self._inventory_hosts,
        )
        after = _plan.dump_plan(plan, plan_file, previous, before)
        if after != before and not self._task.check_mode:
            migrating = previous is not None and previous.get("version") != plan["version"]
            _plan.write_plan(plan_file, before, after, keep_v1=migrating)
        return before, after, plan

    def _draw(self, plan: dict, path: str | None) -> bool:
        """Write the plan's picture to path when it differs (not in check mode): True when
        it differs. The picture shows only what the plan holds, so that runs with different
        --limit draw the same bytes for the same plan."""
        if not path:
            return False
        text = _diagram.render(plan)
        if _current_picture(path, not self._task.check_mode) == text:
            return False
        if not self._task.check_mode:
            try:
                _plan.write_plan_file(path, text, what="diagram")
            except ValueError as e:
                raise ValueError(f"{e}; the plan itself was written") from None
        return True

    @staticmethod
    def _diagram_file(given, hostvars, task_vars, plan_file: str) -> str | None:
        """The picture's path: the diagram argument, else mv6_plan_diagram of the first
        host, else the plan file's name with .svg; an empty value draws none."""
        given = _plain(given)  # ansible-core 2.19 hands out tagged values
        if given is None:
            host = str(task_vars["inventory_hostname"])
            given = ActionModule._host_var(hostvars[host], host, "mv6_plan_diagram")
        if given is None:
            root, ext = os.path.splitext(plan_file)
            return (root if ext in (".yml", ".yaml") else plan_file) + ".svg"
        if given is False or given == "":
            return None
        if not isinstance(given, str):
            raise AnsibleActionFail(
                f"diagram: must be a path, or empty or false for no picture, got "
                f"{type(given).__name__} {given!r}"
            )
        # A relative path is the plan file's neighbour, whatever directory the run started in.
        path = os.path.join(os.path.dirname(plan_file), os.path.expanduser(given))
        taken = {os.path.realpath(p) for p in (plan_file, f"{plan_file}.lock", f"{plan_file}.v1")}
        real = os.path.realpath(path)
        hosts = os.path.realpath(_plan.hosts_dir(plan_file))
        if real in taken or real == hosts or real.startswith(hosts + os.sep):
            raise AnsibleActionFail(
                f"diagram: {given} is one of the plan's own files (the plan file, its lock, its "
                f"version 1 copy or its host files); nothing was written"
            )
        return path

    @staticmethod
    def _host_var(hv, host: str, name: str):
        try:
            return _plain(hv.get(name)) if name in hv else None
        except Exception as e:  # templating errors of any kind: name the variable
            raise AnsibleActionFail(f"{name}: cannot be read for host {host}: {e}") from e

    @staticmethod
    def _plan_file(hostvars, task_vars) -> str:
        host = str(task_vars["inventory_hostname"])
        path = ActionModule._host_var(hostvars[host], host, "mv6_plan_file")
        if path:
            return os.path.expanduser(str(path))
        inventory_dir = task_vars.get("inventory_dir")
        if not inventory_dir:
            raise AnsibleActionFail(
                "plan_file: not given, and neither mv6_plan_file nor inventory_dir is defined"
            )
        return os.path.join(str(inventory_dir), "mv6_plan.yml")
