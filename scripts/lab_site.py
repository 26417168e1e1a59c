"""The simulated site of the MV6 lab (scripts/lab.sh): services, prober, guest exec.

  serve ADDR PORT BANNER     a TCP service that answers every connection with BANNER
  probe ADDR PORT BANNER LOG once per second, connect and expect BANNER; log ok|FAIL lines
  count LOG                  print "PROBES FAILED" for a prober log
  ping ADDR [DEV]            one ICMP/ICMPv6 echo (raw socket, bound to DEV if given),
                             exit 0 when the reply comes within 2 s
  guests PLAN HOST           print "name address link_local port" per planned guest
  guest-exec DOMAIN ARG...   run a command in a guest over its QEMU guest agent (virsh),
                             print its output, exit with its exit code

Standard library only, except `guests`, which reads the YAML plan (run it with the venv's
Python). No test traffic leaves the namespaces and the parallel segment the lab builds.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import time
from pathlib import Path


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def serve(addr: str, port: str, banner: str) -> None:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(banner.encode() + b"\n")

    class Server(socketserver.ThreadingTCPServer):
        address_family = _family(addr)
        allow_reuse_address = True
        daemon_threads = True

    with Server((addr, int(port)), Handler) as server:
        server.serve_forever()


def _ask(addr: str, port: int, timeout: float) -> str:
    with socket.create_connection((addr, port), timeout=timeout) as conn:
        conn.settimeout(timeout)
        return conn.recv(256).decode(errors="replace").strip()


def probe(addr: str, port: str, banner: str, log: str) -> None:
    running = True

    def stop(*_):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with open(log, "a", encoding="utf-8", buffering=1) as out:
        while running:
            started = time.monotonic()
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                answer = _ask(addr, int(port), 1.0)
                status = "ok" if answer == banner else f"FAIL unexpected answer {answer!r}"
            except OSError as exc:
                status = f"FAIL {exc}"
            out.write(f"{stamp} {addr} {port} {status}\n")
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def ping(addr: str, dev: str | None = None) -> int:
    """One echo request; 0 on a reply, 1 on silence or an error (printed)."""
    v6 = ":" in addr.split("%")[0]
    family = socket.AF_INET6 if v6 else socket.AF_INET
    proto = socket.IPPROTO_ICMPV6 if v6 else socket.IPPROTO_ICMP
    ident = os.getpid() & 0xFFFF
    try:
        target = socket.getaddrinfo(addr, None, family, socket.SOCK_RAW, proto)[0][4]
        with socket.socket(family, socket.SOCK_RAW, proto) as sock:
            if dev:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
            request_type, reply_type = (128, 129) if v6 else (8, 0)
            header = struct.pack("!BBHHH", request_type, 0, 0, ident, 1)
            payload = b"mv6lab"
            if not v6:  # the kernel computes the ICMPv6 checksum itself
                header = struct.pack(
                    "!BBHHH", request_type, 0, _checksum(header + payload), ident, 1
                )
            sock.sendto(header + payload, target)
            deadline = time.monotonic() + 2.0
            while (left := deadline - time.monotonic()) > 0:
                sock.settimeout(left)
                data = sock.recvfrom(2048)[0]
                icmp = data if v6 else data[(data[0] & 0x0F) * 4 :]
                kind, got_id = icmp[0], struct.unpack("!H", icmp[4:6])[0]
                if kind == reply_type and got_id == ident:
                    return 0
    except OSError as exc:
        print(f"ping {addr}: {exc}", file=sys.stderr)
        return 1
    print(f"ping {addr}: no reply", file=sys.stderr)
    return 1


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def count(log: str) -> None:
    with open(log, encoding="utf-8") as handle:
        lines = [line for line in handle if line.strip()]
    failed = sum(1 for line in lines if " FAIL" in line)
    print(len(lines), failed)


def _read_plan(plan_file: str) -> dict:
    """The plan, read by the collection's own reader (a site file and one file per host)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "molecule" / "shared"))
    from mv6mol import planfile

    return planfile.read(plan_file)


def guests(plan_file: str, host: str) -> None:
    plan = _read_plan(plan_file)
    for name, guest in sorted(plan["hosts"][host]["guests"].items()):
        if guest.get("released"):
            continue
        print(name, guest["address"], guest.get("link_local") or "-", guest["port"])


def _agent(domain: str, command: dict, timeout: int = 30) -> dict:
    proc = subprocess.run(
        ["virsh", "-q", "-c", "qemu:///system", "qemu-agent-command", domain, json.dumps(command)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"guest agent of {domain}: {proc.stderr.strip()}")
    return json.loads(proc.stdout)["return"]


def guest_exec(domain: str, argv: list[str], timeout: int = 30) -> int:
    started = _agent(
        domain,
        {
            "execute": "guest-exec",
            "arguments": {"path": argv[0], "arg": argv[1:], "capture-output": True},
        },
    )
    deadline = time.monotonic() + timeout
    while True:
        status = _agent(domain, {"execute": "guest-exec-status", "arguments": started})
        if status.get("exited"):
            break
        if time.monotonic() > deadline:
            print(f"guest-exec {domain}: {argv} still running after {timeout}s", file=sys.stderr)
            return 124
        time.sleep(0.2)
    for key, stream in (("out-data", sys.stdout), ("err-data", sys.stderr)):
        if key in status:
            stream.write(base64.b64decode(status[key]).decode(errors="replace"))
    return int(status.get("exitcode", 1))


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "serve" and len(args) == 3:
        serve(*args)
    elif cmd == "probe" and len(args) == 4:
        probe(*args)
    elif cmd == "count" and len(args) == 1:
        count(*args)
    elif cmd == "ping" and len(args) in (1, 2):
        return ping(*args)
    elif cmd == "guests" and len(args) == 2:
        guests(*args)
    elif cmd == "guest-exec" and len(args) >= 2:
        return guest_exec(args[0], args[1:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
