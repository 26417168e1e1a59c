"""The disk-chain core (plugins/module_utils/_disk.py): names, paths, chain rules, sidecars.

The chain JSON here is what qemu-img 7.2 prints for ``info --output=json --backing-chain``;
``test_parse_chain_real_qemu_img`` checks the parser against the real program as well.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _disk


def layer(filename, backing=None, fmt="qcow2", backing_format="qcow2"):
    entry = {"filename": filename, "format": fmt, "virtual-size": 67108864, "actual-size": 4096}
    if backing:
        entry["backing-filename"] = backing
        entry["full-backing-filename"] = backing
        entry["backing-filename-format"] = backing_format
    return entry


GOLDEN = "/srv/images/debian12-abc.qcow2"
PERSISTENT = "/srv/guests/web6/persistent.qcow2"
SESSION = "/srv/guests/web6/session.qcow2"


def chain(*layers):
    return _disk.parse_chain(json.dumps(list(layers)))


GOOD_SESSION_CHAIN = chain(layer(SESSION, PERSISTENT), layer(PERSISTENT, GOLDEN), layer(GOLDEN))


# --- names and paths ----------------------------------------------------------------------
@pytest.mark.parametrize("name", ["web6", "a", "lab-6-v4", "a" * 63])
def test_valid_guest_names(name):
    assert _disk.validate_guest_name(name) == name


BAD_NAMES = ["", "../x", "a/b", ".hidden", "-x", "a..b", "a" * 64, "a b", "Web6", "web_6", "a.b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_guest_names(name):
    msg = (
        f"name: {name!r} is not a valid guest name (1 to 63 lowercase letters, digits or '-', "
        "not starting or ending with '-')"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.validate_guest_name(name)


def test_guest_paths():
    assert _disk.guest_paths("/var/lib/mv6/guests", "web6") == {
        "dir": "/var/lib/mv6/guests/web6",
        "persistent": "/var/lib/mv6/guests/web6/persistent.qcow2",
        "session": "/var/lib/mv6/guests/web6/session.qcow2",
    }


def test_is_within_resolves_symlinks(tmp_path):
    inside = tmp_path / "g" / "web6"
    inside.mkdir(parents=True)
    outside = tmp_path / "images"
    outside.mkdir()
    (inside / "link").symlink_to(outside / "golden.qcow2")
    assert _disk.is_within(str(inside / "persistent.qcow2"), str(inside))
    assert not _disk.is_within(str(inside / "link"), str(inside))
    assert not _disk.is_within(str(inside), str(inside))
    assert not _disk.is_within(str(tmp_path / "g" / "web60" / "x"), str(inside))


# --- qemu-img commands and JSON ---------------------------------------------------------------
def test_overlay_command_names_backing_format():
    assert _disk.overlay_command("qemu-img", "/g/p.qcow2", GOLDEN, "raw") == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", GOLDEN, "-F", "raw", "/g/p.qcow2",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("backing", "fmt", "msg"),
    [
        (GOLDEN, "vmdk", "backing format 'vmdk' must be 'qcow2' or 'raw'"),
        ("images/x.qcow2", "qcow2", "backing file 'images/x.qcow2' must be an absolute path"),
    ],
)
def test_overlay_command_errors(backing, fmt, msg):
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.overlay_command("qemu-img", "/g/p.qcow2", backing, fmt)


def test_parse_chain_top_first():
    assert [(c["filename"], c["backing"]) for c in GOOD_SESSION_CHAIN] == [
        (SESSION, PERSISTENT),
        (PERSISTENT, GOLDEN),
        (GOLDEN, None),
    ]
    assert GOOD_SESSION_CHAIN[0]["backing_format"] == "qcow2"
    assert GOOD_SESSION_CHAIN[2]["backing_format"] is None


@pytest.mark.parametrize(
    ("text", "msg"),
    [
        ("[]", "qemu-img info returned no image"),
        ('[{"format": "raw"}]', "qemu-img info returned an entry without filename/format: "),
        ("not json", "qemu-img info did not return JSON: "),
    ],
)
def test_parse_chain_errors(text, msg):
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}"):
        _disk.parse_chain(text)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_parse_chain_real_qemu_img(tmp_path):
    base, top = tmp_path / "base.raw", tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", base, "1M"], check=True, timeout=30)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top],
        check=True,
        timeout=30,
    )
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "--backing-chain", top],
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    ).stdout
    parsed = _disk.parse_chain(out)
    assert [(c["format"], c["backing"], c["backing_format"]) for c in parsed] == [
        ("qcow2", str(base), "raw"),
        ("raw", None, None),
    ]


def qimg(*argv):
    subprocess.run(["qemu-img", *map(str, argv)], check=True, timeout=30, capture_output=True)


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_overlay_command_with_size_does_not_open_the_backing(tmp_path):
    top = tmp_path / "top.qcow2"
    argv = _disk.overlay_command("qemu-img", str(top), "/nonexistent/base.qcow2", "qcow2", 1 << 20)
    assert argv[-3:] == ["-u", str(top), "1048576"]
    subprocess.run(argv, check=True, timeout=30)
    assert _disk.read_qcow2_header(str(top))["backing"] == "/nonexistent/base.qcow2"


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_header_of_real_images(tmp_path):
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "2M")
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    assert _disk.read_qcow2_header(str(top)) == {
        "magic_ok": True,
        "version": 3,
        "size": 2 << 20,
        "cluster_bits": 16,
        "crypt_method": 0,
        "backing": str(base),
        "backing_format": "qcow2",
        "data_file": None,
    }
    walked = _disk.header_chain(str(top), lambda n: n == str(base), "layer")
    assert [h["filename"] for h in walked] == [str(top), str(base)]
    v2 = tmp_path / "v2.qcow2"
    qimg("create", "-q", "-f", "qcow2", "-o", "compat=0.10", v2, "1M")
    assert _disk.read_qcow2_header(str(v2))["version"] == 2
    raw = tmp_path / "raw.img"
    raw.write_bytes(b"\0" * 4096)
    assert _disk.read_qcow2_header(str(raw)) == {"magic_ok": False}


def hostile(tmp_path, kind):
    path = tmp_path / f"{kind}.qcow2"
    base = tmp_path / "base.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "1M")
    if kind == "data_file":
        qimg("create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'victim'}", path, "1M")
    elif kind == "json":
        qimg("create", "-q", "-f", "qcow2", path, "1M")
        qimg("rebase", "-u", "-F", "raw", "-b", 'json:{"file":{"filename":"/etc/shadow"}}', path)
    elif kind == "relative":
        qimg("create", "-q", "-f", "qcow2", path, "1M")
        qimg("rebase", "-u", "-F", "qcow2", "-b", "base.qcow2", path)
    elif kind == "dotdot":
        qimg("create", "-q", "-f", "qcow2", path, "1M")
        qimg("rebase", "-u", "-F", "qcow2", "-b", f"{tmp_path}/x/../base.qcow2", path)
    elif kind == "no_format":
        qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", path)
        data = bytearray(path.read_bytes())
        at = data.find(bytes.fromhex("e2792aca"))
        data[at : at + 4] = bytes.fromhex("12345678")  # an unknown extension: no format named
        path.write_bytes(bytes(data))
    elif kind == "other":
        qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", path)
    elif kind == "not_qcow2":
        path.write_bytes(b"KDMV" + b"\0" * 4092)
    return path


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
@pytest.mark.parametrize(
    ("kind", "msg"),
    [
        (
            "data_file",
            "the qcow2 header names an external data file '{d}/victim' (field: data-file)",
        ),
        (
            "json",
            'backing file \'json:{{"file":{{"filename":"/etc/shadow"}}}}\' is not an '
            "absolute path (field: backing)",
        ),
        ("relative", "backing file 'base.qcow2' is not an absolute path (field: backing)"),
        ("dotdot", "backing file '{d}/x/../base.qcow2' is not a normalised path (field: backing)"),
        ("no_format", "backing format None must be named as qcow2 or raw (field: backing_format)"),
        ("other", "backing file '{d}/base.qcow2' is not the expected file (field: backing)"),
        ("not_qcow2", "not a qcow2 image (field: magic)"),
    ],
)
def test_hostile_headers_are_refused_by_name(tmp_path, kind, msg):
    path = hostile(tmp_path, kind)
    with pytest.raises(ValueError) as err:
        _disk.header_chain(str(path), lambda _n: False, "session layer")
    assert str(err.value).startswith(f"session layer {path}: " + msg.format(d=tmp_path))


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_golden_image_must_be_a_base(tmp_path):
    path = hostile(tmp_path, "other")
    with pytest.raises(
        ValueError, match=r"\(field: backing\); a golden image must be a standalone"
    ):
        _disk.check_header(
            str(path),
            _disk.read_qcow2_header(str(path)),
            lambda _n: True,
            "golden image",
            want_backing=False,
        )


def test_durable_write_and_replace(tmp_path):
    target = tmp_path / "j.json"
    _disk.write_durable(str(target), "one\n")
    _disk.write_durable(str(target), "two\n", 0o644)
    assert target.read_text() == "two\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.json"]
    _disk.remove_durable(str(target))
    assert not target.exists()


def test_top_has_data():
    clean = [
        {"start": 0, "length": 1048576, "depth": 2, "present": True, "zero": False, "data": True},
        {"start": 1048576, "length": 1, "depth": 2, "present": False, "zero": True, "data": False},
    ]
    written = [*clean, {"start": 2, "length": 65536, "depth": 0, "present": True, "data": True}]
    zeroed = [*clean, {"start": 2, "length": 65536, "depth": 0, "present": True, "zero": True}]
    assert not _disk.top_has_data(json.dumps(clean))
    assert _disk.top_has_data(json.dumps(written))
    assert _disk.top_has_data(json.dumps(zeroed))


# --- chain rules ----------------------------------------------------------------------------
def test_check_overlay_accepts_right_backing():
    _disk.check_overlay(GOOD_SESSION_CHAIN, PERSISTENT, "qcow2", "session layer")


@pytest.mark.parametrize(
    ("top", "msg"),
    [
        (layer(SESSION, GOLDEN), f"session layer {SESSION} is backed by {GOLDEN}, expected "
         f"{PERSISTENT}"),
        (layer(SESSION), f"session layer {SESSION} has no backing file, expected {PERSISTENT}"),
        (layer(SESSION, fmt="raw"), f"session layer {SESSION} is raw, expected qcow2"),
        (layer(SESSION, PERSISTENT, backing_format="raw"),
         f"session layer {SESSION} names backing format 'raw', expected 'qcow2'"),
    ],
)  # fmt: skip
def test_check_overlay_errors(top, msg):
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.check_overlay(chain(top, layer(GOLDEN)), PERSISTENT, "qcow2", "session layer")


def test_commit_target_is_the_persistent_layer():
    assert _disk.check_commit_target(GOOD_SESSION_CHAIN, PERSISTENT, GOLDEN, "/srv/images") == (
        PERSISTENT
    )


@pytest.mark.parametrize(
    ("layers", "golden", "images_dir", "msg"),
    [
        (
            [layer(SESSION, GOLDEN), layer(GOLDEN)],
            GOLDEN,
            None,
            f"refusing to commit: the session layer is backed directly by the golden image "
            f"{GOLDEN}; commit would write into the read-only shared base",
        ),
        (
            [layer(SESSION, GOLDEN), layer(GOLDEN)],
            None,
            "/srv/images",
            f"refusing to commit: target {GOLDEN} is inside the golden image directory /srv/images",
        ),
        (
            [layer(SESSION, "/srv/other/base.qcow2"), layer("/srv/other/base.qcow2")],
            None,
            "/srv/images",
            "refusing to commit: target /srv/other/base.qcow2 has no backing file, so it is a "
            "base image, not a guest's persistent layer",
        ),
        (
            [
                layer(SESSION, "/srv/guests/db6/persistent.qcow2"),
                layer("/srv/guests/db6/persistent.qcow2", GOLDEN),
                layer(GOLDEN),
            ],
            GOLDEN,
            "/srv/images",
            "refusing to commit: the session layer is backed by "
            f"/srv/guests/db6/persistent.qcow2, not by the guest's persistent layer {PERSISTENT}",
        ),
        ([layer(SESSION)], GOLDEN, None, f"session layer {SESSION} has no backing file"),
    ],
)
def test_commit_target_refusals(layers, golden, images_dir, msg):
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.check_commit_target(chain(*layers), PERSISTENT, golden, images_dir)


# --- golden identity and backup sidecars ------------------------------------------------------
SHA_A = "a" * 64
SHA_B = "b" * 64


def test_golden_identity_uses_sidecar_version_only_when_sha_matches():
    side = {"version": "debian12-123456789abc", "sha256": SHA_A}
    assert _disk.golden_identity(GOLDEN, side, SHA_A)["version"] == "debian12-123456789abc"
    assert _disk.golden_identity(GOLDEN, side, SHA_B)["version"] == "b" * 12
    assert _disk.golden_identity(GOLDEN, None, SHA_A) == {
        "path": os.path.realpath(GOLDEN),
        "sha256": SHA_A,
        "version": "a" * 12,
    }


def test_recipe_sidecar_path():
    assert _disk.recipe_sidecar_path(GOLDEN) == "/srv/images/debian12-abc.recipe.json"


def sidecar_and_golden(golden_sha=SHA_A):
    persistent_chain = chain(layer(PERSISTENT, GOLDEN), layer(GOLDEN))
    golden = _disk.golden_identity(GOLDEN, None, SHA_A)
    side = _disk.backup_sidecar("web6", PERSISTENT, "c" * 64, persistent_chain, golden)
    backup_chain = chain(layer("/backup/web6.qcow2", GOLDEN), layer(GOLDEN))
    return side, backup_chain, _disk.golden_identity(GOLDEN, None, golden_sha)


def test_backup_sidecar_records_backing():
    side, _chain, _golden = sidecar_and_golden()
    assert side == {
        "kind": "mv6-guest-disk-backup",
        "format_version": 1,
        "guest": "web6",
        "source": PERSISTENT,
        "sha256": "c" * 64,
        "format": "qcow2",
        "virtual_size": 67108864,
        "backing_file": GOLDEN,
        "backing_format": "qcow2",
        "backing_sha256": SHA_A,
        "backing_version": "a" * 12,
    }


def test_verify_backup_accepts_matching_backup():
    side, backup_chain, golden = sidecar_and_golden()
    _disk.verify_backup(side, "/backup/web6.qcow2", "c" * 64, backup_chain, golden)


def test_verify_backup_tampered():
    side, backup_chain, golden = sidecar_and_golden()
    msg = (
        f"backup /backup/web6.qcow2 fails its checksum: sha256 is {'d' * 64}, the sidecar says "
        f"{'c' * 64}; the backup is damaged or was modified"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.verify_backup(side, "/backup/web6.qcow2", "d" * 64, backup_chain, golden)


def test_verify_backup_other_golden_version():
    side, backup_chain, golden = sidecar_and_golden(golden_sha=SHA_B)
    msg = (
        f"backup /backup/web6.qcow2 was taken on golden image version {'a' * 12} (sha256 "
        f"{SHA_A}), but {GOLDEN} is now version {'b' * 12} (sha256 {SHA_B}); restoring it would "
        "give a corrupt disk"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.verify_backup(side, "/backup/web6.qcow2", "c" * 64, backup_chain, golden)


def test_verify_backup_rebased_backup():
    side, _chain, golden = sidecar_and_golden()
    other = chain(layer("/backup/web6.qcow2", "/srv/images/other.qcow2"), layer("/x"))
    msg = (
        f"backup /backup/web6.qcow2 is backed by /srv/images/other.qcow2, the sidecar says {GOLDEN}"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.verify_backup(side, "/backup/web6.qcow2", "c" * 64, other, golden)


def test_verify_backup_not_a_sidecar():
    _side, backup_chain, golden = sidecar_and_golden()
    msg = "backup sidecar of /backup/web6.qcow2 is not a mv6-guest-disk-backup file"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        _disk.verify_backup({}, "/backup/web6.qcow2", "c" * 64, backup_chain, golden)


# --- file helpers ---------------------------------------------------------------------------
def test_sparse_copy_keeps_holes_and_bytes(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    with open(src, "wb") as handle:
        handle.write(b"\xab" * 4096)
        handle.seek(64 << 20)
        handle.write(b"\xcd" * 4096)
    _disk.sparse_copy(str(src), str(dst))
    assert _disk.sha256_file(str(dst)) == _disk.sha256_file(str(src))
    assert dst.stat().st_size == src.stat().st_size
    assert dst.stat().st_blocks * 512 < 4 << 20  # 64 MiB apparent, a few KiB on disk


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def overlay_on_a_base(tmp_path):
    """A 1 MiB qcow2 base and an overlay on it; (base, overlay, the overlay's bytes)."""
    base, top = tmp_path / "base.qcow2", tmp_path / "top.qcow2"
    qimg("create", "-q", "-f", "qcow2", base, "1M")
    qimg("create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top)
    return base, top, bytearray(top.read_bytes())


def test_header_names_that_are_not_utf8_are_refused(tmp_path):
    """A name checked after a lossy decode is not the name QEMU opens: refused, by field."""
    base, top, data = overlay_on_a_base(tmp_path)
    at = data.find(bytes(str(base), "utf-8"))
    data[at + len(str(tmp_path)) + 1] = 0xFF
    top.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"qcow2 header backing file name is not valid UTF-8"):
        _disk.read_qcow2_header(str(top))


@pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
def test_backing_offset_inside_the_fixed_header_is_refused(tmp_path):
    _base, top, data = overlay_on_a_base(tmp_path)
    data[8:16] = (16).to_bytes(8, "big")  # backing_file_offset into the header's own fields
    top.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"backing_file_offset 16 lies outside the header"):
        _disk.read_qcow2_header(str(top))
