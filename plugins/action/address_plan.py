# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Controller side of mv6.transition.address_plan: read the play, plan, write the plan file.

All planning is in module_utils/_plan.py; this file only gathers plain data from hostvars and
handles check mode, diff mode and the result. The documentation is in modules/address_plan.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ansible.errors import AnsibleActionFail, AnsibleConnectionFailure
from ansible.plugins.action import ActionBase
from ansible_collections.mv6.transition.plugins.module_utils import _plan, _plan_store

ARGUMENT_SPEC = {
    "plan_file": {"type": "path"},
    "prune": {"type": "bool", "default": False},
    "release_hosts": {"type": "list", "elements": "str", "default": []},
    "lock_timeout": {"type": "int", "default": 120},
    "diagram": {"type": "raw"},
    "return_diagram": {"type": "bool", "default": False},
    "keeper_create": {"type": "bool", "default": False},
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
        keeper = self._keeper(hostvars, play_hosts)
        plan_file = args["plan_file"] or self._plan_file(hostvars, task_vars, keeper)
        if keeper and not os.path.isabs(plan_file):
            # A path on the keeper: ~ or a relative path would be the controller's.
            raise AnsibleActionFail(
                f"mv6_plan_file: {plan_file} is a path on the plan keeper {keeper} and must be "
                f"absolute; nothing was planned or written"
            )
        request = {
            "native_family": site["mv6_native_family"][1],
            "parallel": site["mv6_parallel"][1],
            "guests_by_host": guests_by_host,
            "native_by_host": native_by_host,
            "inventory_hosts": [str(h) for h in groups.get("all", []) if h not in added],
            "prune": args["prune"],
            "release_hosts": args["release_hosts"],
        }
        diagram = _plain(args["diagram"])  # ansible-core 2.19 hands out tagged values
        if diagram is None:
            host = str(task_vars["inventory_hostname"])
            diagram = self._host_var(hostvars[host], host, "mv6_plan_diagram")
        if keeper:
            done = self._plan_on_keeper(keeper, plan_file, request, diagram, args, task_vars)
        else:
            try:
                done = _plan_store.plan_here(
                    plan_file, request, self._task.check_mode, args["lock_timeout"], diagram
                )
            except ValueError as e:
                raise AnsibleActionFail(str(e)) from e
        before, after, plan = done["before"], done["after"], done["plan"]
        changed = after != before or done["drawn"]

        result.update(
            changed=changed,
            plan=plan,
            plan_file=plan_file,
            diagram_file=done["diagram_file"],
            keeper=keeper,
        )
        if args["return_diagram"]:
            result["diagram_svg"] = done["diagram_svg"]
        result["ansible_facts"] = {"mv6_plan": plan}
        if self._task.diff and changed:
            # One diff per file that changes: at fleet scale the host added, not the fleet.
            directory = _plan.hosts_dir(plan_file)
            where = f"{keeper}:" if keeper else ""
            result["diff"] = [
                {
                    "before": before.get(name, ""),
                    "after": after.get(name, ""),
                    "before_header": where + (os.path.join(directory, name) if name else plan_file),
                    "after_header": where + (os.path.join(directory, name) if name else plan_file),
                }
                for name in sorted(set(before) | set(after))
                if before.get(name) != after.get(name)
            ]
        return result

    def _plan_on_keeper(self, keeper, plan_file, request, diagram, args, task_vars) -> dict:
        """Lock, read, plan, write and draw on the keeper, in one module run there: the task
        is delegated to the keeper, so the module goes over the keeper's own connection."""
        delegated = self._task.delegate_to
        if str(delegated or "") != keeper:
            raise AnsibleActionFail(
                f"mv6_plan_keeper: is {keeper}, so the plan is kept there and the planner must "
                f'run there: delegate the task to it (delegate_to: "{{{{ mv6_plan_keeper }}}}", '
                f"as playbooks/plan.yml does), it is delegated to {delegated or 'no host'}; "
                f"nothing was planned or written"
            )
        try:
            done = self._keeper_module(plan_file, request, diagram, args, task_vars)
        except AnsibleConnectionFailure as e:
            # Name the keeper: ansible-core would report the play's host as unreachable.
            raise AnsibleActionFail(
                f"mv6_plan_keeper: the plan keeper {keeper} cannot be reached: {e.message}; "
                f"nothing was planned or written"
            ) from None
        if done.get("failed") or done.get("unreachable"):
            message = done.get("msg") or done.get("module_stderr") or "the module failed"
            raise AnsibleActionFail(f"plan keeper {keeper}: {message}", result=done)
        return done

    def _keeper_module(self, plan_file, request, diagram, args, task_vars) -> dict:
        return self._execute_module(
            module_name="mv6.transition.plan_keeper",
            module_args={
                "op": "plan",
                "plan_file": plan_file,
                "request": request,
                "diagram": diagram,
                "lock_timeout": args["lock_timeout"],
                "create": args["keeper_create"],
            },
            task_vars=task_vars,
        )

    @staticmethod
    def _keeper(hostvars, play_hosts) -> str | None:
        """mv6_plan_keeper, one value for the whole play (it is the site's store), or None."""
        found = None
        for host in sorted(play_hosts):
            value = ActionModule._host_var(hostvars[host], host, "mv6_plan_keeper") or None
            if found is None:
                found = (host, value)
            elif found[1] != value:
                raise AnsibleActionFail(
                    f"mv6_plan_keeper: host {host} has a different value than host {found[0]}; "
                    f"one plan is kept in one place (set it in group_vars)"
                )
        keeper = found[1] if found else None
        if keeper is not None and (not isinstance(keeper, str) or keeper not in hostvars):
            raise AnsibleActionFail(
                f"mv6_plan_keeper: {keeper!r} is not a host of the inventory; name the "
                f"inventory host that keeps the plan, or leave it empty for the controller file"
            )
        return keeper

    @staticmethod
    def _host_var(hv, host: str, name: str):
        try:
            return _plain(hv.get(name)) if name in hv else None
        except Exception as e:  # templating errors of any kind: name the variable
            raise AnsibleActionFail(f"{name}: cannot be read for host {host}: {e}") from e

    @staticmethod
    def _plan_file(hostvars, task_vars, keeper: str | None) -> str:
        host = str(task_vars["inventory_hostname"])
        path = ActionModule._host_var(hostvars[host], host, "mv6_plan_file")
        if keeper:
            return str(path) if path else _plan_store.KEEPER_PLAN_FILE
        if path:
            return os.path.expanduser(str(path))
        inventory_dir = task_vars.get("inventory_dir")
        job = task_vars.get("awx_job_id", task_vars.get("tower_job_id"))
        if job is not None:
            # An AWX job's inventory directory is in its private data directory, which goes
            # with the job: every allocation would be forgotten after it (docs/awx.md).
            raise AnsibleActionFail(
                f"mv6_plan_keeper: this is AWX job {job}, and without a plan keeper the plan "
                f"would be the file {os.path.join(str(inventory_dir), 'mv6_plan.yml')}, in the "
                f"job's own directory, which goes with the job: name the inventory host that "
                f"keeps the plan in mv6_plan_keeper, or set mv6_plan_file to a path that outlives "
                f"the job; nothing was planned or written"
            )
        if not inventory_dir:
            raise AnsibleActionFail(
                "plan_file: not given, and neither mv6_plan_file nor inventory_dir is defined"
            )
        return os.path.join(str(inventory_dir), "mv6_plan.yml")
