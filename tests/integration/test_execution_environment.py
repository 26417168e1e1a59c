"""The execution environment: `ansible-builder create` makes a valid build context from the
project's execution-environment.yml, and the stages that need no base image are replayed here.

Building the image needs the base image, which this machine cannot fetch (no registry but
PyPI, Debian's and npm's is reachable): docs/execution_environment.md. What can be checked
without it is checked:

- ansible-builder create exits 0; the Containerfile names the base image and the pins of
  requirements.txt (ansible-core) and requirements-test.txt (ansible-runner);
- the context's Python requirements are requirements.txt's, and none of the development pins
  (everything requirements-test.txt adds); its bindep file is meta/ee-bindep.txt;
- the galaxy stage: the context's requirements.yml installs the tarball it carries, offline,
  with the options the Containerfile gives ansible-galaxy;
- the builder stage: the context's own introspect.py over that install adds the collection's
  meta/execution-environment.yml requirements, and still no development pin.

The EE file and the files it names are copied into the test's temporary directory, with a
tarball freshly built by scripts/collection.sh where additional_build_files looks for it;
nothing outside that directory is written.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from conftest import sh
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.timeout(300), pytest.mark.files_only]

# Named here as well as read from requirements-test.txt: were they moved back into
# requirements.txt, the list read from the files would no longer hold them.
ALWAYS_DEV = {"pytest", "pytest-timeout", "pytest-testinfra", "ruff", "molecule", "ansible-lint"}


def requirement_lines(path: Path) -> list[str]:
    """The requirement lines of a pip requirements file: no comments, no blank lines, no -r."""
    lines = []
    for raw in path.read_text().splitlines():
        line = re.sub(r"(^|\s+)#.*$", "", raw).strip()
        if line and not line.startswith("-"):
            lines.append(line)
    return lines


def names(lines: list[str]) -> set[str]:
    return {canonical(Requirement(line).name) for line in lines}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def development_names() -> set[str]:
    """What requirements-test.txt adds to requirements.txt, and ALWAYS_DEV."""
    test = names(requirement_lines(ROOT / "requirements-test.txt"))
    return (test - names(requirement_lines(ROOT / "requirements.txt"))) | ALWAYS_DEV


def dev_leaks(lines: list[str]) -> list[str]:
    """The lines of a Python requirements list that name a development package."""
    dev = development_names()
    return [line for line in lines if canonical(Requirement(line.split("#")[0]).name) in dev]


def pin(path: Path, name: str) -> str:
    found = [line for line in requirement_lines(path) if canonical(Requirement(line).name) == name]
    assert len(found) == 1, f"{path.name} pins {name} {len(found)} times"
    return found[0]


class Context(NamedTuple):
    ctx: Path  # the build context
    ee: dict  # the EE definition
    tarball: Path


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """(build context, EE definition, tarball): the EE file and the files it names copied
    under a temporary directory, a fresh tarball where its additional_build_files looks, and
    `ansible-builder create` run on that copy."""
    top = tmp_path_factory.mktemp("ee")
    ee_file = ROOT / "execution-environment.yml"
    ee = yaml.safe_load(ee_file.read_text())
    project = top / "project"
    project.mkdir()
    shutil.copy2(ee_file, project / ee_file.name)
    for key in ("python", "system"):
        rel = ee["dependencies"][key]
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, project / rel)

    # a fresh tarball, where additional_build_files looks for it
    proc = sh("bash", ROOT / "scripts/collection.sh", "build", top / "built", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tarball = Path(proc.stdout.strip().splitlines()[-1])
    [entry] = ee["additional_build_files"]
    (project / entry["src"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(tarball, (project / entry["src"]).parent / tarball.name)
    assert glob.glob(str(project / entry["src"])), f"{entry['src']} does not match {tarball.name}"

    ctx = top / "context"
    proc = sh(
        BIN / "ansible-builder", "create", "-f", project / ee_file.name, "--context", ctx,
        "--output-filename", "Containerfile", "-v3", check=False, timeout=120, cwd=top,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Complete!" in proc.stdout
    yield Context(ctx, ee, tarball)
    shutil.rmtree(top, ignore_errors=True)


def test_development_pins_are_caught():
    """Positive control for the checks below: every pin requirements-test.txt adds counts as
    a leak, and what the controller needs does not."""
    test_lines = requirement_lines(ROOT / "requirements-test.txt")
    controller = requirement_lines(ROOT / "requirements.txt")
    assert dev_leaks(controller) == []
    assert dev_leaks(test_lines) == test_lines
    leaked = {canonical(Requirement(line).name) for line in dev_leaks(test_lines)}
    assert leaked >= ALWAYS_DEV
    assert {"hypothesis", "antsibull-changelog", "libvirt-python", "lxml"} <= leaked


def test_containerfile(context):
    ctx, ee = context.ctx, context.ee
    text = (ctx / "Containerfile").read_text()
    base = ee["images"]["base_image"]["name"]
    assert f'ARG EE_BASE_IMAGE="{base}"' in text
    assert "FROM $EE_BASE_IMAGE AS base" in text

    refs = re.search(r'^ARG ANSIBLE_INSTALL_REFS="([^"]*)"$', text, re.M)
    assert refs, "no ansible-core/ansible-runner install step"
    assert sorted(refs.group(1).split()) == sorted(
        [pin(ROOT / "requirements.txt", "ansible-core"),
         pin(ROOT / "requirements-test.txt", "ansible-runner")]
    )  # fmt: skip
    # the introspection and assemble steps of the builder stage, and the final image's label
    assert "introspect.py introspect --user-pip=requirements.txt --user-bindep=bindep.txt" in text
    assert "RUN /output/scripts/assemble" in text
    assert "LABEL ansible-execution-environment=true" in text


def test_context_python_and_system_requirements(context):
    ctx = context.ctx
    python = requirement_lines(ctx / "_build/requirements.txt")
    assert sorted(python) == sorted(requirement_lines(ROOT / "requirements.txt"))
    assert dev_leaks(python) == []

    bindep = [
        line
        for line in (ctx / "_build/bindep.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert bindep == [
        line
        for line in (ROOT / "meta/ee-bindep.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert "openssh-clients [platform:rpm]" in bindep


def test_galaxy_and_builder_stages(context, tmp_path):
    """The galaxy stage and the builder stage's introspection, replayed on this machine with
    the context's own files: what the image would get from the collection."""
    ctx, tarball = context.ctx, context.tarball
    build = ctx / "_build"
    reqs = yaml.safe_load((build / "requirements.yml").read_text())
    [entry] = reqs["collections"]
    assert entry["type"] == "file"
    assert (build / entry["name"]).read_bytes() == tarball.read_bytes()

    opts = re.search(
        r'^ARG ANSIBLE_GALAXY_CLI_COLLECTION_OPTS="([^"]*)"$',
        (ctx / "Containerfile").read_text(),
        re.M,
    )
    assert opts and "--no-deps" in opts.group(1).split()
    collections = tmp_path / "usr-share-ansible-collections"
    # As in the image: no ansible.cfg and no collections path but the target; else a copy of
    # mv6.transition that the caller's settings show (the checkout's .collections) counts as
    # installed already, and nothing is installed.
    (tmp_path / "ansible.cfg").write_text("[defaults]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(tmp_path / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(collections)
    )
    proc = sh(
        BIN / "ansible-galaxy", "collection", "install", *shlex.split(opts.group(1)),
        "-r", "requirements.yml", "--collections-path", collections,
        check=False, timeout=120, cwd=build, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    installed = collections / "ansible_collections/mv6/transition"
    assert (installed / "meta/execution-environment.yml").is_file()

    pip_out, bindep_out = tmp_path / "requirements.txt", tmp_path / "bindep.txt"
    proc = sh(
        BIN / "python", build / "scripts/introspect.py", "introspect", collections,
        f"--user-pip={build / 'requirements.txt'}", f"--user-bindep={build / 'bindep.txt'}",
        f"--write-pip={pip_out}", f"--write-bindep={bindep_out}", check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    python = pip_out.read_text().splitlines()
    from_collection = [line for line in python if line.endswith("# from collection mv6.transition")]
    assert sorted(line.split("  #")[0] for line in from_collection) == sorted(
        requirement_lines(ROOT / "meta/ee-requirements.txt")
    )
    assert dev_leaks([line for line in python if line.strip()]) == []
    system = bindep_out.read_text()
    assert "openssh-clients [platform:rpm]  # from collection mv6.transition" in system


def test_collection_meta_agrees_with_the_pins():
    """The collection's EE requirements name only packages that requirements.txt pins, at
    versions those pins satisfy: the versions the tests ran with."""
    meta = yaml.safe_load((ROOT / "meta/execution-environment.yml").read_text())
    assert meta["dependencies"] == {
        "python": "meta/ee-requirements.txt",
        "system": "meta/ee-bindep.txt",
    }
    pins = {
        canonical(Requirement(line).name): Requirement(line)
        for line in requirement_lines(ROOT / "requirements.txt")
    }
    for line in requirement_lines(ROOT / "meta/ee-requirements.txt"):
        req = Requirement(line)
        name = canonical(req.name)
        assert name in pins, f"meta/ee-requirements.txt: {name} is not in requirements.txt"
        [spec] = pins[name].specifier
        assert spec.operator == "==" and req.specifier.contains(spec.version), line
    assert dev_leaks(requirement_lines(ROOT / "meta/ee-requirements.txt")) == []
