"""What libvirt's re-probing of QEMU costs, and what roles/hypervisor's /dev/kvm fix gives back.

On a host without udev /dev/kvm is root:root 0600; libvirt then finds its cached QEMU
capabilities stale at every lookup and probes QEMU again (docs/hypervisor.md, "The /dev/kvm
device"). In one run, as root, this bench measures:

  1. ``virsh define`` and ``virsh start`` (+ ``destroy``) of a small diskless TCG domain,
     REPEATS times each, with /dev/kvm root:root 0600 and then root:kvm 0660, and whether
     libvirt rewrote its capabilities cache each time;
  2. with --lab, the local lab (``scripts/lab.sh up`` then ``down``) twice from /dev/kvm
     root:root 0600: once with the fix switched off (``mv6_hypervisor_kvm_device_mode:
     leave``, before) and once with it (after). lab.sh prints site.yml's own time; both are
     read from its times log. Before, site.yml fails its final audit on libvirt_reprobe,
     as it should, after doing all its work.

/dev/kvm's owner, group and mode are put back at the end, whatever happens.
Run: ``.venv/bin/python bench/libvirt_reprobe_bench.py [--lab]`` (about 4 minutes without
--lab, 15 with it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KVM = Path("/dev/kvm")
CACHE = Path("/var/cache/libvirt/qemu/capabilities")
URI = "qemu:///system"
NAME = "mv6-bench-reprobe"
XML = f"""<domain type='qemu'><name>{NAME}</name><memory unit='MiB'>32</memory>
<os><type arch='x86_64'>hvm</type></os><devices><console type='pty'/></devices></domain>
"""


def virsh(*argv: str, timeout: float = 300) -> float:
    start = time.monotonic()
    subprocess.run(
        ["virsh", "-q", "-c", URI, *argv], check=True, capture_output=True, timeout=timeout
    )
    return time.monotonic() - start


def cache_state() -> dict:
    return {p.name: p.stat().st_mtime_ns for p in CACHE.glob("*.xml")}


def set_mode(uid: int, gid: int, mode: int) -> None:
    os.chown(KVM, uid, gid)
    os.chmod(KVM, mode)


def calls(label: str, repeats: int, xml: Path) -> dict:
    defines, starts, rewrites = [], [], 0
    subprocess.run(["virsh", "-q", "-c", URI, "undefine", NAME], capture_output=True, check=False)
    for _round in range(repeats):
        before = cache_state()
        defines.append(virsh("define", str(xml)))
        starts.append(virsh("start", NAME))
        virsh("destroy", NAME)
        virsh("undefine", NAME)
        rewrites += cache_state() != before
    out = {
        "define_median_s": round(statistics.median(defines), 3),
        "start_median_s": round(statistics.median(starts), 3),
        "cache_rewritten": f"{rewrites}/{repeats}",
    }
    print(f"{label}: {json.dumps(out)}", flush=True)
    return out


def lab(label: str, extra: dict, reprobing: bool = False) -> dict:
    """One lab up and down. With ``reprobing`` (the fix switched off) site.yml does all its
    work and then fails its audit on exactly one violation, libvirt_reprobe: that is the
    audit doing its job, and the run still counts; any other failure stops the bench."""
    times = Path("/var/lib/mv6lab/times.log")
    env = dict(os.environ, MV6_LAB_EXTRA_VARS=json.dumps(extra))
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "lab.sh"), "up"],
        check=False,
        env=env,
        timeout=3600,
        capture_output=True,
        text=True,
    )
    up = time.monotonic() - start
    audit = "site.yml ran clean"
    if proc.returncode != 0:
        log = Path("/var/lib/mv6lab/lab/site.log").read_text()
        expected = "MV6 audit found 1 violation(s):" in log and "libvirt_reprobe" in log
        if not (reprobing and expected):
            raise SystemExit(f"{label}: lab.sh up failed: {proc.stdout[-2000:]}")
        audit = "audit failed on its one expected violation, libvirt_reprobe"
    site = [line for line in times.read_text().splitlines() if line.startswith("site.yml (lab)")][
        -1
    ]
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "lab.sh"), "down"],
        check=True,
        env=env,
        timeout=1800,
        capture_output=True,
    )
    out = {"lab_up_s": round(up, 1), "site": site, "audit": audit}
    print(f"{label}: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lab", action="store_true")
    args = parser.parse_args()
    info = KVM.stat()
    original = (info.st_uid, info.st_gid, info.st_mode & 0o7777)
    kvm_gid = int(
        subprocess.run(
            ["getent", "group", "kvm"], capture_output=True, text=True, check=True
        ).stdout.split(":")[2]
    )
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "domain.xml"
        xml.write_text(XML)
        try:
            set_mode(0, 0, 0o600)
            broken = calls("root:root 0600 (re-probing)", args.repeats, xml)
            set_mode(0, kvm_gid, 0o660)
            calls("root:kvm 0660 (first lookups after the change)", 1, xml)
            fixed = calls("root:kvm 0660", args.repeats, xml)
            ratio = broken["define_median_s"] / fixed["define_median_s"]
            print(f"define ratio 0600/0660: {ratio:.0f}")
            if args.lab:
                set_mode(0, 0, 0o600)
                lab(
                    "lab before (mv6_hypervisor_kvm_device_mode: leave)",
                    {"mv6_hypervisor_kvm_device_mode": "leave"},
                    reprobing=True,
                )
                set_mode(0, 0, 0o600)
                lab("lab after (the role applies root:kvm 0660)", {})
        finally:
            subprocess.run(
                ["virsh", "-q", "-c", URI, "destroy", NAME], capture_output=True, check=False
            )
            subprocess.run(
                ["virsh", "-q", "-c", URI, "undefine", NAME], capture_output=True, check=False
            )
            set_mode(*original)


if __name__ == "__main__":
    main()
