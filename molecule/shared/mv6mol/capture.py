"""tcpdump captures at the observation points of a scenario, read back without scapy.

An observation point is an interface in the host or in a namespace: the parallel peer's
end of the uplink (what reaches the peer), the native peer's interface, a guest's tap with
``direction="out"`` (what the bridge delivers to that guest), and the bridge device itself
without promiscuous mode (what the bridge passes up to the host's own stack, plus
everything the host sends on the bridge).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import struct
import subprocess
import time
from pathlib import Path


class Capture:
    def __init__(
        self,
        name: str,
        iface: str,
        path: Path,
        netns: str | None = None,
        direction: str | None = None,
        promisc: bool = False,
    ) -> None:
        self.name, self.iface, self.path, self.netns = name, iface, Path(path), netns
        self.direction, self.promisc = direction, promisc
        self.proc: subprocess.Popen | None = None
        self.kernel_drops: int | None = None
        self.stderr = ""

    def start(self, timeout: float = 15) -> Capture:
        cmd = ["tcpdump", "-i", self.iface, "-n", "-U", "-s", "256", "-B", "8192"]
        cmd += ["-Z", "root", "-w", str(self.path)]
        if not self.promisc:
            cmd.append("-p")
        if self.direction:
            cmd += ["-Q", self.direction]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.path.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        # tcpdump says "listening on IFACE" once the socket is bound and filtering.
        end = time.monotonic() + timeout
        buf = b""
        while time.monotonic() < end:
            ready, _w, _x = select.select([self.proc.stderr], [], [], 0.2)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                if b"listening on" in buf:
                    self.stderr = buf.decode(errors="replace")
                    return self
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"tcpdump on {self.iface} did not start: {buf.decode(errors='replace')}")

    def stop(self) -> Capture:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                _out, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                _out, err = self.proc.communicate()
            self.stderr += err.decode(errors="replace")
            m = re.search(r"(\d+) packets? dropped by kernel", self.stderr)
            self.kernel_drops = int(m.group(1)) if m else None
        return self

    def frames(self) -> list[bytes]:
        return read_pcap(self.path)


def read_pcap(path: Path) -> list[bytes]:
    data = Path(path).read_bytes() if Path(path).exists() else b""
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    out, off = [], 24
    while off + 16 <= len(data):
        _sec, _frac, incl, _orig = struct.unpack(endian + "IIII", data[off : off + 16])
        off += 16
        out.append(data[off : off + incl])
        off += incl
    return out


@contextlib.contextmanager
def capturing(captures: list[Capture], settle: float = 1.0):
    """Start every capture, yield them, stop them all (also on failure)."""
    started = []
    try:
        for c in captures:
            started.append(c.start())
        yield captures
        time.sleep(settle)
    finally:
        for c in started:
            c.stop()


def sources(frames: list[bytes]) -> set[str]:
    """Source MACs of the frames."""
    return {":".join(f"{b:02x}" for b in f[6:12]) for f in frames if len(f) >= 14}
