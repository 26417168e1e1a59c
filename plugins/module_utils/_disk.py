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
import struct

from ansible_collections.mv6.transition.plugins.module_utils import _names

PERSISTENT = "persistent.qcow2"
SESSION = "session.qcow2"
SIDECAR_SUFFIX = ".json"
SIDECAR_KIND = "mv6-guest-disk-backup"
SIDECAR_VERSION = 1
JOURNAL = "commit.journal"

QCOW2_MAGIC = b"QFI\xfb"
# Header extension types (docs/interop/qcow2.txt in QEMU's tree).
EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_DATA_FILE = 0x44415441
INCOMPAT_DATA_FILE = 1 << 2
AUTOCLEAR_DATA_FILE_RAW = 1 << 1
MAX_BACKING_NAME = 1023


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


def overlay_command(
    qemu_img: str, overlay: str, backing: str, backing_format: str, size: int | None = None
) -> list[str]:
    """``qemu-img create`` for a qcow2 overlay; the backing format is always named (-F).

    With ``size`` (read from the checked header), ``-u`` keeps qemu-img from opening the
    backing file at all.
    """
    if backing_format not in ("qcow2", "raw"):
        raise ValueError(f"backing format {backing_format!r} must be 'qcow2' or 'raw'")
    if not os.path.isabs(backing):
        raise ValueError(f"backing file {backing!r} must be an absolute path")
    argv = [qemu_img, "create", "-q", "-f", "qcow2", "-b", backing, "-F", backing_format]
    if size is None:
        return [*argv, overlay]
    return [*argv, "-u", overlay, str(int(size))]


def header_text(path: str, data: bytes, field: str) -> str:
    """A name from a qcow2 header, exactly as QEMU will use it: bytes that are not UTF-8
    would be checked here as one name and opened by QEMU as another, so they are refused."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: qcow2 header {field} is not valid UTF-8 ({exc})") from exc


def read_qcow2_header(path: str) -> dict:
    """Parse the qcow2 header of ``path`` in Python, without QEMU: the fields that make QEMU
    open another file (backing file, backing format, external data file) and the size.

    A guest-writable header is hostile input, and ``qemu-img info`` already follows what it
    names, so the header is read here first. Returns magic_ok, version, size, cluster_bits,
    crypt_method, backing (str or None), backing_format (str or None), data_file (str or None,
    also set when only the incompatible feature bit names one).
    """
    with open(path, "rb") as handle:
        head = handle.read(104)
        if len(head) < 72 or head[:4] != QCOW2_MAGIC:
            return {"magic_ok": False}
        version, backing_offset, backing_size, cluster_bits, size, crypt = struct.unpack(
            ">IQIIQI", head[4:36]
        )
        if version not in (2, 3):
            raise ValueError(f"{path}: qcow2 header version {version} is not 2 or 3")
        if not 9 <= cluster_bits <= 21:
            raise ValueError(f"{path}: qcow2 header cluster_bits {cluster_bits} is out of range")
        cluster = 1 << cluster_bits
        incompatible = autoclear = 0
        header_length = 72
        if version == 3:
            if len(head) < 104:
                raise ValueError(f"{path}: qcow2 v3 header is truncated")
            incompatible, _compat, autoclear, _order, header_length = struct.unpack(
                ">QQQII", head[72:104]
            )
            if not 104 <= header_length <= cluster:
                raise ValueError(f"{path}: qcow2 header_length {header_length} is out of range")
        info = {
            "magic_ok": True,
            "version": version,
            "size": size,
            "cluster_bits": cluster_bits,
            "crypt_method": crypt,
            "backing": None,
            "backing_format": None,
            "data_file": "(named by the incompatible feature bit)"
            if incompatible & INCOMPAT_DATA_FILE or autoclear & AUTOCLEAR_DATA_FILE_RAW
            else None,
        }
        # QEMU reads header extensions up to the backing file name when there is one, else to
        # the end of the first cluster: read exactly what it reads.
        ext_end = backing_offset if backing_offset else cluster
        if backing_offset and not header_length <= backing_offset <= cluster:
            raise ValueError(
                f"{path}: qcow2 backing_file_offset {backing_offset} lies outside the header"
            )
        handle.seek(header_length)
        offset = header_length
        while offset + 8 <= ext_end:
            ext = handle.read(8)
            if len(ext) < 8:
                break
            ext_type, ext_len = struct.unpack(">II", ext)
            if ext_type == EXT_END:
                break
            if offset + 8 + ext_len > ext_end:
                raise ValueError(
                    f"{path}: qcow2 header extension {ext_type:#x} runs past the header"
                )
            data = handle.read(ext_len)
            if ext_type == EXT_BACKING_FORMAT:
                info["backing_format"] = header_text(path, data, "backing format")
            elif ext_type == EXT_DATA_FILE:
                info["data_file"] = (
                    header_text(path, data, "data file") or info["data_file"] or "''"
                )
            padded = (ext_len + 7) & ~7
            handle.seek(padded - ext_len, os.SEEK_CUR)
            offset += 8 + padded
        if backing_offset or backing_size:
            if backing_size > MAX_BACKING_NAME or backing_offset + backing_size > cluster:
                raise ValueError(
                    f"{path}: qcow2 backing file name (offset {backing_offset}, "
                    f"{backing_size} bytes) lies outside the header"
                )
            handle.seek(backing_offset)
            info["backing"] = header_text(path, handle.read(backing_size), "backing file name")
    return info


def check_header(
    path: str, header: dict, allowed_backing, what: str, want_backing: bool | None = None
) -> None:
    """Refuse a qcow2 header that would make QEMU open a file it should not.

    ``allowed_backing(name)`` says whether an absolute backing file name is acceptable.
    ``want_backing`` True/False requires a backing file / none. Errors name the file and the
    header field.
    """
    if not header.get("magic_ok"):
        raise ValueError(f"{what} {path}: not a qcow2 image (field: magic)")
    if header["data_file"]:
        raise ValueError(
            f"{what} {path}: the qcow2 header names an external data file "
            f"{header['data_file']!r} (field: data-file); refusing to open it"
        )
    if header["crypt_method"]:
        raise ValueError(
            f"{what} {path}: the qcow2 header asks for encryption method "
            f"{header['crypt_method']} (field: crypt_method); MV6 layers are not encrypted"
        )
    backing = header["backing"]
    if backing is None:
        if want_backing:
            raise ValueError(
                f"{what} {path}: the qcow2 header names no backing file (field: backing)"
            )
        return
    if want_backing is False:
        raise ValueError(
            f"{what} {path}: the qcow2 header names a backing file {backing!r} (field: backing);"
            " a golden image must be a standalone base"
        )
    if "\0" in backing or backing.startswith("json:") or not os.path.isabs(backing):
        raise ValueError(
            f"{what} {path}: backing file {backing!r} is not an absolute path (field: backing);"
            " json: and protocol names are refused"
        )
    if os.path.normpath(backing) != backing:
        raise ValueError(
            f"{what} {path}: backing file {backing!r} is not a normalised path (field: backing)"
        )
    if header["backing_format"] not in ("qcow2", "raw"):
        raise ValueError(
            f"{what} {path}: backing format {header['backing_format']!r} must be named as qcow2 "
            "or raw (field: backing_format); QEMU would otherwise probe it"
        )
    if not allowed_backing(backing):
        raise ValueError(
            f"{what} {path}: backing file {backing!r} is not the expected file (field: backing)"
        )


def header_chain(path: str, allowed_backing, what: str, depth: int = 4) -> list[dict]:
    """Walk a chain by its headers alone, top first, refusing anything hostile on the way.

    A raw backing file ends the walk (it has no header to follow).
    """
    out = []
    current, fmt = path, "qcow2"
    while fmt == "qcow2":
        if len(out) >= depth:
            raise ValueError(f"{what} {path}: the backing chain is deeper than {depth} layers")
        header = read_qcow2_header(current)
        check_header(current, header, allowed_backing, what if not out else f"backing of {what}")
        out.append({**header, "filename": current})
        if header["backing"] is None:
            break
        current, fmt = header["backing"], header["backing_format"]
    return out


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp: str, path: str) -> None:
    """Rename ``tmp`` over ``path`` so that after a crash either the old or the new file is
    there, complete: the file's data first, then the rename, then the directory entry."""
    fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def write_durable(path: str, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` through a temporary file and :func:`durable_replace`."""
    head, tail = os.path.split(os.path.abspath(path))
    tmp = os.path.join(head, f".{tail}.mv6tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    durable_replace(tmp, path)


def remove_durable(path: str) -> None:
    os.unlink(path)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


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
        fout.flush()
        os.fsync(fout.fileno())
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
