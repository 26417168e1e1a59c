"""Safety net for destroy: remove what a failed run left of THIS scenario's parallel world.

Only objects whose names belong to the scenario are touched: its guests (``MOL_GUESTS``),
their disk directories, its own bridge and that bridge's sysctl file. Prints JSON with the
list of what it had to remove; after a clean teardown by the roles that list is empty.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mv6mol.site import link_exists, load_site


def _virsh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["virsh", "-c", "qemu:///system", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def main() -> int:
    site = load_site()
    removed = []
    for name in os.environ.get("MOL_GUESTS", "").split():
        if _virsh("dominfo", name).returncode == 0:
            _virsh("destroy", name)
            _virsh("undefine", name)
            removed.append(f"domain {name}")
        disk_dir = Path("/var/lib/mv6/guests", name)
        if disk_dir.exists():
            shutil.rmtree(disk_dir)
            removed.append(str(disk_dir))
    bridge = site["bridge"]
    if link_exists(bridge):
        subprocess.run(["ip", "link", "del", bridge], check=True, timeout=30)
        removed.append(f"bridge {bridge}")
    sysctl_file = Path(f"/etc/sysctl.d/60-mv6-{bridge}.conf")
    if sysctl_file.exists():
        sysctl_file.unlink()
        removed.append(str(sysctl_file))
    print(json.dumps({"removed": removed}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
