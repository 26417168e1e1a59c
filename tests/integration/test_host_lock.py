"""mv6.transition.host_lock's for_path, through the real module run by ansible: two spellings
of one directory (a trailing slash, '..', a symlink) are one lock. Locks live in a temporary
lock_dir; nothing outside it is touched."""

from __future__ import annotations

import pytest
from conftest import run_module

pytestmark = [pytest.mark.timeout(300), pytest.mark.files_only]


def test_two_spellings_of_one_directory_take_one_lock(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "link").symlink_to(images)
    locks = str(tmp_path / "locks")
    common = {"name": "images", "lock_dir": locks, "timeout": 0, "holder": "t-lock first"}
    first = run_module("mv6.transition.host_lock", {**common, "for_path": str(images)})
    assert first.get("owner") and not first.get("failed"), first
    name = first["name"]
    assert name.startswith("images-") and len(name) == len("images-") + 12
    for spelling in (f"{images}/", f"{images}/../images", str(tmp_path / "link")):
        other = run_module("mv6.transition.host_lock", {**common, "for_path": spelling})
        assert other.get("failed"), (spelling, other)
        assert f"lock {name} on this host is held by another mv6 run" in other["msg"], other
    # another directory is another lock
    (tmp_path / "other").mkdir()
    third = run_module("mv6.transition.host_lock", {**common, "for_path": str(tmp_path / "other")})
    assert not third.get("failed") and third["name"] != name, third
    for taken in (first, third):
        gone = run_module(
            "mv6.transition.host_lock",
            {
                "name": taken["name"],
                "lock_dir": locks,
                "state": "released",
                "owner": taken["owner"],
            },
        )
        assert not gone.get("failed"), gone
    # released: the other spelling now takes it at once
    again = run_module("mv6.transition.host_lock", {**common, "for_path": str(tmp_path / "link")})
    assert not again.get("failed") and again["name"] == name, again
