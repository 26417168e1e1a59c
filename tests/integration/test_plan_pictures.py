"""The pictures of docs/pictures are the ones the code draws today, drawn through the real
playbooks/plan_picture.yml (ansible-playbook, the plan_diagram filter) from the example
inventories; no host is contacted and nothing outside a temporary directory is written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from ansible_collections.mv6.transition.plugins.module_utils import _diagram

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.timeout(300), pytest.mark.files_only]


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


def test_plan_picture_takes_any_inventory_and_keeps_a_file_it_did_not_draw(tmp_path):
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text(
        "all:\n  children:\n    mv6_hypervisors:\n      hosts:\n        hv1:\n"
        "          ansible_connection: local\n"
        "          mv6_guests: [{name: web6}, {name: db6, persistence: non_persistent}]\n"
    )
    (inv / "group_vars" / "all.yml").write_text(
        "mv6_native_family: ipv4\nmv6_parallel: {prefix: '2001:db8:700::/48'}\n"
        "mv6_guest_default_persistence: non_persistent\n"
    )

    def picture(dest: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                str(ROOT / ".venv/bin/ansible-playbook"),
                "-i",
                str(inv / "hosts.yml"),
                str(ROOT / "playbooks/plan_picture.yml"),
                "-e",
                "mv6_picture_gather=false",
                "-e",
                f"mv6_plan_file={tmp_path}/plan/mv6_plan.yml",
                "-e",
                f"mv6_picture_file={dest}",
            ],
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg")},
            check=False,
        )

    dest = tmp_path / "p.svg"
    proc = picture(dest)
    assert proc.returncode == 0, proc.stdout[-3000:]
    text = dest.read_text()
    # web6 gives no persistence: the role's default, as this inventory sets it
    assert "web6 · non_persistent" in text and "db6 · non_persistent" in text
    assert not (tmp_path / "plan").exists(), "plan_picture.yml wrote the plan"
    mine = tmp_path / "mine.svg"
    mine.write_text("notes\n")
    proc = picture(mine)
    assert proc.returncode != 0 and "exists and is not a plan picture" in proc.stdout
    assert mine.read_text() == "notes\n"
