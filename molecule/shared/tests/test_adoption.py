"""Verify of the adoption checks (in v6_parallel): MV6 arrives on a host that already runs
things. After converge, idempotence and check the native state is identical, the native
configuration is still there and the native service was never disturbed (same process, still
answering). The teardown that follows is test_teardown.py's, last of the verify step.
"""

from __future__ import annotations

import json
import os

import pytest
from mv6mol.adoption import compare, service_answers, service_pid
from mv6mol.scenario import Scenario, load
from mv6mol.site import bare, ephemeral_dir, native_snapshot, run


@pytest.fixture(scope="module")
def scn() -> Scenario:
    return load()


def test_native_state_identical_after_converge(scn: Scenario) -> None:
    before = json.loads((ephemeral_dir() / "native-before.json").read_text())
    compare(before, native_snapshot(scn.site))


def test_native_configuration_is_still_there(scn: Scenario) -> None:
    adopt = scn.site["adoption"]
    assert run("ip", "-4", "route", "show", adopt["route"]).strip(), "the native route is gone"
    family, name = adopt["nft_table"].split()
    assert run("nft", "list", "table", family, name, check=False).strip(), "native table gone"


def test_native_service_was_never_disturbed(scn: Scenario) -> None:
    pid = service_pid()
    os.kill(pid, 0)  # the very process started before converge still runs
    answer = service_answers(scn)
    assert answer == f"mv6-mol host-native {bare(scn.native['peer_addr'])}", answer
