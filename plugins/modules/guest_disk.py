#!/usr/bin/python
# Copyright (c) 2026, mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: guest_disk
short_description: Manage a guest's qcow2 disk chain (golden, persistent and session layers)
version_added: 0.1.0
description:
  - Manages the disk chain of one MV6 guest. The chain is the golden image (read-only, shared by
    every guest) <- the guest's persistent layer C(persistent.qcow2) <- a per-boot session layer
    C(session.qcow2) for non-persistent guests.
  - Every overlay is made with C(qemu-img create -b BACKING -F FORMAT), so making a guest costs
    the same whatever the size of the golden image (nothing is copied).
  - Every operation reads the real chain with C(qemu-img info --output=json --backing-chain)
    first and refuses to act on a chain that is not the one it expects.
  - A commit merges the session layer into the persistent layer and never into the golden image.
  - The guest's layers live in O(guests_dir)/O(name)/; the module never removes or writes a file
    outside that directory, except the backup file named by O(backup) and its sidecar.
author:
  - mv6.transition developers (@mv6-transition)
options:
  name:
    description:
      - Name of the guest. Its layers live in O(guests_dir)/O(name)/.
      - The planner's guest-name rule (one lowercase DNS label of 1 to 63 letters, digits or
        C(-), not starting or ending with C(-)); anything else fails before any change.
    type: str
    required: true
  op:
    description:
      - V(create) makes the persistent layer on O(golden) and, when O(persistence=non_persistent),
        the session layer on the persistent layer. Existing layers with the right backing are left
        alone; a layer with another backing is an error, except an earlier version of the same
        golden image (same directory, C(.recipe.json) with the same C(name)), which is kept with a
        warning so that rebuilding an image never breaks the guests made on the old one.
      - V(commit) merges the session layer into the persistent layer, then starts a new empty
        session layer. It refuses when the session layer's backing is not the guest's persistent
        layer, is an image without a backing file, is O(golden) or lies in O(images_dir).
        Nothing to commit (no session layer, or an empty one) is not a change.
      - V(discard) throws the session layer away and makes a new empty one.
      - V(backup) copies the persistent layer sparsely to O(backup) and writes O(backup).json
        with its sha256, the backing file, and that file's sha256 and version.
      - V(restore) puts O(backup) back as the persistent layer after checking its sha256 against
        the sidecar and checking that the backing golden image is the very version the backup
        was taken on. A session layer, if any, is made anew on the restored layer.
      - V(check) runs C(qemu-img check) on each layer and verifies the chain. Corruptions and a
        wrong chain fail the task; leaked clusters are reported as warnings.
      - V(absent) removes the guest's layers and its directory when that is then empty. It
        refuses when the directory or a layer resolves outside O(guests_dir)/O(name)/.
    type: str
    choices: [create, commit, discard, backup, restore, check, absent]
    default: create
  golden:
    description:
      - Path of the golden image. Required for O(op=create). Symlinks are resolved, so the
        overlay names the versioned file, never a moving C(current) link.
      - With O(op=commit), O(op=check) and O(op=restore), when given, it is an extra guard that
        the chain really ends in this file.
    type: path
  golden_format:
    description:
      - Format of the golden image, passed as C(-F) to C(qemu-img create).
    type: str
    choices: [qcow2, raw]
    default: qcow2
  persistence:
    description:
      - V(non_persistent) also makes the session layer on O(op=create).
    type: str
    choices: [persistent, non_persistent]
    default: persistent
  guests_dir:
    description:
      - Directory holding one directory per guest.
    type: path
    default: /var/lib/mv6/guests
  images_dir:
    description:
      - Directory of the golden images. Nothing in it is ever written or removed, and a commit
        whose target lies in it is refused.
    type: path
    default: /var/lib/mv6/images
  backup:
    description:
      - Path of the backup file for O(op=backup) and O(op=restore). The sidecar is this path
        with C(.json) appended.
    type: path
  owner:
    description:
      - Owner of the guest's layers, the user QEMU runs as (C(libvirt-qemu) on Debian).
    type: str
    default: libvirt-qemu
  group:
    description:
      - Group of the guest's layers and directory.
    type: str
    default: kvm
  qemu_img:
    description:
      - The C(qemu-img) program to use.
    type: path
    default: qemu-img
attributes:
  check_mode:
    description:
      - Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Every operation reports the actions it would take and changes nothing.
  diff_mode:
    description:
      - Will return details on what has changed (or possibly needs changing in check_mode).
    support: full
    details: The diff shows each layer's backing file, backing format and whether it holds data.
  platform:
    description: Target OS/families that can be operated against.
    support: full
    platforms: posix
notes:
  - Commit, discard, backup and restore need the layers not to be open for writing by a running
    QEMU; C(qemu-img) refuses to act on a locked image and the module reports that.
  - Golden images are expected to be read-only (mode 0444); a writable golden image gives a
    warning.
requirements:
  - qemu-img (Debian package qemu-utils)
seealso:
  - name: Disk chain of mv6.transition
    description: docs/disks.md in the collection.
    link: https://example.invalid/mv6/transition/docs/disks.md
"""

EXAMPLES = r"""
- name: Make the disk of a persistent guest on the current debian12 golden image
  mv6.transition.guest_disk:
    name: web6
    golden: "{{ mv6_golden_images.debian12.path }}"

- name: Make the disks of a non-persistent guest (persistent + session layer)
  mv6.transition.guest_disk:
    name: lab6
    golden: /var/lib/mv6/images/debian12.qcow2
    persistence: non_persistent

- name: Keep what happened in this session
  mv6.transition.guest_disk:
    name: lab6
    op: commit

- name: Forget what happened in this session
  mv6.transition.guest_disk:
    name: lab6
    op: discard

- name: Back up the persistent layer
  mv6.transition.guest_disk:
    name: web6
    op: backup
    backup: /var/backups/mv6/web6.qcow2

- name: Restore it (checksum and golden image version are verified first)
  mv6.transition.guest_disk:
    name: web6
    op: restore
    backup: /var/backups/mv6/web6.qcow2

- name: Remove the guest's layers (never the golden image)
  mv6.transition.guest_disk:
    name: web6
    op: absent
"""

RETURN = r"""
paths:
  description: The guest's directory and layer files.
  returned: always
  type: dict
  sample: {dir: /var/lib/mv6/guests/web6, persistent: /var/lib/mv6/guests/web6/persistent.qcow2,
           session: /var/lib/mv6/guests/web6/session.qcow2}
golden:
  description: Resolved path of the golden image at the bottom of the chain, when known.
  returned: when known
  type: str
  sample: /var/lib/mv6/images/debian12-3f2a9c1d0b7e.qcow2
layers:
  description: State of each layer after the operation (or as it would be in check mode).
  returned: always
  type: dict
  sample: {persistent: {backing: /var/lib/mv6/images/debian12-3f2a9c1d0b7e.qcow2,
           backing_format: qcow2, dirty: true}, session: null}
actions:
  description: What the module did (or would do in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["create persistent layer on /var/lib/mv6/images/debian12-3f2a9c1d0b7e.qcow2"]
backup:
  description: Backup file, its sidecar and the sidecar's content.
  returned: when O(op=backup) or O(op=restore)
  type: dict
  sample: {path: /var/backups/mv6/web6.qcow2, sidecar: /var/backups/mv6/web6.qcow2.json,
           sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08}
check:
  description: C(qemu-img check) result per layer (JSON fields of qemu-img, plus C(rc)).
  returned: when O(op=check)
  type: dict
  sample: {persistent: {check-errors: 0, leaks: 0, rc: 0}}
removed:
  description: Files and directories removed by O(op=absent).
  returned: when O(op=absent)
  type: list
  elements: str
"""

import grp  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils._disk import (  # noqa: E402
    JOURNAL,
    SIDECAR_SUFFIX,
    backup_sidecar,
    check_commit_target,
    check_header,
    check_overlay,
    durable_replace,
    golden_identity,
    guest_paths,
    header_chain,
    is_within,
    overlay_command,
    parse_chain,
    read_qcow2_header,
    recipe_sidecar_path,
    remove_durable,
    same_file,
    sha256_file,
    sparse_copy,
    top_has_data,
    validate_guest_name,
    verify_backup,
    write_durable,
)

LAYER_MODE = 0o660
DIR_MODE = 0o750
BACKUP_MODE = 0o600


class DiskError(Exception):
    """A refusal or failure with a message meant for the user."""


class GuestDisk:
    def __init__(self, module: AnsibleModule):
        self.module = module
        self.params = module.params
        self.check_mode = module.check_mode
        self.qemu_img = module.get_bin_path(self.params["qemu_img"], required=True)
        self.paths = guest_paths(self.params["guests_dir"], self.params["name"])
        self.journal = os.path.join(self.paths["dir"], JOURNAL)
        self.actions: list[str] = []
        self.changed = False
        self.result: dict = {}
        self.runas = self.qemu_user_prefix()

    # --- qemu-img -------------------------------------------------------------------------
    def qemu_user_prefix(self) -> list[str]:
        """Run qemu-img as the QEMU user on guest-writable layers (docs/security.md): a header
        that slipped past the checks can then reach no more than the guest's QEMU could."""
        if os.geteuid() != 0:
            return []
        try:
            uid = pwd.getpwnam(self.params["owner"]).pw_uid
        except KeyError as exc:
            raise DiskError(f"owner: no user {self.params['owner']!r} on this host") from exc
        if uid == 0:
            raise DiskError(f"owner: {self.params['owner']} is root; guest layers never are")
        setpriv = self.module.get_bin_path("setpriv", required=True)
        return [
            setpriv,
            "--reuid",
            str(uid),
            "--regid",
            str(self.group_id()),
            "--init-groups",
            "--",
        ]

    def group_id(self) -> int:
        group = self.params["group"]
        try:
            return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError as exc:
            raise DiskError(f"group: no group {group!r} on this host") from exc

    def run(self, args: list[str], what: str, as_root: bool = False) -> str:
        rc, out, err = self.module.run_command(args if as_root else [*self.runas, *args])
        if rc != 0:
            raise DiskError(f"{what} failed (rc={rc}): {err.strip() or out.strip()}")
        return out

    def allowed_backing(self, name: str) -> bool:
        """A layer may be backed only by the guest's own persistent layer, a golden image in
        the images directory, or the golden image the task names."""
        golden = self.params["golden"]
        return (
            name == self.paths["persistent"]
            or is_within(name, self.params["images_dir"])
            or bool(golden and same_file(name, golden))
        )

    def headers(self, path: str, what: str = "layer") -> list[dict]:
        """The chain as the headers say, checked before QEMU opens any file of it."""
        try:
            return header_chain(path, self.allowed_backing, what)
        except (ValueError, OSError) as exc:
            raise DiskError(str(exc)) from exc

    def chain(self, path: str, as_root: bool = False) -> list[dict]:
        """The backing chain of ``path``, read by qemu-img once its headers passed."""
        self.headers(path)
        args = [self.qemu_img, "info", "--output=json", "--backing-chain", "-U", "-f", "qcow2"]
        try:
            return parse_chain(self.run([*args, path], f"qemu-img info {path}", as_root))
        except ValueError as exc:
            raise DiskError(str(exc)) from exc

    def dirty(self, path: str) -> bool:
        self.headers(path)
        out = self.run(
            [self.qemu_img, "map", "-U", "--output=json", "-f", "qcow2", path],
            f"qemu-img map {path}",
        )
        return top_has_data(out)

    def assert_not_in_use(self, path: str) -> None:
        self.headers(path)
        rc, _out, err = self.module.run_command(
            [*self.runas, self.qemu_img, "info", "--output=json", "-f", "qcow2", path]
        )
        if rc != 0:
            raise DiskError(
                f"{path} cannot be opened for a consistent read (is the guest running?): "
                f"{err.strip()}"
            )

    def virtual_size(self, backing: str, backing_format: str) -> int:
        if backing_format == "raw":
            return os.path.getsize(backing)
        return self.headers(backing, "backing file")[0]["size"]

    def create_overlay(self, overlay: str, backing: str, backing_format: str) -> None:
        """Make the overlay under a temporary name, then rename durably: never a half-made
        layer. The size comes from the checked header and ``-u`` keeps qemu-img from opening
        the backing file, so no root process opens a guest-writable header."""
        tmp = self.tmp_name(overlay)
        self.remove_quietly(tmp)
        try:
            self.run(
                overlay_command(
                    self.qemu_img,
                    tmp,
                    backing,
                    backing_format,
                    self.virtual_size(backing, backing_format),
                ),
                f"qemu-img create {overlay}",
                as_root=True,
            )
            self.set_attributes(tmp, LAYER_MODE)
            durable_replace(tmp, overlay)
        finally:
            self.remove_quietly(tmp)

    # --- files ----------------------------------------------------------------------------
    @staticmethod
    def tmp_name(path: str) -> str:
        head, tail = os.path.split(path)
        return os.path.join(head, f".{tail}.mv6tmp")

    @staticmethod
    def remove_quietly(path: str) -> None:
        if os.path.lexists(path):
            os.unlink(path)

    def set_attributes(self, path: str, mode: int, owner: bool = True) -> bool:
        """Layers belong to the QEMU user; the directory stays root's, shared with the group."""
        changed = False
        if owner:
            changed = self.module.set_owner_if_different(path, self.params["owner"], changed)
        changed = self.module.set_group_if_different(path, self.params["group"], changed)
        return self.module.set_mode_if_different(path, mode, changed)

    def ensure_dir(self) -> None:
        directory = self.paths["dir"]
        guests_dir = os.path.dirname(directory)
        if os.path.lexists(directory):
            if os.path.realpath(directory) != os.path.join(
                os.path.realpath(guests_dir), self.params["name"]
            ):
                raise DiskError(
                    f"{directory} resolves to {os.path.realpath(directory)}, outside "
                    f"{guests_dir}; refusing to use it"
                )
            if not os.path.isdir(directory):
                raise DiskError(f"{directory} exists and is not a directory")
            if self.set_attributes(directory, DIR_MODE, owner=False):
                self.note(f"fix group/mode of {directory}")
            return
        self.note(f"create directory {directory}")
        if not self.check_mode:
            if not os.path.isdir(guests_dir):
                os.makedirs(guests_dir, 0o755)
            os.mkdir(directory, DIR_MODE)
            self.set_attributes(directory, DIR_MODE, owner=False)

    def note(self, action: str) -> None:
        self.actions.append(action)
        self.changed = True

    # --- golden image -----------------------------------------------------------------------
    def resolve_golden(self, required: bool) -> str | None:
        golden = self.params["golden"]
        if not golden:
            if required:
                raise DiskError(f"golden: required for op={self.params['op']}")
            return None
        real = os.path.realpath(golden)
        if not os.path.isfile(real):
            raise DiskError(f"golden: {golden} does not exist or is not a file")
        if is_within(real, self.paths["dir"]):
            raise DiskError(f"golden: {golden} lies inside the guest's own directory")
        if os.stat(real).st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            self.module.warn(f"golden image {real} is writable; golden images should be 0444")
        fmt = self.params["golden_format"]
        if fmt == "qcow2":
            try:
                check_header(
                    real,
                    read_qcow2_header(real),
                    lambda _n: False,
                    "golden image",
                    want_backing=False,
                )
            except ValueError as exc:
                raise DiskError(f"golden: {exc}") from exc
        parse_chain(
            self.run(
                [self.qemu_img, "info", "-U", "--output=json", "-f", fmt, real],
                f"qemu-img info {real}",
            )
        )
        return real

    @staticmethod
    def same_image_older_version(backing: str | None, golden: str) -> bool:
        """True when ``backing`` is another version of the image ``golden`` is a version of.

        Both must be golden images with a ``.recipe.json`` naming the same image, in the same
        directory. A rebuilt golden image then leaves the guests made on the old one alone.
        """
        if not backing or not os.path.isfile(backing):
            return False
        if os.path.dirname(os.path.realpath(backing)) != os.path.dirname(golden):
            return False
        names = []
        for path in (backing, golden):
            try:
                with open(recipe_sidecar_path(path), encoding="utf-8") as handle:
                    names.append(json.load(handle).get("name"))
            except (OSError, ValueError, AttributeError):
                return False
        return names[0] is not None and names[0] == names[1]

    def golden_identity(self, path: str) -> dict:
        sidecar_path = recipe_sidecar_path(path)
        sidecar = None
        if os.path.isfile(sidecar_path):
            with open(sidecar_path, encoding="utf-8") as handle:
                sidecar = json.load(handle)
        return golden_identity(path, sidecar, sha256_file(path))

    # --- layer descriptions (diff and result) ---------------------------------------------------
    def describe(self) -> dict:
        layers = {}
        for layer in ("persistent", "session"):
            path = self.paths[layer]
            if not os.path.exists(path):
                layers[layer] = None
                continue
            try:
                top = self.chain(path)[0]
                layers[layer] = {
                    "backing": top["backing"],
                    "backing_format": top["backing_format"],
                    "dirty": self.dirty(path),
                }
            except DiskError as exc:
                layers[layer] = {"error": str(exc)}
        return layers

    # --- operations -------------------------------------------------------------------------
    def op_create(self) -> None:
        golden = self.resolve_golden(required=True)
        self.result["golden"] = golden
        fmt = self.params["golden_format"]
        persistent, session = self.paths["persistent"], self.paths["session"]
        self.ensure_dir()
        if os.path.exists(persistent):
            chain = self.chain(persistent)
            try:
                check_overlay(chain, golden, fmt, "persistent layer")
            except ValueError as exc:
                older = chain[0]["backing"]
                if not self.same_image_older_version(older, golden):
                    raise DiskError(
                        f"{exc}; remove the guest's disks (op=absent) or restore a backup first"
                    ) from exc
                self.result["golden"] = os.path.realpath(older)
                self.module.warn(
                    f"guest {self.params['name']} stays on {older}, an earlier version of the "
                    f"golden image {golden}; remove and create its disks to move it"
                )
            if self.set_attributes(persistent, LAYER_MODE):
                self.note(f"fix owner/group/mode of {persistent}")
        else:
            self.note(f"create persistent layer on {golden}")
            if not self.check_mode:
                self.create_overlay(persistent, golden, fmt)
        if self.params["persistence"] == "non_persistent":
            self.ensure_session(fresh=False)
        elif os.path.exists(session):
            self.module.warn(
                f"{session} exists but the guest is persistent; it is left alone "
                "(commit or discard it, or remove it with op=absent)"
            )

    def ensure_session(self, fresh: bool) -> None:
        """Make sure an empty-or-kept session layer on the persistent layer exists.

        ``fresh`` throws away what the session holds (discard).
        """
        persistent, session = self.paths["persistent"], self.paths["session"]
        if not os.path.exists(session):
            self.note(f"create session layer on {persistent}")
            if not self.check_mode:
                self.create_overlay(session, persistent, "qcow2")
            return
        try:
            check_overlay(self.chain(session), persistent, "qcow2", "session layer")
            wrong = None
        except ValueError as exc:
            wrong = str(exc)
        if wrong is None and not (fresh and self.dirty(session)):
            if self.set_attributes(session, LAYER_MODE):
                self.note(f"fix owner/group/mode of {session}")
            return
        if wrong is not None and not fresh:
            raise DiskError(f"{wrong}; discard it (op=discard) to make it anew")
        self.assert_not_in_use(session)
        self.note(f"discard session layer {session} and create it anew on {persistent}")
        if not self.check_mode:
            self.create_overlay(session, persistent, "qcow2")

    def require_persistent(self) -> None:
        if not os.path.exists(self.paths["persistent"]):
            raise DiskError(
                f"guest {self.params['name']} has no persistent layer "
                f"{self.paths['persistent']}; run op=create first"
            )

    def op_commit(self) -> None:
        persistent, session = self.paths["persistent"], self.paths["session"]
        if not os.path.exists(session):
            self.actions.append("no session layer: nothing to commit")
            return
        golden = self.resolve_golden(required=False)
        session_chain = self.chain(session)
        try:
            target = check_commit_target(
                session_chain, persistent, golden, self.params["images_dir"]
            )
        except ValueError as exc:
            raise DiskError(str(exc)) from exc
        self.result["golden"] = session_chain[-1]["filename"]
        if not self.dirty(session):
            self.actions.append("session layer is empty: nothing to commit")
            return
        self.assert_not_in_use(session)
        self.assert_not_in_use(persistent)
        self.note(f"commit session layer into {target}")
        self.note(f"create session layer anew on {persistent}")
        if not self.check_mode:
            self.write_journal("committing")
            self.commit_session(target)

    # --- the commit journal ---------------------------------------------------------------------
    # A commit writes the session's clusters into the persistent layer; killed midway, the
    # persistent layer holds part of them. The journal, written durably before the commit
    # starts, makes the next operation finish it (the session is kept intact until then: -d)
    # instead of discarding the session over half a commit.
    def write_journal(self, stage: str) -> None:
        record = {
            "op": "commit",
            "stage": stage,
            "session": self.paths["session"],
            "target": self.paths["persistent"],
            "time": int(time.time()),
        }
        write_durable(self.journal, json.dumps(record, sort_keys=True) + "\n")

    def commit_session(self, target: str) -> None:
        session, persistent = self.paths["session"], self.paths["persistent"]
        self.run(
            [self.qemu_img, "commit", "-q", "-d", "-f", "qcow2", "-b", target, session],
            f"qemu-img commit {session}",
        )
        self.write_journal("committed")
        self.create_overlay(session, persistent, "qcow2")
        remove_durable(self.journal)

    def recover(self) -> None:
        """Finish a commit that a crash interrupted, or refuse by name."""
        if not os.path.lexists(self.journal):
            return
        if os.path.islink(self.journal) or not os.path.isfile(self.journal):
            raise DiskError(f"{self.journal} is not a regular file; refusing to use it")
        try:
            with open(self.journal, encoding="utf-8") as handle:
                record = json.load(handle)
            stage = record["stage"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DiskError(
                f"{self.journal}: an interrupted commit left a journal that cannot be read "
                f"({exc}); the persistent layer may hold half a commit: check it, restore a "
                "backup or remove the journal by hand"
            ) from exc
        persistent, session = self.paths["persistent"], self.paths["session"]
        if stage not in ("committing", "committed"):
            raise DiskError(f"{self.journal}: unknown commit stage {stage!r}")
        gone = [p for p in (session, persistent) if not os.path.exists(p)]
        if gone:
            raise DiskError(
                f"{self.journal}: a commit was interrupted but {gone[0]} is gone; the "
                "persistent layer may hold half a commit: restore a backup"
            )
        if stage == "committing":
            try:
                check_overlay(self.chain(session), persistent, "qcow2", "session layer")
            except ValueError as exc:
                raise DiskError(
                    f"{self.journal}: cannot finish the interrupted commit: {exc}"
                ) from exc
            self.assert_not_in_use(session)
            self.assert_not_in_use(persistent)
            self.note(f"finish the commit of {session} into {persistent} that was interrupted")
            if not self.check_mode:
                self.commit_session(persistent)
            return
        # The session is replaced here: a guest still running on it (started by hand after
        # the crash) would lose what it wrote since.
        self.assert_not_in_use(session)
        self.note(f"create session layer anew on {persistent} (the interrupted commit completed)")
        if not self.check_mode:
            self.create_overlay(session, persistent, "qcow2")
            remove_durable(self.journal)

    def op_discard(self) -> None:
        self.require_persistent()
        self.ensure_dir()
        self.ensure_session(fresh=True)

    def op_backup(self) -> None:
        self.require_persistent()
        backup = self.require_backup_path()
        persistent = self.paths["persistent"]
        if is_within(backup, self.paths["dir"]) or is_within(backup, self.params["images_dir"]):
            raise DiskError(
                f"backup: {backup} must lie outside the guest's directory and the images directory"
            )
        chain = self.chain(persistent)
        if not chain[0]["backing"]:
            raise DiskError(f"persistent layer {persistent} has no backing file")
        golden_param = self.resolve_golden(required=False)
        if golden_param and not same_file(golden_param, chain[-1]["filename"]):
            raise DiskError(
                f"persistent layer {persistent} ends in {chain[-1]['filename']}, not in golden "
                f"{golden_param}"
            )
        self.assert_not_in_use(persistent)
        source_sha = sha256_file(persistent)
        sidecar_path = backup + SIDECAR_SUFFIX
        self.result["golden"] = chain[0]["backing"]
        if os.path.isfile(backup) and os.path.isfile(sidecar_path):
            current = self.read_sidecar(sidecar_path)
            if current.get("sha256") == source_sha and sha256_file(backup) == source_sha:
                self.result["backup"] = {"path": backup, "sidecar": sidecar_path, **current}
                self.actions.append("backup is up to date")
                return
        golden = self.golden_identity(chain[0]["backing"])
        sidecar = backup_sidecar(self.params["name"], persistent, source_sha, chain, golden)
        self.result["backup"] = {"path": backup, "sidecar": sidecar_path, **sidecar}
        self.note(f"copy {persistent} sparsely to {backup} and write {sidecar_path}")
        if self.check_mode:
            return
        backup_dir = os.path.dirname(backup)
        if not os.path.isdir(backup_dir):
            os.makedirs(backup_dir, 0o700)
        tmp = self.tmp_name(backup)
        tmp_sidecar = self.tmp_name(sidecar_path)
        try:
            sparse_copy(persistent, tmp)
            os.chmod(tmp, BACKUP_MODE)
            if sha256_file(tmp) != source_sha:
                raise DiskError(f"{persistent} changed while it was copied; backup abandoned")
            durable_replace(tmp, backup)
            write_durable(
                sidecar_path, json.dumps(sidecar, indent=2, sort_keys=True) + "\n", BACKUP_MODE
            )
        finally:
            self.remove_quietly(tmp)
            self.remove_quietly(tmp_sidecar)

    def require_backup_path(self) -> str:
        backup = self.params["backup"]
        if not backup:
            raise DiskError(f"backup: required for op={self.params['op']}")
        return os.path.abspath(backup)

    @staticmethod
    def read_sidecar(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError) as exc:
            raise DiskError(f"cannot read backup sidecar {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise DiskError(f"backup sidecar {path} does not hold a JSON object")
        return data

    def op_restore(self) -> None:
        backup = self.require_backup_path()
        sidecar_path = backup + SIDECAR_SUFFIX
        if not os.path.isfile(backup):
            raise DiskError(f"backup: {backup} does not exist")
        if not os.path.isfile(sidecar_path):
            raise DiskError(f"backup: sidecar {sidecar_path} does not exist; cannot verify")
        sidecar = self.read_sidecar(sidecar_path)
        actual = sha256_file(backup)
        backing = sidecar.get("backing_file")
        if not backing or not os.path.isfile(backing):
            raise DiskError(
                f"backup {backup} was taken on golden image {backing}, which no longer exists"
            )
        chain = self.chain(backup, as_root=True)
        golden = self.golden_identity(backing)
        golden_param = self.resolve_golden(required=False)
        if golden_param and not same_file(golden_param, backing):
            raise DiskError(
                f"backup {backup} was taken on golden image {backing}, not on {golden_param}"
            )
        try:
            verify_backup(sidecar, backup, actual, chain, golden)
        except ValueError as exc:
            raise DiskError(str(exc)) from exc
        self.result["golden"] = golden["path"]
        self.result["backup"] = {"path": backup, "sidecar": sidecar_path, **sidecar}
        persistent = self.paths["persistent"]
        self.ensure_dir()
        if os.path.exists(persistent) and sha256_file(persistent) == actual:
            if self.set_attributes(persistent, LAYER_MODE):
                self.note(f"fix owner/group/mode of {persistent}")
        else:
            if os.path.exists(persistent):
                self.assert_not_in_use(persistent)
            if os.path.exists(self.paths["session"]):
                self.assert_not_in_use(self.paths["session"])
            self.note(f"restore {persistent} from {backup}")
            if not self.check_mode:
                tmp = self.tmp_name(persistent)
                try:
                    sparse_copy(backup, tmp)
                    if sha256_file(tmp) != actual:
                        raise DiskError(f"{backup} changed while it was copied; restore abandoned")
                    self.set_attributes(tmp, LAYER_MODE)
                    durable_replace(tmp, persistent)
                finally:
                    self.remove_quietly(tmp)
            if os.path.exists(self.paths["session"]):
                self.note(f"create session layer anew on the restored {persistent}")
                if not self.check_mode:
                    self.create_overlay(self.paths["session"], persistent, "qcow2")

    def op_check(self) -> None:
        golden = self.resolve_golden(required=False)
        persistent, session = self.paths["persistent"], self.paths["session"]
        self.require_persistent()
        problems = []
        if os.path.lexists(self.journal):
            problems.append(
                f"{self.journal}: a commit was interrupted; the next create, commit or discard "
                "finishes it"
            )
        chain = self.chain(persistent)
        if not chain[0]["backing"]:
            problems.append(f"persistent layer {persistent} has no backing file")
        elif golden and not same_file(chain[-1]["filename"], golden):
            problems.append(f"persistent layer {persistent} ends in {chain[-1]['filename']}")
        self.result["golden"] = chain[-1]["filename"]
        if os.path.exists(session):
            try:
                check_overlay(self.chain(session), persistent, "qcow2", "session layer")
            except ValueError as exc:
                problems.append(str(exc))
        results = {}
        for layer in ("persistent", "session"):
            path = self.paths[layer]
            if not os.path.exists(path):
                continue
            rc, out, err = self.module.run_command(
                [*self.runas, self.qemu_img, "check", "--output=json", "-f", "qcow2", path]
            )
            try:
                report = json.loads(out)
            except ValueError:
                raise DiskError(f"qemu-img check {path} failed (rc={rc}): {err.strip()}") from None
            report["rc"] = rc
            results[layer] = report
            errors = report.get("check-errors", 0) + report.get("corruptions", 0)
            if errors:
                problems.append(f"{layer} layer {path}: {errors} error(s)/corruption(s)")
            if report.get("leaks", 0):
                self.module.warn(f"{layer} layer {path}: {report['leaks']} leaked cluster(s)")
        self.result["check"] = results
        if problems:
            raise DiskError("; ".join(problems))

    def op_absent(self) -> None:
        directory = self.paths["dir"]
        guests_dir = os.path.dirname(directory)
        removed: list[str] = []
        self.result["removed"] = removed
        if not os.path.lexists(directory):
            return
        expected = os.path.join(os.path.realpath(guests_dir), self.params["name"])
        if os.path.islink(directory) or os.path.realpath(directory) != expected:
            raise DiskError(
                f"{directory} resolves to {os.path.realpath(directory)}, outside the guest's own "
                "directory; refusing to remove anything"
            )
        candidates = [self.paths["persistent"], self.paths["session"], self.journal]
        candidates += [self.tmp_name(p) for p in candidates]
        doomed = [p for p in candidates if os.path.lexists(p)]
        for path in doomed:
            if os.path.islink(path) or not is_within(path, directory):
                raise DiskError(
                    f"{path} resolves to {os.path.realpath(path)}, outside the guest's own "
                    "directory; refusing to remove anything"
                )
            if is_within(path, self.params["images_dir"]):
                raise DiskError(f"{path} lies in the images directory; refusing to remove it")
        for path in doomed:
            self.note(f"remove {path}")
            removed.append(path)
            if not self.check_mode:
                os.unlink(path)
        left = sorted(set(os.listdir(directory)) - {os.path.basename(p) for p in doomed})
        if left:
            self.module.warn(f"{directory} still holds files mv6 did not make: {', '.join(left)}")
            return
        self.note(f"remove directory {directory}")
        removed.append(directory)
        if not self.check_mode:
            os.rmdir(directory)

    def run_op(self) -> dict:
        op = self.params["op"]
        before = self.describe() if os.path.isdir(self.paths["dir"]) else {}
        if op in ("create", "commit", "discard", "backup", "restore"):
            self.recover()
        getattr(self, f"op_{op}")()
        if self.check_mode or not os.path.isdir(self.paths["dir"]):
            after = self.predict(before, op)
        else:
            after = self.describe()
        result = {
            "changed": self.changed,
            "paths": self.paths,
            "layers": after,
            "actions": self.actions,
            **self.result,
        }
        if self.module._diff:
            result["diff"] = {"before": before, "after": after}
        return result

    def predict(self, before: dict, op: str) -> dict:
        """The layers as they would be after ``op`` (check mode, or after op=absent)."""
        if op == "absent":
            return {}
        after = {k: dict(v) if v else v for k, v in before.items()}
        after.setdefault("persistent", None)
        after.setdefault("session", None)
        golden_fmt = self.params["golden_format"]
        if op == "create" and after["persistent"] is None:
            after["persistent"] = {
                "backing": self.result.get("golden"),
                "backing_format": golden_fmt,
                "dirty": False,
            }
        if op == "restore" and self.changed:
            after["persistent"] = {
                "backing": self.result.get("golden"),
                "backing_format": self.result.get("backup", {}).get("backing_format"),
                "dirty": True,
            }
        fresh_session = {
            "backing": self.paths["persistent"],
            "backing_format": "qcow2",
            "dirty": False,
        }
        if op == "create" and self.params["persistence"] == "non_persistent":
            after["session"] = after["session"] or fresh_session
        if op in ("commit", "discard") and self.changed:
            if op == "commit" and after["persistent"]:
                after["persistent"]["dirty"] = True
            after["session"] = fresh_session
        if op == "restore" and self.changed and after["session"]:
            after["session"] = fresh_session
        return after


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "op": {
                "type": "str",
                "default": "create",
                "choices": ["create", "commit", "discard", "backup", "restore", "check", "absent"],
            },
            "golden": {"type": "path"},
            "golden_format": {"type": "str", "default": "qcow2", "choices": ["qcow2", "raw"]},
            "persistence": {
                "type": "str",
                "default": "persistent",
                "choices": ["persistent", "non_persistent"],
            },
            "guests_dir": {"type": "path", "default": "/var/lib/mv6/guests"},
            "images_dir": {"type": "path", "default": "/var/lib/mv6/images"},
            "backup": {"type": "path"},
            "owner": {"type": "str", "default": "libvirt-qemu"},
            "group": {"type": "str", "default": "kvm"},
            "qemu_img": {"type": "path", "default": "qemu-img"},
        },
        required_if=[
            ("op", "create", ("golden",)),
            ("op", "backup", ("backup",)),
            ("op", "restore", ("backup",)),
        ],
        supports_check_mode=True,
    )
    try:
        validate_guest_name(module.params["name"])
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    try:
        result = GuestDisk(module).run_op()
    except (DiskError, ValueError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
