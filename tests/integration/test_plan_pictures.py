"""The pictures of docs/pictures are the ones the code draws today, drawn through the real
playbooks/plan_picture.yml (ansible-playbook, the plan_diagram filter) from the example
inventories; no host is contacted and nothing outside a temporary directory is written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from ansible_collections.mv6.transition.plugins.module_utils import _diagram

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_the_docs_pictures_are_current(tmp_path):
    subprocess.run(
        ["bash", str(ROOT / "scripts/plan_pictures.sh"), str(tmp_path)],
        check=True,
        capture_output=True,
        text=True,
        timeout=280,
    )
    drawn = sorted(p.name for p in tmp_path.iterdir())
    assert drawn == sorted(p.name for p in (ROOT / "docs/pictures").glob("*.svg"))
    assert "lab.svg" in drawn and "lab_v4.svg" in drawn
    for name in drawn:
        text = (tmp_path / name).read_text()
        assert _diagram.drawn_here(text)
        assert text == (ROOT / "docs/pictures" / name).read_text(), (
            f"docs/pictures/{name} is stale: run bash scripts/plan_pictures.sh"
        )
    # The lab's guests, each with the persistence its inventory gives it.
    lab = (tmp_path / "lab.svg").read_text()
    assert "web6 · persistent" in lab and "app6 · non_persistent" in lab
