"""The built collection works: scripts/collection.sh builds the tarball from this checkout and
installs it into an empty collections path (offline, no Galaxy), and the playbooks run from
there, not from the checkout.

What the tarball holds is checked against the checkout: every tracked plugin, role, playbook
and meta file is in it, and nothing git ignores (venvs, caches, build output) nor any `.pyc`.
The runs see only the installed copy of mv6.transition: ANSIBLE_COLLECTIONS_PATH names the
installed path alone, with a throw-away ansible.cfg, so the checkout's ansible.cfg and its
.collections link (scripts/setup.sh) are not read. The collections of the PyPI `ansible`
package are still found, through the venv's sys.path (COLLECTIONS_SCAN_SYS_PATH).

Everything is written under the test's temporary directory. Running site.yml and verify.yml
from the installed collection against real hypervisors is the fleet tests' part.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import textwrap
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import pytest
import yaml
from conftest import sh

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.timeout(300), pytest.mark.files_only]

# Path components that must never ship, wherever they are.
FORBIDDEN_PARTS = {
    ".venv",
    ".collections",
    ".cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".mypy_cache",
    ".molecule",
    "__pycache__",
    ".git",
}
# Top-level entries that must never ship.
FORBIDDEN_TOP = {"build", ".ci", "bench", "notes", "mv6-verify"}
REQUIRED = [
    "MANIFEST.json",
    "FILES.json",
    "README.md",
    "LICENSE",
    "meta/runtime.yml",
    "meta/execution-environment.yml",
    "meta/ee-requirements.txt",
    "meta/ee-bindep.txt",
    "playbooks/site.yml",
    "playbooks/verify.yml",
    "playbooks/plan.yml",
    "playbooks/teardown.yml",
    "plugins/action/address_plan.py",
    "plugins/modules/address_plan.py",
    "plugins/connection/guest_agent.py",
]
BUNDLED = ["community.libvirt", "ansible.posix", "ansible.utils"]


class Installed(NamedTuple):
    tarball: Path
    dest: Path  # the collections path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(tarball, collections path) from `scripts/collection.sh install`, run from elsewhere
    than the checkout."""
    top = tmp_path_factory.mktemp("collection")
    dest, out = top / "collections", top / "tarball"
    proc = sh("bash", ROOT / "scripts/collection.sh", "install", dest, out, check=False, cwd=top)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tarball = Path(proc.stdout.strip().splitlines()[-1])
    assert tarball.parent == out and tarball.is_file(), proc.stdout
    yield Installed(tarball, dest)
    shutil.rmtree(top, ignore_errors=True)


def isolated_env(tmp: Path, collections_path: Path) -> dict[str, str]:
    """An environment in which ansible sees mv6.transition only in *collections_path*."""
    cfg = tmp / "ansible.cfg"
    cfg.write_text("[defaults]\nretry_files_enabled = false\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(cfg),
        ANSIBLE_COLLECTIONS_PATH=str(collections_path),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_FORCE_COLOR="0",
    )
    return env


def tracked(*dirs: str) -> list[str]:
    """Tracked files under *dirs* that are in the working tree."""
    out = sh("git", "-C", ROOT, "ls-files", "-z", "--", *dirs, check=False)
    assert out.returncode == 0, out.stderr
    return [p for p in out.stdout.split("\0") if p and (ROOT / p).is_file()]


def git_ignored_dirs() -> list[str]:
    """What git ignores in the checkout, directories as one entry ('.venv/')."""
    out = sh(
        "git", "-C", ROOT, "ls-files", "-z", "--others", "--ignored", "--exclude-standard",
        "--directory", check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [p for p in out.stdout.split("\0") if p]


def forbidden(members: list[str]) -> list[str]:
    bad = []
    for name in members:
        parts = PurePosixPath(name).parts
        if (
            set(parts) & FORBIDDEN_PARTS
            or parts[0] in FORBIDDEN_TOP
            or name.endswith((".pyc", ".pyo", ".tar.gz"))
        ):
            bad.append(name)
    return bad


def test_forbidden_paths_are_recognised():
    """Positive control for the member check below: what the checkout holds today between
    its tracked files (a venv, caches, build output) is caught."""
    sample = [
        ".venv/bin/python",
        "tests/unit/.hypothesis/constants/x",
        ".pytest_cache/v/cache/nodeids",
        "plugins/module_utils/__pycache__/_plan.cpython-311.pyc",
        "build/docs/index.html",
        "molecule/shared/mv6mol/planfile.pyc",
        ".git/HEAD",
        "mv6-transition-0.1.0.tar.gz",
    ]
    assert forbidden(sample) == sample
    assert forbidden(["tests/unit/test_plan.py", "roles/guest/tasks/main.yml"]) == []


def test_tarball_members(installed):
    tarball = installed.tarball
    with tarfile.open(tarball) as tar:
        members = [m.name.removeprefix("./").rstrip("/") for m in tar.getmembers()]
    names = set(members)

    assert forbidden(members) == []
    ignored = git_ignored_dirs()
    leaked = [m for m in members for i in ignored if m == i.rstrip("/") or m.startswith(i)]
    assert leaked == [], "git-ignored paths in the tarball"

    missing = [p for p in REQUIRED if p not in names]
    assert missing == []
    missing = [p for p in tracked("plugins", "roles", "playbooks", "meta") if p not in names]
    assert missing == [], "tracked collection files missing from the tarball"

    manifest = json.loads(tar_read(tarball, "MANIFEST.json"))["collection_info"]
    galaxy = yaml.safe_load((ROOT / "galaxy.yml").read_text())
    assert (manifest["namespace"], manifest["name"], manifest["version"]) == (
        "mv6",
        "transition",
        galaxy["version"],
    )
    assert tarball.name == f"mv6-transition-{galaxy['version']}.tar.gz"


def tar_read(tarball: Path, name: str) -> str:
    with tarfile.open(tarball) as tar:
        return tar.extractfile(name).read().decode()


def test_installed_layout(installed, tmp_path):
    """Only the installed copy is mv6.transition; the bundled collections are still found."""
    dest = installed.dest
    coll = dest / "ansible_collections/mv6/transition"
    assert (coll / "MANIFEST.json").is_file()
    assert (coll / "playbooks/plan.yml").is_file()

    proc = sh(
        BIN / "ansible-galaxy", "collection", "list", "--format", "json",
        check=False, timeout=120, env=isolated_env(tmp_path, dest), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    where = {name: path for path, colls in listing.items() for name in colls}
    homes = [path for path, colls in listing.items() if "mv6.transition" in colls]
    assert homes == [str(dest / "ansible_collections")]
    assert [c for c in BUNDLED if c not in where] == []

    # The control: with an empty collections path, mv6.transition is not found at all, so
    # nothing else (the checkout's .collections link, ~/.ansible) makes it visible.
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = sh(
        BIN / "ansible-galaxy", "collection", "list", "--format", "json",
        check=False, timeout=120, env=isolated_env(tmp_path, empty), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not any("mv6.transition" in colls for colls in json.loads(proc.stdout).values())


def test_ansible_doc_from_installed(installed, tmp_path):
    dest = installed.dest
    proc = sh(
        BIN / "ansible-doc", "-j", "mv6.transition.address_plan",
        check=False, timeout=120, env=isolated_env(tmp_path, dest), cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)["mv6.transition.address_plan"]["doc"]
    assert doc["filename"] == str(
        dest / "ansible_collections/mv6/transition/plugins/modules/address_plan.py"
    )
    assert doc["short_description"]


def test_plan_playbook_from_installed(installed, tmp_path):
    dest = installed.dest
    plan_file = tmp_path / "plan" / "mv6_plan.yml"
    inv = tmp_path / "hosts.yml"
    inv.write_text(
        textwrap.dedent(
            f"""\
            all:
              children:
                mv6_hypervisors:
                  hosts:
                    localhost:
                      ansible_connection: local
                      ansible_python_interpreter: "{{{{ ansible_playbook_python }}}}"
                      mv6_guests:
                        - name: web6
              vars:
                mv6_native_family: ipv4
                mv6_parallel:
                  prefix: 2001:db8:6ff::/48
                mv6_plan_file: {plan_file}
            """
        )
    )
    env = isolated_env(tmp_path, dest)
    proc = sh(
        BIN / "ansible-playbook", "-vvv", "-i", inv, "mv6.transition.plan",
        check=False, timeout=240, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    playbook = dest / "ansible_collections/mv6/transition/playbooks/plan.yml"
    assert f"1 plays in {playbook}" in proc.stdout
    assert str(ROOT) not in proc.stdout.replace(str(BIN.parent), "")

    assert plan_file.is_file()
    plan = yaml.safe_load(plan_file.read_text())
    assert plan["site"]["prefix"] == "2001:db8:6ff::/48"
    assert plan["site"]["parallel_family"] == "ipv6"
    host = json.loads((plan_file.parent / "mv6_plan.d" / "localhost.json").read_text())
    assert host["subnet"] == "2001:db8:6ff::/64"
    assert host["guests"]["web6"]["address"].startswith("2001:db8:6ff:0:")

    # Every playbook of the installed collection parses and resolves its modules, roles and
    # tasks files there (the runs against hypervisors are the fleet tests').
    names = sorted(p.stem for p in (playbook.parent).glob("*.yml"))
    assert {"site", "verify", "plan", "teardown"} <= set(names)
    proc = sh(
        BIN / "ansible-playbook", "--syntax-check", "-i", inv,
        *[f"mv6.transition.{n}" for n in names],
        check=False, timeout=180, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
