"""The plan store's refusal to start a new plan on a keeper (module_utils/_plan_store.py):
a plan keeper must never plan from nothing unless told to, since a new plan gives every host
and guest of a site new addresses and MACs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import (
    _plan,
    _plan_store,
)

REQUEST = {
    "native_family": "ipv4",
    "parallel": {"prefix": "2001:db8:6f1::/48"},
    "guests_by_host": {"hva": [{"name": "web6"}]},
}


def plan(path: Path, create: bool) -> dict:
    return _plan_store.plan_here(
        str(path), REQUEST, False, 5, diagram="", make_directory=True, create=create
    )


def test_no_plan_is_started_unless_told_to(tmp_path):
    kept = tmp_path / "var" / "mv6-plan" / "site.yml"
    with pytest.raises(ValueError, match=r"mv6_plan_keeper_create: no plan at .*plan_move\.yml"):
        plan(kept, create=False)
    assert not (tmp_path / "var").exists()  # not even its directory


def test_an_empty_plan_file_is_no_plan(tmp_path):
    kept = tmp_path / "site.yml"
    kept.write_text("")
    with pytest.raises(ValueError, match="mv6_plan_keeper_create"):
        plan(kept, create=False)
    assert kept.read_text() == ""


def test_a_plan_that_is_there_is_planned_into(tmp_path):
    kept = tmp_path / "site.yml"
    first = plan(kept, create=True)["plan"]
    again = plan(kept, create=False)
    assert again["plan"] == first
    assert again["after"] == again["before"]
    assert _plan.read_plan(str(kept))[0]["hosts"]["hva"]["guests"]["web6"]
