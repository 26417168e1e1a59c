"""Raw-socket sender, sniffer and probes that run INSIDE a guest or a namespace.

Standard library only: the guests' golden image has python3 but no scapy. The test code
ships this file's text as ``python3 -c <text> <command> <json>`` through the QEMU guest agent
(or ``ip netns exec``) and reads one JSON line from stdout.

Commands (argument: one JSON object):
  send    {"mac", "frames": [[kind, copies, hex]], "pace"}  -> {"sent": {kind: n}, "errors": n}
  sniff   {"mac", "run", "seconds", "ready"}                -> {"counts": {"kind.phase": n}}
  connect {"addr", "port", "timeout"}                        -> {"ok", "data" | "error"}
  ping    {"addr", "count", "timeout", "dev"?}               -> {"replies", "error"}
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
MARK = b"MV6MOL"


def ifname_for(mac: str) -> str:
    mac = mac.lower()
    for name in os.listdir("/sys/class/net"):
        try:
            with open(f"/sys/class/net/{name}/address") as fh:
                if fh.read().strip().lower() == mac:
                    return name
        except OSError:
            continue
    raise SystemExit(f"no interface with MAC {mac}")


def send(args: dict) -> dict:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname_for(args["mac"]), 0))
    pace = int(args.get("pace", 100))
    sent: dict[str, int] = {}
    errors = 0
    n = 0
    for kind, copies, hexframe in args["frames"]:
        frame = bytes.fromhex(hexframe)
        for _copy in range(copies):
            for _attempt in range(50):
                try:
                    sock.send(frame)
                    break
                except OSError:
                    # ENOBUFS: the device queue is full; give it a moment.
                    time.sleep(0.002)
            else:
                errors += 1
                continue
            sent[str(kind)] = sent.get(str(kind), 0) + 1
            n += 1
            if pace and n % pace == 0:
                time.sleep(0.001)
    return {"sent": sent, "errors": errors}


def sniff(args: dict) -> dict:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        # As root, a bigger buffer than rmem_max: a slow (emulated) guest must not lose
        # the control frames of a burst.
        sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind((ifname_for(args["mac"]), 0))
    key = MARK + bytes.fromhex(args["run"])
    counts: dict[str, int] = {}
    if args.get("ready"):
        with open(args["ready"], "w") as fh:
            fh.write("ready\n")
    deadline = time.monotonic() + float(args.get("seconds", 30))
    stop_at = None
    while True:
        now = time.monotonic()
        end = min(deadline, stop_at) if stop_at else deadline
        if now >= end:
            break
        sock.settimeout(max(0.01, end - now))
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            break
        i = frame.find(key)
        if i < 0 or i + len(key) + 2 > len(frame):
            continue
        kind, phase = frame[i + len(key)], frame[i + len(key) + 1]
        k = f"{kind}.{phase}"
        counts[k] = counts.get(k, 0) + 1
        if kind == 0 and phase == 2 and stop_at is None:
            # The sender's closing control frames arrived: whatever was sent is in.
            stop_at = time.monotonic() + 1.0
    return {"counts": counts}


def connect(args: dict) -> dict:
    fam = socket.AF_INET6 if ":" in args["addr"] else socket.AF_INET
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(float(args.get("timeout", 5)))
        s.connect((args["addr"], int(args["port"])))
        data = s.recv(200)
        s.close()
        return {"ok": True, "data": data.decode(errors="replace")}
    except OSError as e:
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ping(args: dict) -> dict:
    """ICMP echo over a raw socket (no ping binary needed); counts replies."""
    six = ":" in args["addr"]
    try:
        if six:
            s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        if args.get("dev"):
            # Bound to one link (SO_BINDTODEVICE): nothing can leave by another.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, args["dev"].encode())
    except OSError as e:
        return {"replies": 0, "error": f"{type(e).__name__}: {e}"}
    ident = os.getpid() & 0xFFFF
    replies = 0
    error = None
    timeout = float(args.get("timeout", 2))
    for seq in range(int(args.get("count", 3))):
        req_type, rep_type = (128, 129) if six else (8, 0)
        msg = struct.pack("!BBHHH", req_type, 0, 0, ident, seq) + b"mv6-mol-ping"
        if not six:  # the kernel computes the ICMPv6 checksum itself
            msg = msg[:2] + struct.pack("!H", _csum(msg)) + msg[4:]
        try:
            s.sendto(msg, (args["addr"], 0))
        except OSError as e:
            error = f"{type(e).__name__}: {e}"
            continue
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            s.settimeout(max(0.01, end - time.monotonic()))
            try:
                data, _peer = s.recvfrom(2048)
            except (TimeoutError, OSError):
                break
            if not six:
                data = data[(data[0] & 0x0F) * 4 :]
            if len(data) >= 8:
                t, _c, _k, rid, rseq = struct.unpack("!BBHHH", data[:8])
                if t == rep_type and rid == ident and rseq == seq:
                    replies += 1
                    break
    return {"replies": replies, "error": error}


def main() -> None:
    command, arg = sys.argv[1], json.loads(sys.argv[2])
    result = {"send": send, "sniff": sniff, "connect": connect, "ping": ping}[command](arg)
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
