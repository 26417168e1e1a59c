"""scripts/venv_module_cache.py: the guest_agent compile cache installed for the venv's own
module runs. Run for real in subprocesses: the generated module imported first (as the .pth
file does), then the fake AnsiballZ-style module of test_guest_agent_cache.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from test_guest_agent_cache import (
    FAKE_MODULE,
    FROM_CACHE,
    MOD_SOURCE,
    TAG,
    clean_env,
    entries,
    ga,
    key,
    make_zip,
    mod_path,
    poison,
)

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "venv_module_cache.py"
SWITCH = "MV6_TEST_MODULE_CACHE"


def load_script():
    spec = importlib.util.spec_from_file_location("venv_module_cache", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_with(site_dir: Path, zip_path: Path, **env: str) -> dict:
    """The fake module run by a Python that imported the generated module at start (through
    sitecustomize here, where the venv has a .pth file)."""
    proc = subprocess.run(
        [sys.executable, "-", str(zip_path)],
        input=FAKE_MODULE,
        capture_output=True,
        env=dict(clean_env(), PYTHONPATH=str(site_dir), **env),
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def test_the_venvs_own_cache_is_off_in_the_childs_of_these_tests():
    assert clean_env()["MV6_VENV_MODULE_CACHE"] == "0"
    assert "'MV6_VENV_MODULE_CACHE'" in load_script().body(Path("/x"))


def test_the_cache_is_the_connections_own_in_the_named_directory(tmp_path):
    text = load_script().preamble(tmp_path / "cache")
    assert repr(str(tmp_path / "cache")) in text
    assert repr(ga.MODULE_CACHE_DIR) not in text  # never the guests' directory
    assert text == ga._MODULE_PREAMBLE.replace(
        repr(ga.MODULE_CACHE_DIR), repr(str(tmp_path / "cache"))
    )


def test_module_runs_fill_and_then_read_the_cache_unless_turned_off(tmp_path):
    site_dir, cache = tmp_path / "site", tmp_path / "cache"
    site_dir.mkdir()
    # Its own switch: clean_env() turns the venv's own cache off with MV6_VENV_MODULE_CACHE.
    (site_dir / "mv6_module_cache.py").write_text(load_script().body(cache, SWITCH))
    (site_dir / "sitecustomize.py").write_text("import mv6_module_cache\n")
    zip_path = make_zip(tmp_path / "run1" / "ansible_payload.zip")

    assert run_with(site_dir, zip_path)["value"] == "from-source"
    assert key(MOD_SOURCE) in entries(cache)
    assert oct((cache / TAG).stat().st_mode & 0o777) == "0o700"
    # Read as it is found: a poisoned entry shows the second run took the cached code.
    poison(cache / TAG / key(MOD_SOURCE), FROM_CACHE, mod_path(zip_path))
    assert run_with(site_dir, zip_path)["value"] == "from-cache"
    assert run_with(site_dir, zip_path, **{SWITCH: "0"})["value"] == "from-source"
