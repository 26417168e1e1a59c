#!/usr/bin/python
# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: plan_keeper
short_description: Keep the MV6 plan on a managed host (the plan keeper)
version_added: 0.2.0
description:
  - Runs on the plan keeper, the inventory host named by C(mv6_plan_keeper). Whatever is done
    to the plan is done there, in one step, under the plan's lock on that host. Two runs on
    different controllers (two AWX jobs on different nodes, two job slices) take turns and
    never drop each other's allocations.
  - O(op=plan) is what M(mv6.transition.address_plan) sends when a keeper is named; use that
    module (delegated to the keeper, as C(playbooks/plan.yml) does), not this op directly.
  - O(op=read) returns the plan and writes nothing (C(verify.yml), C(teardown.yml)).
  - O(op=store) keeps a plan moved from the controller's plan file (C(playbooks/plan_move.yml)).
    It writes only where no plan is yet, or the same plan is; a different plan is never
    replaced.
  - The plan's files on the keeper are the same as on the controller (a site file and one file
    per host beside it), so a plan can be copied either way and keeps every allocation.
author:
  - mv6.transition developers (@mv6)
options:
  op:
    description: What to do with the plan.
    type: str
    choices: [plan, read, store]
    default: read
  plan_file:
    description: The plan's path on the keeper.
    type: path
    required: true
  request:
    description:
      - With O(op=plan), what the planner read from the play (the site's variables, every
        host's C(mv6_guests), native networks and options). Made by
        M(mv6.transition.address_plan).
    type: dict
  plan:
    description: With O(op=store), the version 2 plan to keep.
    type: dict
  native_family:
    description: With O(op=read), C(mv6_native_family), to read a version 1 plan.
    type: str
  parallel:
    description: With O(op=read), C(mv6_parallel), to read a version 1 plan.
    type: dict
  host:
    description:
      - With O(op=read), return only this host's entry (null when the plan does not list it).
    type: str
  diagram:
    description:
      - With O(op=plan) and O(op=store), the picture's path beside the plan, as the option
        C(diagram) of M(mv6.transition.address_plan) (null is the plan file's name with
        C(.svg), an empty string no picture).
    type: raw
  lock_timeout:
    description: Seconds to wait for another run that holds the plan's lock.
    type: int
    default: 120
  create:
    description:
      - With O(op=plan), whether a new plan may be started when none is at O(plan_file).
      - V(false) refuses, before anything is written, since a new plan would give the site's hosts
        and guests new addresses and MACs, which is what a mistyped path or keeper, or a plan
        that was never moved from the controller's file, would do without a word.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
attributes:
  check_mode:
    support: full
    details: Plans and returns the plan, writes nothing and takes no lock.
  diff_mode:
    support: none
    details: M(mv6.transition.address_plan) shows the diff from what this module returns.
  platform:
    platforms: posix
requirements:
  - python3, PyYAML and netaddr on the keeper (Debian packages C(python3-yaml), C(python3-netaddr))
seealso:
  - module: mv6.transition.address_plan
"""

EXAMPLES = r"""
- name: Read the plan kept on the keeper
  mv6.transition.plan_keeper:
    op: read
    plan_file: /var/lib/mv6-plan/mv6_plan.yml
  delegate_to: "{{ mv6_plan_keeper }}"
  run_once: true
  register: kept
"""

RETURN = r"""
plan:
  description: The plan (version 2), or one host's entry with O(host).
  returned: success
  type: dict
plan_file:
  description: The plan's path on the keeper.
  returned: success
  type: str
before:
  description:
    - With O(op=plan) and O(op=store), the text of each of the plan's files before, by name
      (V("") is the site file).
  returned: op is plan or store
  type: dict
after:
  description: The same, after.
  returned: op is plan or store
  type: dict
diagram_file:
  description: With O(op=plan), the picture's path on the keeper, or null.
  returned: op is plan
  type: str
diagram_svg:
  description: With O(op=plan), the picture's text, or null.
  returned: op is plan
  type: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils import _plan_store  # noqa: E402


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "choices": ["plan", "read", "store"], "default": "read"},
            "plan_file": {"type": "path", "required": True},
            "request": {"type": "dict"},
            "plan": {"type": "dict"},
            "native_family": {"type": "str"},
            "parallel": {"type": "dict"},
            "host": {"type": "str"},
            "diagram": {"type": "raw"},
            "lock_timeout": {"type": "int", "default": 120},
            "create": {"type": "bool", "default": False},
        },
        required_if=[("op", "plan", ["request"]), ("op", "store", ["plan"])],
        supports_check_mode=True,
    )
    p = module.params
    path = p["plan_file"]
    try:
        if p["op"] == "read":
            plan = _plan_store.read_here(path, p["native_family"], p["parallel"], p["host"])
            module.exit_json(changed=False, plan=plan, plan_file=path)
        if p["op"] == "store":
            done = _plan_store.store_here(
                path, p["plan"], module.check_mode, p["lock_timeout"], p["diagram"]
            )
            changed = done["after"] != done["before"] or done["drawn"]
            module.exit_json(changed=changed, plan_file=path, **done)
        done = _plan_store.plan_here(
            path,
            p["request"],
            module.check_mode,
            p["lock_timeout"],
            diagram=p["diagram"],
            make_directory=True,
            create=p["create"],
        )
    except ValueError as e:
        module.fail_json(msg=f"{e} (on the plan keeper)", plan_file=path)
    changed = done["after"] != done["before"] or done["drawn"]
    module.exit_json(changed=changed, plan_file=path, **done)


if __name__ == "__main__":
    main()
