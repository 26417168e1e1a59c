# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find out whether KVM can really boot a guest on this host, within a bounded time.

/dev/kvm opening is not enough: under nested virtualisation a guest can hang for minutes in
its kernel's decompressor. Two stages, each bounded by --timeout seconds:

1. sector: a 512-byte boot sector (source: accel_probe_sector.S) goes from real mode to long
   mode, touches 64 MiB and writes "RLM" to COM1. Cheap; catches a KVM that runs nothing.
2. kernel: boots a Linux kernel image (-kernel, console=ttyS0, -no-reboot) and waits for its
   first console line ("Linux version"), which it prints only after decompressing itself.

KVM is chosen only when both stages pass. Without a kernel image to boot, the verdict is TCG:
stage 1 alone cannot prove that a real guest gets past its decompressor.

The verdict is cached as JSON; the cache is reused while the key (probe version, QEMU binary,
kernel image, host kernel release) is unchanged. Prints the verdict as JSON on stdout.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time

PROBE_VERSION = 1
SECTOR = base64.b64decode(
    "+jHAjtiOwI7QvAB8uvgDsFLuvwAQuQAwMcDzqmbHBgAQAyAAAGbHBgAgAzAAAL8AMGYx27lAAGaJ"
    "2GYNgwAAAGaJBWaBwwAAIACDxwji6A8g4GaDyCAPIuBmuAAQAAAPIthmuYAAAMAPMmYNAAEAAA8w"
    "DwEW4HwPIMBmDQEAAIAPIsDqiHwIAGa4EACO2I7QZrr4A7BM7kjHxwAAEABIx8EAAAAESIk/SIHH"
    "ABAAAEiB6QAQAAB17bBN7rAK7vTr/Y20JgAAAAAAAAAAAAAAAAAAAAAAmiAAAAAAAACSAAAXAMh8"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAVao="
)


def file_id(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


def find_kernel(explicit: str) -> str | None:
    candidates = [explicit] if explicit else []
    candidates += [f"/boot/vmlinuz-{platform.release()}", "/boot/vmlinuz"]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.R_OK):
            return path
    return None


def boot(
    qemu: str, extra: list[str], marker: bytes, timeout: float, workdir: str, runas: str
) -> dict:
    serial = os.path.join(workdir, "serial.out")
    if os.path.exists(serial):
        os.unlink(serial)
    argv = [
        qemu, "-accel", "kvm", "-nodefaults", "-display", "none", "-monitor", "none",
        "-no-reboot", "-m", "256", "-serial", f"file:{serial}", *extra,
    ]  # fmt: skip
    if runas and os.geteuid() == 0:
        # MV6 never runs QEMU as root, not even for a probe: drop to the QEMU user after init.
        argv += ["-runas", runas]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seen = False
    data = b""
    while True:
        try:
            with open(serial, "rb") as fh:
                data = fh.read()
        except OSError:
            data = b""
        if marker in data:
            seen = True
            break
        if proc.poll() is not None or time.monotonic() - start > timeout:
            break
        time.sleep(0.1)
    elapsed = round(time.monotonic() - start, 2)
    if proc.poll() is None:
        proc.kill()
    _out, err = proc.communicate()
    return {
        "ok": seen,
        "seconds": elapsed,
        "exit": proc.returncode,
        "serial_tail": data[-200:].decode("ascii", "replace"),
        "stderr_tail": err[-300:].decode("utf-8", "replace").strip(),
    }


def probe(qemu: str, kernel: str | None, timeout: float, runas: str = "") -> dict:
    stages = []
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
        os.close(fd)
    except OSError as exc:
        return {"accel": "tcg", "reason": f"/dev/kvm cannot be opened: {exc}", "stages": stages}
    with tempfile.TemporaryDirectory(prefix="mv6-accel-") as workdir:
        sector = os.path.join(workdir, "sector.img")
        with open(sector, "wb") as fh:
            fh.write(SECTOR)
        result = boot(
            qemu, ["-drive", f"file={sector},format=raw,if=floppy", "-boot", "a"], b"RLM",
            timeout, workdir, runas,
        )  # fmt: skip
        stages.append({"stage": "sector", **result})
        if not result["ok"]:
            return {
                "accel": "tcg",
                "reason": f"a boot sector did not reach long mode under KVM within {timeout} s",
                "stages": stages,
            }
        if kernel is None:
            return {
                "accel": "tcg",
                "reason": "no kernel image to prove that KVM boots a real guest"
                " (set mv6_hypervisor_accel_probe_kernel, or mv6_hypervisor_accel: kvm)",
                "stages": stages,
            }
        result = boot(
            qemu,
            ["-kernel", kernel, "-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"],
            b"Linux version",
            timeout,
            workdir,
            runas,
        )
        stages.append({"stage": "kernel", "kernel": kernel, **result})
        if not result["ok"]:
            return {
                "accel": "tcg",
                "reason": f"{kernel} printed nothing of its own under KVM within {timeout} s"
                " (stuck before or in its decompressor)",
                "stages": stages,
            }
    return {
        "accel": "kvm",
        "reason": "KVM booted a kernel to its first console line",
        "stages": stages,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--qemu", required=True)
    parser.add_argument("--kernel", default="")
    parser.add_argument("--timeout", type=float, default=15)
    parser.add_argument("--cache", required=True)
    parser.add_argument("--runas", default="", help="unprivileged user QEMU drops to")
    parser.add_argument("--no-write", action="store_true", help="do not write the cache")
    args = parser.parse_args()

    kernel = find_kernel(args.kernel)
    key_text = "|".join(
        [str(PROBE_VERSION), file_id(args.qemu), file_id(kernel or "none"), platform.release()]
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()
    try:
        with open(args.cache, encoding="utf-8") as fh:
            cached = json.load(fh)
        if cached.get("key") == key:
            print(json.dumps({**cached, "cached": True}))
            return 0
    except (OSError, ValueError):
        pass

    verdict = probe(args.qemu, kernel, args.timeout, args.runas)
    verdict["domain_type"] = "kvm" if verdict["accel"] == "kvm" else "qemu"
    verdict["key"] = key
    verdict["probed_at"] = int(time.time())
    if not args.no_write:
        os.makedirs(os.path.dirname(args.cache) or ".", exist_ok=True)
        tmp = f"{args.cache}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(verdict, fh, indent=1, sort_keys=True)
            fh.write("\n")
        os.replace(tmp, args.cache)
    print(json.dumps({**verdict, "cached": False}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
