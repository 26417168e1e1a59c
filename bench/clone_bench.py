"""Clone time against golden-image size, and against a full copy.

Making a guest is one ``qemu-img create -b GOLDEN -F qcow2`` (what mv6.transition.guest_disk
runs), so its time must not grow with the golden image. This bench makes two golden images,
1 GiB with 256 MiB of real data and 8 GiB with 2 GiB of real data, then measures the median of:

- clone: ``qemu-img create -f qcow2 -b GOLDEN -F qcow2 persistent.qcow2`` (REPEATS times);
- module: one ``mv6.transition.guest_disk`` create via ``ansible localhost -m`` (MODULE_REPEATS);
- sparse copy: ``cp --sparse=always GOLDEN copy`` (COPY_REPEATS), once with the golden image
  in the page cache (warm) and once after its pages were dropped (cold: a golden image that
  has not been read lately, the usual case when a guest is made);
- convert: ``qemu-img convert -O qcow2 GOLDEN copy`` (COPY_REPEATS, warm).

It prints the medians and the ratios (clone 8 GiB / clone 1 GiB, about 1; clone / sparse copy,
at most 1/100). Work happens in a fresh directory under /var/tmp, removed at the end.
Run: ``.venv/bin/python bench/clone_bench.py`` (as root, about 2 minutes).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
BIN = TOP / ".venv" / "bin"
REPEATS = 25
MODULE_REPEATS = 3
COPY_REPEATS = 3
GOLDENS = [("1 GiB", "1G", 256 << 20), ("8 GiB", "8G", 2 << 30)]


def run(*argv, timeout=600, env=None) -> None:
    subprocess.run([str(a) for a in argv], check=True, timeout=timeout, capture_output=True,
                   env=env)  # fmt: skip


def make_golden(work: Path, size: str, data: int) -> Path:
    """A qcow2 golden image of ``size`` with ``data`` bytes of non-zero data written into it."""
    golden = work / f"golden-{size}.qcow2"
    run("qemu-img", "create", "-q", "-f", "qcow2", golden, size)
    chunk = 256 << 20  # qemu-io takes at most 2 GiB - 1 per request
    writes = []
    for offset in range(0, data, chunk):
        writes += ["-c", f"write -P {0x11 + offset // chunk:#x} {offset} {chunk}"]
    run("qemu-io", "-f", "qcow2", *writes, golden)
    golden.chmod(0o444)
    return golden


def evict(path: Path) -> None:
    """Drop this one file's pages from the page cache (posix_fadvise DONTNEED), nothing else."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def main() -> int:
    if os.geteuid() != 0:
        print("run as root (the module chowns layers to libvirt-qemu)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="t-img-bench-", dir="/var/tmp"))
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}",
               ANSIBLE_CONFIG=str(TOP / "ansible.cfg"))  # fmt: skip
    results: dict[str, dict] = {}
    try:
        goldens = {label: make_golden(work, size, data) for label, size, data in GOLDENS}
        samples: dict[tuple[str, str], list[float]] = {}

        def measure(kind: str, label: str, fn) -> None:
            start = time.perf_counter()
            fn()
            samples.setdefault((label, kind), []).append(time.perf_counter() - start)

        # Interleave the sizes so drift in the machine's load hits both alike.
        for i in range(REPEATS):
            for label, golden in goldens.items():
                overlay = work / f"clone-{i}.qcow2"
                measure(
                    "clone",
                    label,
                    lambda g=golden, o=overlay: run(
                        "qemu-img", "create", "-q", "-f", "qcow2", "-b", g, "-F", "qcow2", o
                    ),
                )
                overlay.unlink()
        for i in range(MODULE_REPEATS):
            for label, golden in goldens.items():
                guests = work / "guests"
                measure(
                    "module",
                    label,
                    lambda g=golden, d=guests, n=i: run(
                        BIN / "ansible",
                        "localhost",
                        "-m",
                        "mv6.transition.guest_disk",
                        "-e",
                        f"ansible_python_interpreter={BIN / 'python'}",
                        "-a",
                        f"name=bench{n} golden={g} guests_dir={d} images_dir={work}/none",
                        env=env,
                    ),
                )
                shutil.rmtree(guests)
        for _repeat in range(COPY_REPEATS):
            for label, golden in goldens.items():
                copy = work / "copy.qcow2"
                measure(
                    "sparse_copy",
                    label,
                    lambda g=golden, c=copy: run("cp", "--sparse=always", g, c),
                )
                copy.unlink()
                evict(golden)
                measure(
                    "cold_copy",
                    label,
                    lambda g=golden, c=copy: run("cp", "--sparse=always", g, c),
                )
                copy.unlink()
                measure(
                    "convert",
                    label,
                    lambda g=golden, c=copy: run(
                        "qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", g, c
                    ),
                )
                copy.unlink()
        for label, golden in goldens.items():
            results[label] = {"on_disk": golden.stat().st_blocks * 512}
            for (lab, kind), values in samples.items():
                if lab == label:
                    results[label][kind] = statistics.median(values)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("| golden | data on disk | clone (qemu-img create -b) | guest_disk module | "
          "cp --sparse=always, warm | cp, cold | qemu-img convert | clone / warm copy | "
          "clone / cold copy |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for label, r in results.items():
        print(
            f"| {label} | {r['on_disk'] / 2**20:.0f} MiB | {r['clone'] * 1e3:.1f} ms | "
            f"{r['module']:.2f} s | {r['sparse_copy'] * 1e3:.0f} ms | "
            f"{r['cold_copy'] * 1e3:.0f} ms | {r['convert'] * 1e3:.0f} ms"
            f" | 1/{r['sparse_copy'] / r['clone']:.0f} | 1/{r['cold_copy'] / r['clone']:.0f} |"
        )
    small, big = results["1 GiB"], results["8 GiB"]
    print()
    print(f"clone 8 GiB / clone 1 GiB: {big['clone'] / small['clone']:.2f} (median of {REPEATS})")
    print(f"module 8 GiB / module 1 GiB: {big['module'] / small['module']:.2f}")
    for label, r in (("8 GiB", big), ("1 GiB", small)):
        print(
            f"clone / sparse copy, {label}: warm 1/{r['sparse_copy'] / r['clone']:.0f}, "
            f"cold 1/{r['cold_copy'] / r['clone']:.0f}"
        )
    print(f"load average during the run: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
