"""The plan file, read with the collection's own reader (plugins/module_utils/_plan.py).

A version 2 plan is a site file and one file per host beside it: tests and lab scripts read
it the way the collection does, checks included, instead of parsing YAML themselves.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[3]


def _plan_module():
    # scripts/setup.sh links the tree as .collections/ansible_collections/mv6/transition.
    collections = str(PROJECT / ".collections")
    if collections not in sys.path:
        sys.path.insert(0, collections)
    from ansible_collections.mv6.transition.plugins.module_utils import _plan

    return _plan


def read(path: str | Path) -> dict:
    """The plan (version 2) at path; AssertionError when there is none."""
    plan = _plan_module().read_plan(str(path))[0]
    assert plan is not None, f"no plan at {path}"
    assert plan["version"] == 2, f"{path} is a version {plan['version']} plan"
    return plan
