#!/usr/bin/python
# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: native_state
short_description: Record and compare the native network state of an MV6 host
version_added: 0.1.0
description:
  - Reads the host's native network state and either records it to a JSON file on the host
    or compares it with a recorded one and says how it differs.
  - The state is the interfaces and their addresses (C(ip -j addr)), the IPv4 and IPv6 routes
    of every table, the policy-routing rules, the nftables ruleset (C(nft -j list ruleset)),
    the sysctls below C(net.ipv4) and C(net.ipv6), and the owner, group and mode of the
    device nodes in O(devices).
  - Volatile fields (lifetimes, counters, interface indices, rule handles, route cache data)
    are dropped, so an unchanged host reads the same every time.
  - Everything MV6 owns is left out, so that the record describes the native host only
    (the parallel bridge, the guest taps, the uplink, the C(bridge mv6_isolation) table and
    the host guard C(inet mv6_isolation) by default; see O(exclude_interfaces) and
    O(exclude_tables)).
  - The module never changes network state. Recording writes one file below O(state_dir).
author:
  - mv6.transition developers (@mv6-transition)
options:
  op:
    description:
      - V(record) reads the state and writes it as O(label).
      - V(compare) reads the state and compares it with the record O(against), or with
        O(reference).
    type: str
    required: true
    choices: [record, compare]
  label:
    description:
      - Name of the record to write with O(op=record); the file is C(<state_dir>/<label>.json).
      - Use V(pre-mv6) with O(overwrite=false) for the state before MV6 ever touched the host,
        and V(before-run) for the state at the start of a run.
    type: str
    default: before-run
  overwrite:
    description:
      - With V(false), an existing record is kept as it is. This is how C(pre-mv6) is
        written only once.
    type: bool
    default: true
  against:
    description:
      - Label of the record to compare with (O(op=compare)).
    type: str
  reference:
    description:
      - A state as returned in RV(native_state) by an earlier O(op=record) call, to compare with
        instead of a file (useful in check mode, where records are not written).
    type: dict
  state_dir:
    description:
      - Directory that holds the records.
    type: path
    default: /var/lib/mv6/native-state
  exclude_interfaces:
    description:
      - Shell-style patterns of interface names whose links, addresses, routes, rules and
        per-interface sysctls are not part of the native state.
      - When comparing, the patterns stored in the record are applied too.
    type: list
    elements: str
    default: [mv6br0, "mv6p*"]
  exclude_tables:
    description:
      - nftables tables (C(FAMILY NAME), shell-style patterns allowed, for example
        C(bridge t_*)) that are not part of the native state.
      - When comparing, the tables stored in the record are left out too.
    type: list
    elements: str
    default: [bridge mv6_isolation, inet mv6_isolation]
  devices:
    description:
      - Device nodes whose owner, group and mode are part of the state (a node that does not
        exist is left out). C(roles/hypervisor) may change C(/dev/kvm) on a host without
        udev and restores it at removal.
    type: list
    elements: path
    default: [/dev/kvm]
  exclude_devices:
    description:
      - Devices of O(devices) left out of a record or a comparison, for example one that MV6
        changes on purpose while the host is adopted. A record keeps the list, and a comparison
        with it (O(against)) leaves those devices out too, as for O(exclude_interfaces).
      - C(site.yml) leaves C(/dev/kvm) out of its per-run record, so that the first run's change
        to it does not make the second run report a change; the C(pre-mv6) record holds it.
    type: list
    elements: path
    default: []
attributes:
  check_mode:
    description: >-
      Can run in check mode and return changed status prediction without modifying target.
    support: full
    details: In check mode a record is read and returned but not written.
  diff_mode:
    description: >-
      Will return details on what has changed (or possibly needs changing in check_mode),
      when in diff mode.
    support: none
notes:
  - Needs C(ip) from iproute2. Without C(nft) the ruleset is recorded as empty, with a
    warning.
seealso:
  - name: MV6 playbooks
    description: How site.yml, verify.yml and teardown.yml use this module.
    link: https://example.invalid/mv6/transition/docs/playbooks.md
"""

EXAMPLES = r"""
- name: Record the native state before MV6 ever touched the host (kept once written)
  mv6.transition.native_state:
    op: record
    label: pre-mv6
    overwrite: false

- name: Record the native state at the start of this run
  mv6.transition.native_state:
    op: record
    label: before-run
    exclude_interfaces: [mv6br0, "mv6p*", eth1]
  register: native_before

- name: Compare the native state with the start of the run
  mv6.transition.native_state:
    op: compare
    reference: "{{ native_before.native_state }}"
  register: native_after

- name: Fail and say how the native state differs
  ansible.builtin.fail:
    msg: "{{ native_after.differences }}"
  when: not native_after.identical
"""

RETURN = r"""
record_path:
  description: The record file written (O(op=record)) or read (O(op=compare) with O(against)).
  returned: when a file is involved
  type: str
  sample: /var/lib/mv6/native-state/before-run.json
native_state:
  description: The native state as read now, with the exclusions applied.
  returned: always
  type: dict
  sample: {"version": 1, "sections": {"links": {}, "addresses": {}, "routes": {},
           "rules": {}, "ruleset": {}, "sysctls": {}}}
kept:
  description: Whether an existing record was kept untouched because of O(overwrite=false).
  returned: when O(op=record)
  type: bool
  sample: true
identical:
  description: Whether the state equals the one compared with.
  returned: when O(op=compare)
  type: bool
  sample: false
differences:
  description: "One line per difference: C(SECTION: added|removed|changed KEY[: how])."
  returned: when O(op=compare)
  type: list
  elements: str
  sample: ["addresses: removed eth1 198.51.100.1/24",
           "sysctls: changed net.ipv4.ip_forward: 0 -> 1"]
"""

import datetime  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils._native import (  # noqa: E402
    build_state,
    diff_states,
    excluded_table,
    filter_state,
    read_devices,
    read_sysctls,
)

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _json_command(module, argv):
    rc, out, err = module.run_command(argv, check_rc=False)
    if rc != 0:
        module.fail_json(msg=f"{' '.join(argv)} failed (rc={rc}): {err.strip()}")
    try:
        return json.loads(out) if out.strip() else []
    except ValueError as exc:
        module.fail_json(msg=f"{' '.join(argv)} printed no JSON: {exc}")


def read_ruleset(module, nft_bin, exclude_tables):
    """The ruleset as ``nft -j list ruleset`` gives it, read table by table, leaving out the
    excluded tables before nft prints them: nft 1.0.6 prints the JSON of a table that has the
    C(owner) flag (MV6's own, held by roles/hypervisor's keeper) from freed memory, which made
    ``nft -j list ruleset`` print broken JSON."""
    rc, out, err = module.run_command([nft_bin, "list", "tables"], check_rc=False)
    if rc != 0:
        module.fail_json(msg=f"{nft_bin} list tables failed (rc={rc}): {err.strip()}")
    items = []
    for line in out.splitlines():
        words = line.split()
        if len(words) != 3 or words[0] != "table":
            continue
        family, name = words[1], words[2]
        if excluded_table(family, name, exclude_tables or ()):
            continue
        listing = _json_command(module, [nft_bin, "-j", "list", "table", family, name])
        items += [i for i in (listing or {}).get("nftables", []) if "metainfo" not in i]
    return {"nftables": items}


def read_state(module, exclude_interfaces, exclude_tables, devices=(), exclude_devices=()):
    ip = module.get_bin_path("ip", required=True)
    nft_bin = module.get_bin_path("nft")
    families = {"ipv4": "-4", "ipv6": "-6"}
    nft = None
    if nft_bin:
        nft = read_ruleset(module, nft_bin, exclude_tables)
    else:
        module.warn("nft not found: the nftables ruleset is recorded as empty")
    return build_state(
        ip_addr=_json_command(module, [ip, "-j", "addr", "show"]),
        ip_routes={
            f: _json_command(module, [ip, "-j", opt, "route", "show", "table", "all"])
            for f, opt in families.items()
        },
        ip_rules={
            f: _json_command(module, [ip, "-j", opt, "rule", "show"]) for f, opt in families.items()
        },
        nft=nft,
        sysctls=read_sysctls(),
        exclude_interfaces=exclude_interfaces,
        exclude_tables=exclude_tables,
        devices=read_devices(devices),
        exclude_devices=exclude_devices,
    )


def _load(module, path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        module.fail_json(msg=f"cannot read native state record {path}: {exc}")


def _write(path, record):
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".native-state-")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, sort_keys=True)
        handle.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            op=dict(type="str", required=True, choices=["record", "compare"]),
            label=dict(type="str", default="before-run"),
            overwrite=dict(type="bool", default=True),
            against=dict(type="str"),
            reference=dict(type="dict"),
            state_dir=dict(type="path", default="/var/lib/mv6/native-state"),
            exclude_interfaces=dict(type="list", elements="str", default=["mv6br0", "mv6p*"]),
            exclude_tables=dict(
                type="list",
                elements="str",
                default=["bridge mv6_isolation", "inet mv6_isolation"],
            ),
            devices=dict(type="list", elements="path", default=["/dev/kvm"]),
            exclude_devices=dict(type="list", elements="path", default=[]),
        ),
        mutually_exclusive=[("against", "reference")],
        required_if=[("op", "compare", ("against", "reference"), True)],
        supports_check_mode=True,
    )
    p = module.params
    for name in ("label", "against"):
        if p[name] is not None and not _LABEL.match(p[name]):
            module.fail_json(
                msg=f"{name}: {p[name]!r} is not a record label (letters, digits, '.', '_', '-')"
            )
    excl_ifaces = list(p["exclude_interfaces"])
    excl_tables = list(p["exclude_tables"])
    excl_devices = list(p["exclude_devices"])

    if p["op"] == "record":
        path = os.path.join(p["state_dir"], f"{p['label']}.json")
        state = read_state(module, excl_ifaces, excl_tables, p["devices"], excl_devices)
        old = _load(module, path)
        if old is not None and not p["overwrite"]:
            module.exit_json(changed=False, record_path=path, native_state=state, kept=True)
        fresh = {
            "label": p["label"],
            "exclude_interfaces": excl_ifaces,
            "exclude_tables": excl_tables,
            "exclude_devices": excl_devices,
            "state": state,
        }
        same = old is not None and {k: old.get(k) for k in fresh} == fresh
        if not same and not module.check_mode:
            fresh["recorded_at"] = datetime.datetime.now(datetime.UTC).isoformat()
            _write(path, fresh)
        module.exit_json(changed=not same, record_path=path, native_state=state, kept=False)

    result = {}
    if p["reference"] is not None:
        reference = p["reference"]
        ref_ifaces, ref_tables, ref_devices = [], [], []
    else:
        path = os.path.join(p["state_dir"], f"{p['against']}.json")
        record = _load(module, path)
        if record is None:
            module.fail_json(msg=f"against: no native state record {path!r}")
        reference = record["state"]
        ref_ifaces = record.get("exclude_interfaces", [])
        ref_tables = record.get("exclude_tables", [])
        ref_devices = record.get("exclude_devices", [])
        result["record_path"] = path
    all_ifaces = sorted(set(excl_ifaces) | set(ref_ifaces))
    all_tables = sorted(set(excl_tables) | set(ref_tables))
    all_devices = sorted(set(excl_devices) | set(ref_devices))
    try:
        before = filter_state(reference, all_ifaces, all_tables, all_devices)
    except (KeyError, TypeError, ValueError) as exc:
        module.fail_json(msg=f"reference: not a native state: {exc}")
    now = read_state(module, all_ifaces, all_tables, p["devices"], all_devices)
    differences = diff_states(before, now)
    module.exit_json(
        changed=False,
        native_state=now,
        identical=not differences,
        differences=differences,
        **result,
    )


if __name__ == "__main__":
    main()
