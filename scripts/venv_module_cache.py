"""Give the project's venv the guest_agent connection's compile cache for Ansible modules.

Ansible runs a module by writing its zip to a temporary file and importing from it, and Python
compiles every file it imports from a zip from source, every time: about 0.14 s of the 0.36 s
a local `stat` module takes here (docs/performance.md, "Local module runs"). The lab, the
integration tests and the Molecule scenarios run every task on this machine with the venv's
Python, several thousand module runs per `make test`.

This writes a module into the venv's site-packages, imported at start through a .pth file,
that installs the same cache as the one the guest_agent connection puts before a pipelined
module in a guest (plugins/module_utils/_guest_agent.py, _MODULE_PREAMBLE): compiled code of
each source, keyed by its SHA-256, in a directory only this user may write, falling back to
compiling on any doubt. Only the venv's Python is changed; hosts reached over SSH and guests
are not. MV6_VENV_MODULE_CACHE=0 turns it off for one process.

    .venv/bin/python scripts/venv_module_cache.py      (scripts/setup.sh runs it)
"""

from __future__ import annotations

import importlib.util
import os
import site
import sys
from pathlib import Path

TOP = Path(__file__).resolve().parent.parent
NAME = "mv6_module_cache"


def preamble(cache_dir: Path) -> str:
    path = TOP / "plugins" / "module_utils" / "_guest_agent.py"
    spec = importlib.util.spec_from_file_location("mv6_guest_agent_helper", path)
    helper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(helper)
    text = helper._MODULE_PREAMBLE
    quoted = repr(helper.MODULE_CACHE_DIR)
    if quoted not in text:
        raise SystemExit(f"{path}: the preamble no longer names {quoted}")
    return text.replace(quoted, repr(str(cache_dir)))


def body(cache_dir: Path, switch: str = "MV6_VENV_MODULE_CACHE") -> str:
    """The module the .pth file imports: the preamble with *cache_dir*, unless the variable
    *switch* is 0."""
    return (
        '"""Written by scripts/venv_module_cache.py: see that file."""\n'
        "import os as _mv6_os\n"
        f"if _mv6_os.environ.get({switch!r}, '1') != '0':\n"
        f"    exec(compile({preamble(cache_dir)!r}, __file__, 'exec'))\n"
        "del _mv6_os\n"
    )


def main() -> int:
    if sys.prefix == sys.base_prefix:
        raise SystemExit("run this with the venv's Python (.venv/bin/python)")
    packages = Path(site.getsitepackages()[0])
    cache_dir = Path(sys.prefix) / "var" / "module-cache"
    changed = False
    for path, text in (
        (packages / f"{NAME}.py", body(cache_dir)),
        (packages / f"{NAME}.pth", f"import {NAME}\n"),
    ):
        if not path.exists() or path.read_text() != text:
            # Every process of the venv imports these at start: never a half-written file.
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
            changed = True
    print(f"{NAME}: {'written' if changed else 'up to date'} in {packages}; cache {cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
