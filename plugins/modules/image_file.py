#!/usr/bin/python
# Copyright (c) 2026, mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_file
short_description: Check an image file's header before QEMU opens it, and publish golden images
version_added: 0.4.0
description:
  - V(inspect) reads a qcow2 header in Python, without QEMU, and refuses an image that would make
    C(qemu-img) open another file as root - an external C(data-file), a backing file (a golden
    image is a standalone base), encryption - naming the file and the header field. Imported
    images are untrusted input; C(qemu-img convert) of an image whose header names
    C(data-file=/etc/shadow) would copy that file into the golden image every guest reads.
  - V(publish) puts a finished golden image in place read-only and durably, and never replaces a
    file that is already there, because guests' overlays may be backed by it. The same content
    already in place is not a change; other content is an error.
author:
  - mv6.transition developers (@mv6-transition)
options:
  op:
    description: What to do.
    type: str
    choices: [inspect, publish]
    default: inspect
  path:
    description:
      - V(inspect) the image to check. V(publish) the finished image to put in place; it is
        moved, so it must be on the same filesystem as O(dest).
    type: path
    required: true
  format:
    description:
      - Format the image is declared to have. A V(raw) image has no header to check; a V(qcow2)
        one must start with the qcow2 magic.
    type: str
    choices: [qcow2, raw]
    default: qcow2
  dest:
    description: Where V(publish) puts the image. Required for O(op=publish).
    type: path
  mode:
    description: Mode of the published image.
    type: raw
    default: "0444"
  marker:
    description:
      - The file that marks a published version complete (roles/golden_image writes the
        C(.recipe.json) sidecar last). When O(dest) exists but the marker does not, an earlier
        publish was interrupted before the version was complete, so no guest can be backed by
        it, and O(dest) is replaced.
    type: path
attributes:
  check_mode:
    description:
      - Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: V(inspect) changes nothing; V(publish) reports whether it would publish.
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check_mode).
    support: none
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
seealso:
  - module: mv6.transition.guest_disk
  - name: Security promises of mv6.transition
    description: docs/security.md in the collection.
    link: https://example.invalid/mv6/transition/docs/security.md
"""

EXAMPLES = r"""
- name: Refuse an imported image whose header names another file
  mv6.transition.image_file:
    path: /var/tmp/mv6-golden-build/debian12.x/image
    format: qcow2

- name: Publish a finished golden image without replacing one in use
  mv6.transition.image_file:
    op: publish
    path: /var/lib/mv6/images/debian12-3f2a9c1d0b7e.qcow2.tmp
    dest: /var/lib/mv6/images/debian12-3f2a9c1d0b7e.qcow2
"""

RETURN = r"""
virtual_size:
  description: Virtual size in bytes from the qcow2 header (the file size for raw).
  returned: O(op=inspect)
  type: int
  sample: 2147483648
sha256:
  description: sha256 of the published image.
  returned: O(op=publish)
  type: str
"""

import os  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils._disk import (  # noqa: E402
    check_header,
    fsync_dir,
    fsync_file,
    read_qcow2_header,
    sha256_file,
)


def inspect(module: AnsibleModule) -> dict:
    path, fmt = module.params["path"], module.params["format"]
    if not os.path.isfile(path):
        module.fail_json(msg=f"path: {path} does not exist or is not a regular file")
    if fmt == "raw":
        return {"changed": False, "virtual_size": os.path.getsize(path)}
    try:
        header = read_qcow2_header(path)
        check_header(path, header, lambda _name: False, "image", want_backing=False)
    except (OSError, ValueError) as exc:
        module.fail_json(msg=str(exc))
    return {"changed": False, "virtual_size": header["size"]}


def publish(module: AnsibleModule) -> dict:
    src, dest = module.params["path"], module.params["dest"]
    if not dest:
        module.fail_json(msg="dest: required for op=publish")
    if os.path.islink(src) or not os.path.isfile(src):
        module.fail_json(msg=f"path: {src} does not exist or is not a regular file")
    marker = module.params["marker"]
    incomplete = bool(marker) and os.path.lexists(dest) and not os.path.lexists(marker)
    if os.path.lexists(dest) and not incomplete:
        if os.path.islink(dest) or not os.path.isfile(dest):
            module.fail_json(msg=f"dest: {dest} exists and is not a regular file; not replacing it")
        digest = sha256_file(dest)
        if digest != sha256_file(src):
            module.fail_json(
                msg=f"dest: {dest} already exists with other content; a published golden image "
                "is never replaced, because guests' overlays may be backed by it (build another "
                "version, or remove this one with teardown once no guest uses it)"
            )
        if not module.check_mode:
            os.unlink(src)
        return {"changed": False, "sha256": digest}
    if module.check_mode:
        return {"changed": True}
    if os.geteuid() == 0:
        os.chown(src, 0, 0)
    module.set_mode_if_different(src, module.params["mode"], False)
    fsync_file(src)
    if incomplete:
        module.warn(f"{dest} was left by an interrupted publish ({marker} is missing); replaced")
        os.replace(src, dest)
    else:
        # link(2) fails when dest exists: two builders racing cannot replace each other's file.
        try:
            os.link(src, dest)
        except FileExistsError:
            module.fail_json(msg=f"dest: {dest} appeared while publishing; run again to compare")
        os.unlink(src)
    fsync_dir(os.path.dirname(os.path.abspath(dest)))
    return {"changed": True, "sha256": sha256_file(dest)}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "op": {"type": "str", "default": "inspect", "choices": ["inspect", "publish"]},
            "path": {"type": "path", "required": True},
            "format": {"type": "str", "default": "qcow2", "choices": ["qcow2", "raw"]},
            "dest": {"type": "path"},
            "mode": {"type": "raw", "default": "0444"},
            "marker": {"type": "path"},
        },
        required_if=[("op", "publish", ("dest",))],
        supports_check_mode=True,
    )
    result = inspect(module) if module.params["op"] == "inspect" else publish(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
