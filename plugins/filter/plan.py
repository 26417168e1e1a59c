# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Filters over the MV6 address plan; each is a thin wrapper of module_utils/_plan.py.

The documentation of each filter is in the sidecar file of the same name (host_plan.yml, ...).
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.mv6.transition.plugins.module_utils import _diagram, _plan


def plan_site(plan):
    try:
        return _plan.site_block(plan)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


def host_plan(plan, host):
    try:
        return _plan.host_entry(plan, host)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


def guest_plan(plan, host, guest):
    try:
        return _plan.guest_entry(plan, host, guest)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


def parallel_subnet(parallel, host_slot):
    try:
        return _plan.parallel_subnet(parallel, host_slot)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


def guest_address(parallel, host_slot, guest_slot, router=False):
    try:
        return _plan.guest_address(parallel, host_slot, guest_slot, router)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


def guest_mac(parallel, host_slot, guest_slot):
    try:
        return _plan.guest_mac(parallel, host_slot, guest_slot)
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


def plan_diagram(
    plan,
    native_addresses=None,
    persistence=None,
    summary_over=_diagram.SUMMARY_OVER,
    default_persistence="persistent",
):
    try:
        return _diagram.render(
            plan, native_addresses, persistence, summary_over, str(default_persistence)
        )
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


class FilterModule:
    def filters(self):
        return {
            "plan_site": plan_site,
            "host_plan": host_plan,
            "guest_plan": guest_plan,
            "parallel_subnet": parallel_subnet,
            "guest_address": guest_address,
            "guest_mac": guest_mac,
            "plan_diagram": plan_diagram,
        }
