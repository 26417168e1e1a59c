# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: plan
short_description: Read the MV6 address plan without planning or writing
version_added: 1.0.0
description:
  - Reads the plan file that M(mv6.transition.address_plan) writes (the site file and its
    host files) and returns the plan as version 2. A version 1 plan file is returned migrated
    in memory with the inventory's site (O(native_family), O(parallel)); the file is left as
    it is, the planner migrates it in place.
  - Used by the read-only audit (C(verify.yml)) and by C(teardown.yml), which must not
    reshape the plan.
  - With O(host), only that host's entry is read, from its own file. That needs a version 2
    plan; run the planner once to migrate a version 1 file.
options:
  _terms:
    description: The plan file (the site file, for example C(inventory_dir/mv6_plan.yml)).
    required: true
  native_family:
    description: C(mv6_native_family), to migrate a version 1 plan in memory.
    type: str
  parallel:
    description: C(mv6_parallel), to migrate a version 1 plan in memory.
    type: dict
  host:
    description: Return only this host's entry (null when the plan does not list it).
    type: str
author:
  - mv6.transition developers (@mv6)
"""

EXAMPLES = r"""
- name: Read the plan
  ansible.builtin.set_fact:
    mv6_plan: >-
      {{ lookup('mv6.transition.plan', inventory_dir ~ '/mv6_plan.yml',
                native_family=mv6_native_family, parallel=mv6_parallel) }}
"""

RETURN = r"""
_raw:
  description: The plan (version 2), or one host's entry with O(host).
  type: list
  elements: dict
"""

from ansible.errors import AnsibleLookupError  # noqa: E402
from ansible.plugins.lookup import LookupBase  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils import _plan  # noqa: E402


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        if len(terms) != 1:
            raise AnsibleLookupError("mv6.transition.plan: give exactly one plan file")
        path = str(terms[0])
        try:
            host = self.get_option("host")
            if host is not None:
                return [_plan.read_host_entry(path, str(host))]
            plan = _plan.read_plan(path)[0]
            if plan is None:
                raise ValueError(f"mv6_plan_file: {path} does not exist or is empty")
            native, parallel = self.get_option("native_family"), self.get_option("parallel")
            if plan.get("version") != _plan.PLAN_VERSION and parallel is None:
                raise ValueError(
                    f"mv6_plan_file: {path} is a version 1 plan; give parallel (mv6_parallel) "
                    f"to read it, or run the planner once to migrate it"
                )
            return [_plan.upgrade_plan(plan, native, parallel)]
        except ValueError as e:
            raise AnsibleLookupError(str(e)) from e
