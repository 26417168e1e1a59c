"""Playbooks run the way AWX runs a job template, through ansible-runner (docs/awx.md).

An AWX job gets a private data directory of its own, with a fresh copy of the project in it;
AWX writes the job's inventory there (a script that prints what AWX imported from the
inventory's sources), its extra variables (with awx_job_id and the other variables AWX adds)
and its limit, runs ansible-playbook with the awx_display callback from the project's
directory, and takes the artifacts from set_stats. Everything in the private data directory is
gone when the job ends. Job() does each of these with ansible-runner, the library AWX runs
jobs with; nothing here stands in for the playbook run itself.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import ansible_runner

PROJECT = Path(__file__).resolve().parents[3]
VENV_BIN = PROJECT / ".venv" / "bin"
SITE_PACKAGES = next((PROJECT / ".venv" / "lib").glob("python3*/site-packages"))
_JOB_IDS = itertools.count(9001)
_INSTALLED: dict[str, Path] = {}


def installed_collection(where: Path) -> Path:
    """Build the collection's tarball and install it under where (scripts/collection.sh), as
    an EE image holds it: the collections path jobs run with, not the checkout."""
    key = str(where)
    if key not in _INSTALLED:
        proc = subprocess.run(
            [
                "bash",
                str(PROJECT / "scripts" / "collection.sh"),
                "install",
                str(where),
                str(where.parent / "tarball"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"collection.sh install: {proc.stdout} {proc.stderr}"
        assert (where / "ansible_collections" / "mv6" / "transition" / "galaxy.yml").exists() or (
            where / "ansible_collections" / "mv6" / "transition" / "MANIFEST.json"
        ).exists(), f"no collection installed under {where}"
        _INSTALLED[key] = where
    return _INSTALLED[key]


def _inventory_script(sources: list[Path], dest: Path, env: dict) -> None:
    """AWX imports an inventory's sources into its database and gives each job a script
    that prints them: here `ansible-inventory --list` of the project's sources, printed by
    an executable in the job's inventory directory (so inventory_dir is in the job's
    private data directory, as under AWX)."""
    cmd = [str(VENV_BIN / "ansible-inventory"), "--list"]
    for source in sources:
        cmd += ["-i", str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env, check=False)
    assert proc.returncode == 0, f"ansible-inventory: {proc.stderr[-2000:]}"
    data = json.loads(proc.stdout)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "inventory.json").write_text(json.dumps(data))
    script = dest / "hosts"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "if '--host' in sys.argv:\n"
        "    print('{}')\n"
        "else:\n"
        "    print(open(os.path.join(here, 'inventory.json')).read())\n"
    )
    script.chmod(0o700)


class Job:
    """One job: run() gives {"rc", "status", "stats", "artifacts", "failures", "seconds",
    "started", "ended", "stdout"}."""

    def __init__(
        self,
        project: Path,
        playbook: str,
        inventory: list[str],
        *,
        limit: str | None = None,
        extra_vars: dict | None = None,
        collections: Path | None = None,
        env: dict | None = None,
        name: str = "job",
        log_dir: Path | None = None,
        timeout: int = 1200,
    ):
        self.project = project
        self.playbook = playbook
        self.inventory = inventory
        self.limit = limit
        self.extra_vars = extra_vars or {}
        self.collections = collections
        self.env = env or {}
        self.name = name
        self.log_dir = log_dir
        self.timeout = timeout
        self.job_id = next(_JOB_IDS)
        self.result: dict | None = None
        # (event, task name, time) as the job runs, for tests that act while it does.
        self.seen: list[tuple[str, str, float]] = []

    def _event(self, event: dict) -> bool:
        data = event.get("event_data") or {}
        self.seen.append((event.get("event", ""), data.get("task", ""), time.time()))
        return True

    def saw(self, event: str, task: str) -> bool:
        return any(e == event and task in t for e, t, _when in list(self.seen))

    def _environment(self) -> dict:
        paths = [str(self.collections)] if self.collections else [str(PROJECT / ".collections")]
        paths.append(str(SITE_PACKAGES))  # the bundled collections of the `ansible` package
        env = {
            "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin",
            "ANSIBLE_COLLECTIONS_PATH": ":".join(paths),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "ANSIBLE_HOST_KEY_CHECKING": "1",
        }
        env.update(self.env)
        return env

    def run(self) -> dict:
        private = Path(tempfile.mkdtemp(prefix=f"mv6-awx-{self.name}-"))
        try:
            return self._run(private)
        finally:
            shutil.rmtree(private, ignore_errors=True)  # a job's files go with the job

    def _run(self, private: Path) -> dict:
        env = self._environment()
        project = private / "project"
        # A fresh copy of the project per job (AWX copies the synced project in).
        shutil.copytree(self.project, project, symlinks=True)
        # The project's own ansible.cfg, as under AWX, else none: never the one of the shell
        # that started the test (make exports the checkout's).
        config = project / "ansible.cfg"
        if not config.exists():
            config = private / "no-ansible.cfg"
            config.write_text("[defaults]\n")
        env["ANSIBLE_CONFIG"] = str(config)
        # A job runs in its project directory: PWD (which verify.yml's default report
        # directory follows) names it, never the directory the test was started from.
        env["PWD"] = str(project)
        inventory_env = {**os.environ, **env}
        _inventory_script(
            [project / i for i in self.inventory], private / "inventory", inventory_env
        )
        extra = {
            "awx_job_id": self.job_id,
            "tower_job_id": self.job_id,
            "awx_job_template_name": self.name,
            "awx_job_launch_type": "manual",
            **self.extra_vars,
        }
        started = time.time()
        runner = ansible_runner.run(
            private_data_dir=str(private),
            project_dir=str(project),
            playbook=self.playbook,
            inventory=str(private / "inventory" / "hosts"),
            limit=self.limit,
            extravars=extra,
            envvars=env,
            quiet=True,
            timeout=self.timeout,
            ident=f"job{self.job_id}",
            event_handler=self._event,
        )
        ended = time.time()
        artifacts, failures = {}, {}
        for event in runner.events:
            data = event.get("event_data") or {}
            if event.get("event") == "playbook_on_stats":
                artifacts = data.get("artifact_data") or {}
            failed = event.get("event") in ("runner_on_failed", "runner_on_unreachable")
            if failed and not data.get("ignore_errors"):
                res = data.get("res") or {}
                failures.setdefault(data.get("host"), []).append(
                    f"{data.get('task')}: {res.get('msg')}"
                )
        stdout = runner.stdout.read()
        if self.log_dir:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            (self.log_dir / f"awx-{self.name}-{self.job_id}.log").write_text(stdout)
        self.result = {
            "rc": runner.rc,
            "status": runner.status,
            "stats": runner.stats or {},
            "artifacts": artifacts,
            "failures": failures,
            "seconds": round(ended - started, 1),
            "started": started,
            "ended": ended,
            "stdout": stdout,
        }
        return self.result


def start(*jobs: Job) -> list[threading.Thread]:
    """Start jobs at the same time, as AWX runs the slices of a sliced job template."""
    threads = [threading.Thread(target=job.run, name=job.name, daemon=True) for job in jobs]
    for t in threads:
        t.start()
    return threads


def finish(threads: list[threading.Thread], jobs: tuple[Job, ...], timeout: float) -> list[dict]:
    for t in threads:
        t.join(timeout)
    results = [job.result for job in jobs]
    assert all(r is not None for r in results), "a job did not finish"
    return results


def run_together(*jobs: Job, timeout: float = 1200) -> list[dict]:
    return finish(start(*jobs), jobs, timeout)


def wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def changed(result: dict) -> dict[str, int]:
    return dict(result["stats"].get("changed", {}))


def summary(result: dict) -> str:
    return (
        f"rc={result['rc']} status={result['status']} failures={result['failures']}: "
        + result["stdout"][-3000:]
    )
