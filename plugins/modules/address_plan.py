#!/usr/bin/python
# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This module is implemented as an action plugin (plugins/action/address_plan.py) and runs on
# the controller; this file holds its documentation only.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: address_plan
short_description: Plan the parallel network of an MV6 fleet and keep the plan in a file
version_added: 0.1.0
description:
  - Runs on the controller, once per play (use C(run_once=true)). Reads C(mv6_native_family),
    C(mv6_parallel) and C(mv6_guests) of every host in the play and gives each hypervisor its
    parallel subnet, and each guest a slot, a MAC, a parallel address and a tap device name.
  - The plan is kept in O(plan_file) and is stable. Hosts and guests keep their slots, and so
    their subnets, MACs and addresses, when others are added or removed. A guest removed from
    C(mv6_guests) of a host in the play, or with C(state=absent), stays in the plan marked
    C(released) until O(prune=true).
  - Hosts in the plan file but not in the play (for example with C(--limit)) are copied
    unchanged, never released. Release them on purpose with O(release_hosts).
  - Both directions (IPv4 native with an IPv6 parallel network, and the reverse), both
    layouts (V(per_host) and V(shared)) and both address modes (V(eui64), V(sequential)).
    Addresses are computed by arithmetic; no range is ever enumerated.
  - Every input is checked before anything is written. An error names the variable and the
    reason. A plan file that cannot be read or parsed is never overwritten.
  - The same inputs give a byte-identical plan file. The file is replaced atomically.
  - With a plan keeper (the variable C(mv6_plan_keeper), an inventory host), the plan is kept
    on that host. Delegate the task to it (C(delegate_to), as C(playbooks/plan.yml) does); the
    lock, the read, the plan, the write and the picture then happen there, in one run of
    M(mv6.transition.plan_keeper) over the keeper's own connection.
  - See C(docs/planner.md) in the collection for the allocation rules and the keeper.
author:
  - mv6.transition developers (@mv6)
options:
  plan_file:
    description:
      - Path of the plan file on the controller, or on the keeper when C(mv6_plan_keeper) is
        set (then absolute).
      - Defaults to the variable C(mv6_plan_file) of the first host, else
        C(<inventory_dir>/mv6_plan.yml) on the controller and C(/var/lib/mv6-plan/mv6_plan.yml)
        on a keeper.
    type: path
  prune:
    description:
      - Drop every released host and guest from the plan, so that their slots can be given
        again. Only do this when they are really gone.
    type: bool
    default: false
  release_hosts:
    description:
      - Hosts to mark as released, with all their guests. They keep their slots until pruned.
    type: list
    elements: str
    default: []
  lock_timeout:
    description:
      - Seconds to wait for another run that is planning with the same plan file.
      - A run holds an exclusive lock on C(<plan_file>.lock) (flock) while it reads, plans and
        writes, so two runs at the same time (two AWX jobs, two terminals) never drop each
        other's allocations. The lock goes with the process that holds it; a killed run
        leaves no stale lock.
      - After the timeout the task fails and writes nothing. Check mode takes no lock.
    type: int
    default: 120
  diagram:
    description:
      - Path of the plan's picture, on the controller or on the keeper (beside the plan), an
        SVG drawn by P(mv6.transition.plan_diagram#filter) from the plan alone (so that runs with
        different C(--limit) draw the same bytes for the same plan). It is written, in the
        same lock and atomically, when it is missing or differs from what the plan draws
        (the plan changed, or a new version of the collection draws it otherwise), and that
        counts as a change, with no diff shown for it.
      - Defaults to the variable C(mv6_plan_diagram) of the first host, else the plan file's
        path with C(.svg) in place of C(.yml). An empty string or V(false) draws no picture;
        null is the default. A relative path is relative to the plan file's directory.
      - Refused before anything is written, and kept, are a file at that path that this
        collection did not draw, anything but a regular file there (a symlink, a FIFO), a
        directory that does not exist or is not writable, and the plan's own files.
    type: raw
  return_diagram:
    description:
      - Return the picture's text as RV(diagram_svg) (C(plan.yml) gives it to AWX as an
        artifact).
    type: bool
    default: false
  keeper_create:
    description:
      - With a plan keeper (C(mv6_plan_keeper)), whether the keeper may start a new plan when
        none is at the plan file's path there. C(playbooks/plan.yml) passes the variable
        C(mv6_plan_keeper_create).
      - V(false) refuses before anything is written, since a new plan gives every host and guest of
        the site new addresses and MACs, which is what a mistyped path or keeper, or a plan
        never moved from the controller's file (C(playbooks/plan_move.yml)), would do without
        a word. Set V(true) once, for the first plan of a new site.
      - Without a keeper, a missing plan file is a new plan, as for C(ansible-playbook) users
        it always was; in an AWX job (C(awx_job_id) is defined) the default plan file, in the
        job's inventory directory, is refused, since it goes with the job; name a keeper, or
        set C(mv6_plan_file) to a path that outlives the job.
    type: bool
    default: false
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
attributes:
  action:
    support: full
  async:
    support: none
  bypass_host_loop:
    support: none
    details: Use C(run_once=true); the plan covers every host of the play either way.
  check_mode:
    support: full
    details: Computes and returns the plan, writes nothing.
  diff_mode:
    support: full
    details: Shows the plan file text before and after.
  platform:
    platforms: posix
requirements:
  - netaddr (on the controller)
notes:
  - The returned fact C(mv6_plan) is set on every host of the play.
seealso:
  - module: mv6.transition.plan_keeper
  - plugin: mv6.transition.host_plan
    plugin_type: filter
  - plugin: mv6.transition.guest_plan
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Plan the parallel network
  hosts: mv6_hypervisors
  gather_facts: true
  tasks:
    - name: Plan addresses for every hypervisor in the play
      mv6.transition.address_plan:
      run_once: true

    - name: Show this host's parallel subnet
      ansible.builtin.debug:
        msg: "{{ (mv6_plan | mv6.transition.host_plan(inventory_hostname)).subnet }}"

- name: Forget a decommissioned hypervisor and free its slots
  hosts: mv6_hypervisors
  gather_facts: false
  tasks:
    - name: Release hv9, then prune everything released
      mv6.transition.address_plan:
        release_hosts: [hv9]
        prune: true
      run_once: true
"""

RETURN = r"""
plan:
  description:
    - The plan, the same data as the plan files. See C(docs/interfaces.md), section "The plan".
  returned: success
  type: dict
  contains:
    version:
      description: Format version, 2.
      type: int
    site:
      description:
        - The site block, C(native_family), C(parallel_family), C(prefix), C(layout),
          C(host_prefixlen), C(address_mode), C(bridge), C(uplink), C(tap_prefix),
          C(nft_table), C(host_guard), C(dns), and what MV6 owns on a host (C(owned)).
      type: dict
    hosts:
      description: Per hypervisor, its slot, subnet, gateway, DNS servers, router and guests.
      type: dict
plan_file:
  description: The plan file's path.
  returned: success
  type: str
  sample: /srv/inventory/mv6_plan.yml
diagram_file:
  description: The path of the plan's picture, or null when none is drawn.
  returned: success
  type: str
  sample: /srv/inventory/mv6_plan.svg
diagram_svg:
  description: The picture's text (null when none is drawn).
  returned: O(return_diagram=true)
  type: str
keeper:
  description: The plan keeper the plan is kept on, or null for the controller's file.
  returned: success
  type: str
"""
