# Copyright (c) 2026, mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Disk-chain core of mv6.transition. PRIVATE to the collection: no compatibility promise.

Pure helpers over plain data (qemu-img JSON, paths, sidecars) plus two tiny file helpers
(sha256, sparse copy). Errors are ``ValueError`` with a message that names what is wrong.
No Ansible imports, so unit tests and the module share one implementation.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from ansible_collections.mv6.transition.plugins.module_utils import _names

PERSISTENT = "persistent.qcow2"
SESSION = "session.qcow2"
SIDECAR_SUFFIX = ".json"
SIDECAR_KIND = "mv6-guest-disk-backup"
SIDECAR_VERSION = 1


def validate_guest_name(name: str) -> str:
    """Return ``name`` if it is a guest name (the planner's rule, module_utils/_names.py),
    which is also a safe directory name under the guests directory."""
    if not _names.is_guest_name(name):
        raise ValueError(f"name: {name!r} is not a valid guest name ({_names.GUEST_NAME_RULE})")
    return name


def guest_paths(guests_dir: str, name: str) -> dict[str, str]:
    """The files a guest owns: its directory and its two layers."""
    validate_guest_name(name)
    directory = os.path.join(os.path.abspath(guests_dir), name)
    return {
        "dir": directory,
        "persistent": os.path.join(directory, PERSISTENT),
        "session": os.path.join(directory, SESSION),
    }


def is_within(path: str, directory: str) -> bool:
    """True when ``path`` (after resolving symlinks) lies inside ``directory``."""
    real_path = os.path.realpath(path)
    real_dir = os.path.realpath(directory)
    return os.path.commonpath([real_path, real_dir]) == real_dir and real_path != real_dir


def overlay_command(qemu_img: str, overlay: str, backing: str, backing_format: str) -> list[str]:
    """``qemu-img create`` for a qcow2 overlay; the backing format is always named (-F)."""
    if backing_format not in ("qcow2", "raw"):
        raise ValueError(f"backing format {backing_format!r} must be 'qcow2' or 'raw'")
    if not os.path.isabs(backing):
        raise ValueError(f"backing file {backing!r} must be an absolute path")
    return [qemu_img, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format, overlay]


def parse_chain(info_json: str) -> list[dict]:
    """Turn ``qemu-img info --output=json --backing-chain`` into a list, top layer first.

    Each entry: filename, format, virtual_size, actual_size, backing (absolute path or None),
    backing_format (or None).
    """
    try:
        data = json.loads(info_json)
    except ValueError as exc:
        raise ValueError(f"qemu-img info did not return JSON: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise ValueError("qemu-img info returned no image")
    chain = []
    for layer in data:
        if not isinstance(layer, dict) or "filename" not in layer or "format" not in layer:
            raise ValueError(f"qemu-img info returned an entry without filename/format: {layer!r}")
        backing = layer.get("full-backing-filename") or layer.get("backing-filename")
        chain.append(
            {
                "filename": layer["filename"],
                "format": layer["format"],
                "virtual_size": layer.get("virtual-size"),
                "actual_size": layer.get("actual-size"),
                "backing": backing,
                "backing_format": layer.get("backing-filename-format"),
            }
        )
    return chain


def same_file(a: str | None, b: str | None) -> bool:
    """Compare two paths after resolving symlinks (missing files compare by path)."""
    if not a or not b:
        return False
    return os.path.realpath(a) == os.path.realpath(b)


def check_overlay(
    chain: list[dict], expected_backing: str, expected_format: str, what: str
) -> None:
    """Raise unless the top layer of ``chain`` is qcow2 backed by ``expected_backing``."""
    top = chain[0]
    if top["format"] != "qcow2":
        raise ValueError(f"{what} {top['filename']} is {top['format']}, expected qcow2")
    if not top["backing"]:
        raise ValueError(
            f"{what} {top['filename']} has no backing file, expected {expected_backing}"
        )
    if not same_file(top["backing"], expected_backing):
        raise ValueError(
            f"{what} {top['filename']} is backed by {top['backing']}, expected {expected_backing}"
        )
    if top["backing_format"] != expected_format:
        raise ValueError(
            f"{what} {top['filename']} names backing format {top['backing_format']!r}, "
            f"expected {expected_format!r}"
        )


def check_commit_target(
    session_chain: list[dict], persistent: str, golden: str | None, images_dir: str | None
) -> str:
    """Return the layer a session may be committed into, or raise.

    The target must be the guest's own persistent layer, a qcow2 overlay that itself has a
    backing file. It must never be the golden image (given explicitly, or any file in the
    images directory, or any image without a backing file): committing into a shared base
    silently corrupts every sibling overlay.
    """
    if len(session_chain) < 2 or not session_chain[0]["backing"]:
        raise ValueError(f"session layer {session_chain[0]['filename']} has no backing file")
    target = session_chain[0]["backing"]
    if golden and same_file(target, golden):
        raise ValueError(
            f"refusing to commit: the session layer is backed directly by the golden image "
            f"{target}; commit would write into the read-only shared base"
        )
    if images_dir and is_within(target, images_dir):
        raise ValueError(
            f"refusing to commit: target {target} is inside the golden image directory {images_dir}"
        )
    target_layer = session_chain[1]
    if not target_layer["backing"]:
        raise ValueError(
            f"refusing to commit: target {target} has no backing file, so it is a base image, "
            "not a guest's persistent layer"
        )
    if not same_file(target, persistent):
        raise ValueError(
            f"refusing to commit: the session layer is backed by {target}, not by the guest's "
            f"persistent layer {persistent}"
        )
    return target


def top_has_data(map_json: str) -> bool:
    """True when ``qemu-img map --output=json`` shows clusters allocated in the top layer."""
    try:
        extents = json.loads(map_json)
    except ValueError as exc:
        raise ValueError(f"qemu-img map did not return JSON: {exc}") from exc
    return any(e.get("depth") == 0 and e.get("present", True) for e in extents)


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def sparse_copy(src: str, dst: str, chunk: int = 1 << 20) -> None:
    """Copy ``src`` to ``dst`` keeping holes: all-zero blocks are skipped with a seek."""
    zero = bytes(chunk)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for block in iter(lambda: fin.read(chunk), b""):
            if block == zero[: len(block)]:
                fout.seek(len(block), os.SEEK_CUR)
            else:
                fout.write(block)
        fout.truncate()
    shutil.copymode(src, dst)


def golden_identity(golden: str, recipe_sidecar: dict | None, sha256: str) -> dict:
    """The identity of a golden image: resolved path, measured sha256 and version.

    ``recipe_sidecar`` is the ``.recipe.json`` that roles/golden_image writes beside each image.
    Its version is used only when its sha256 matches the measured one; otherwise the version
    is the first 12 hex digits of the measured sha256.
    """
    side = recipe_sidecar or {}
    version = side.get("version") if side.get("sha256") == sha256 else None
    return {
        "path": os.path.realpath(golden),
        "sha256": sha256,
        "version": version or sha256[:12],
    }


def recipe_sidecar_path(golden: str) -> str:
    """``/x/debian12-abc.qcow2`` -> ``/x/debian12-abc.recipe.json`` (symlinks resolved)."""
    base, _ext = os.path.splitext(os.path.realpath(golden))
    return base + ".recipe.json"


def backup_sidecar(
    guest: str, source: str, backup_sha256: str, chain: list[dict], golden: dict
) -> dict:
    """The sidecar written beside a backup: enough to verify it and its chain on restore."""
    top = chain[0]
    return {
        "kind": SIDECAR_KIND,
        "format_version": SIDECAR_VERSION,
        "guest": guest,
        "source": source,
        "sha256": backup_sha256,
        "format": top["format"],
        "virtual_size": top["virtual_size"],
        "backing_file": golden["path"],
        "backing_format": top["backing_format"],
        "backing_sha256": golden["sha256"],
        "backing_version": golden["version"],
    }


def verify_backup(
    sidecar: dict, backup_path: str, actual_sha256: str, chain: list[dict], golden: dict
) -> None:
    """Raise unless the backup matches its sidecar and the golden image it was taken on."""
    if sidecar.get("kind") != SIDECAR_KIND:
        raise ValueError(f"backup sidecar of {backup_path} is not a {SIDECAR_KIND} file")
    if sidecar.get("sha256") != actual_sha256:
        raise ValueError(
            f"backup {backup_path} fails its checksum: sha256 is {actual_sha256}, the sidecar "
            f"says {sidecar.get('sha256')}; the backup is damaged or was modified"
        )
    top = chain[0]
    if not same_file(top["backing"], sidecar.get("backing_file")):
        raise ValueError(
            f"backup {backup_path} is backed by {top['backing']}, the sidecar says "
            f"{sidecar.get('backing_file')}"
        )
    if not same_file(golden["path"], sidecar.get("backing_file")):
        raise ValueError(
            f"backup {backup_path} was taken on golden image {sidecar.get('backing_file')}, "
            f"not on {golden['path']}"
        )
    if golden["sha256"] != sidecar.get("backing_sha256"):
        raise ValueError(
            f"backup {backup_path} was taken on golden image version "
            f"{sidecar.get('backing_version')} (sha256 {sidecar.get('backing_sha256')}), but "
            f"{golden['path']} is now version {golden['version']} (sha256 {golden['sha256']}); "
            "restoring it would give a corrupt disk"
        )
