"""Keeps the MV6 isolation tables loaded, owned by this process: the fail-closed half.

Installed by mv6.transition roles/hypervisor (docs/isolation.md, "Fail closed"). The tables
of FILE are loaded with nftables' ``owner`` flag from this process's netlink socket. The
kernel then refuses every other process's change to them (``nft delete table``, ``nft flush
chain``, an added rule: "Operation not permitted"), and ``nft flush ruleset``, which is what
``nftables.service`` runs on reload, restart and stop and what a firewall role's own
``/etc/nftables.conf`` starts with, skips them. They go only when this process ends. Then
the ports of the parallel bridge are put in the bridge's ``disabled`` state, so that the
parallel side passes nothing until the tables are back: by this process when it is told to
stop, and by whatever supervises it when it dies (systemd's ``ExecStopPost``, or ``supervise``
below where there is no systemd). Once it has loaded the tables again it puts back the ports
that it (or its supervisor) disabled, and only those.

Commands (``--table`` names the tables and the state files):

  run          load FILE and keep it; answer on the control socket; systemd's Type=notify
  supervise    run ``run`` in a child and start it again when it ends (no systemd), bounded
  start        start ``supervise`` detached and wait until the tables are loaded
  stop         stop the supervisor (or a keeper left without one) and so the tables;
               wait until it has exited
  reload       ask the running keeper to load FILE again (one nft transaction)
  status       print the keeper's status as JSON; exit 1 when no keeper answers
  disable-ports  put every port of the bridge in the disabled state (ExecStopPost)

Python and the libnftables binding (Debian's python3-nftables) only: this runs on the
hypervisor, outside any virtualenv, under the system's /usr/bin/python3 (the role's wrapper
in /usr/local/sbin runs it so), and the owner flag needs the socket that loaded the
table to stay open, which ``nft -f`` cannot do.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RUN_DIR = Path("/run/mv6")
# Restarts of a dying keeper: at most this many within the window, then the supervisor stops
# and leaves the ports disabled (fail closed) for the next site.yml or an operator to look at.
RESTART_BURST = 10
RESTART_WINDOW_S = 60.0
RESTART_DELAY_S = 0.2
CHECK_EVERY_S = 2.0
TABLE_RE = re.compile(r"^table\s+(bridge|inet|ip|ip6|arp|netdev)\s+(\S+)", re.MULTILINE)


def log(message: str) -> None:
    print(f"mv6-keeper[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


class Stopping(Exception):
    """Raised by the keeper's SIGTERM handler."""


class Paths:
    def __init__(self, table: str) -> None:
        self.socket = RUN_DIR / f"{table}.keeper.sock"
        self.pid = RUN_DIR / f"{table}.keeper.pid"
        self.disabled = RUN_DIR / f"{table}.keeper.disabled"
        self.log = RUN_DIR / f"{table}.keeper.log"


def bridge_ports(bridge: str) -> list[str]:
    brif = Path("/sys/class/net", bridge, "brif")
    try:
        return sorted(p.name for p in brif.iterdir())
    except OSError:
        return []


def set_port_state(port: str, state: int) -> bool:
    done = subprocess.run(
        ["bridge", "link", "set", "dev", port, "state", str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        log(f"{port}: state {state}: {done.stderr.strip()}")
    return done.returncode == 0


DOWN = "@bridge-down"  # in the record: this keeper took the bridge down


def bridge_is_up(bridge: str) -> bool:
    try:
        return bool(int(Path("/sys/class/net", bridge, "flags").read_text(), 16) & 0x1)
    except (OSError, ValueError):
        return False


def healthy_keeper(paths: Paths, not_pid: int | None = None) -> bool:
    """Another keeper holds the tables (a second one failed to take them): leave the ports."""
    reply = ask(paths, "status", timeout=2)
    return bool(reply and reply.get("generation", 0) > 0 and reply.get("pid") != not_pid)


def disable_ports(bridge: str, paths: Paths, dead_pid: int | None = None) -> list[str]:
    """The bridge down, then every port disabled; the record says what to bring back.

    A port's own state alone would not hold: with no STP the kernel sets a port forwarding
    again when its carrier comes back, and a port that joins later starts forwarding. The
    ports of a bridge that is down stay disabled through both.
    """
    if healthy_keeper(paths, dead_pid):
        log(f"{bridge}: another keeper holds the tables; ports left as they are")
        return []
    previous = set(read_disabled(paths))
    if bridge_is_up(bridge):
        done = subprocess.run(
            ["ip", "link", "set", "dev", bridge, "down"],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            previous.add(DOWN)
        else:
            log(f"{bridge}: down: {done.stderr.strip()}")
    ports = bridge_ports(bridge)
    for port in ports:
        set_port_state(port, 0)
    RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    record = sorted(previous | set(ports))
    tmp = paths.disabled.with_suffix(".tmp")
    tmp.write_text("".join(f"{p}\n" for p in record))
    tmp.replace(paths.disabled)
    if ports or DOWN in record:
        log(f"{bridge}: down, ports disabled until the tables are back: {' '.join(ports)}")
    return ports


def read_disabled(paths: Paths) -> list[str]:
    try:
        return [p for p in paths.disabled.read_text().split() if p]
    except OSError:
        return []


def enable_ports(bridge: str, paths: Paths) -> None:
    """What this keeper disabled comes back: the bridge up, its recorded ports forwarding."""
    wanted = read_disabled(paths)
    if not wanted:
        return
    if DOWN in wanted:
        done = subprocess.run(
            ["ip", "link", "set", "dev", bridge, "up"], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            log(f"{bridge}: up: {done.stderr.strip()}")
    present = set(bridge_ports(bridge))
    ports = [p for p in wanted if p != DOWN and p in present]
    failed = [p for p in ports if not set_port_state(p, 3)]
    if failed:
        # A port that is down cannot forward yet; the kernel puts it to forwarding itself
        # when it comes up (no STP on the parallel bridge).
        log(f"{bridge}: not back to forwarding: {' '.join(failed)}")
    paths.disabled.unlink(missing_ok=True)
    log(f"{bridge}: up again, ports forwarding: {' '.join(ports)}")


def die_with_supervisor() -> None:
    """Under ``supervise``: end (disabling the ports) when the supervisor is gone, so that a
    keeper is never left running without someone to disable the ports when it dies."""
    if os.environ.get("MV6_KEEPER_SUPERVISOR") is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(os.environ["MV6_KEEPER_SUPERVISOR"]):
        os.kill(os.getpid(), signal.SIGTERM)


def notify(message: str) -> None:
    """sd_notify(3) without libsystemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(address)
        sock.sendall(message.encode())


class Keeper:
    def __init__(self, args: argparse.Namespace) -> None:
        import nftables  # Debian's python3-nftables; imported here so the client commands need none

        self.args = args
        self.paths = Paths(args.table)
        self.nft = nftables.Nftables()
        self.owned: set[str] = set()  # families of the tables this process loaded
        self.generation = 0
        self.loaded_at = 0.0
        self.digest = ""
        self.stopping = False
        self.failed = False

    def exists(self, family: str) -> bool:
        rc, _out, _err = self.nft.cmd(f"list table {family} {self.args.table}")
        return rc == 0

    def load(self) -> tuple[bool, str]:
        """FILE in one transaction, with the owner flag; the old tables go in the same one."""
        try:
            text = Path(self.args.file).read_text()
        except OSError as exc:
            return False, f"{self.args.file}: {exc.strerror}"
        families = {fam for fam, name in TABLE_RE.findall(text) if name == self.args.table}
        if "bridge" not in families:
            return False, f"{self.args.file} defines no table bridge {self.args.table}"
        # A table that this process did not load yet (one loaded by nft -f, from an older
        # version of the role) is deleted first: the file's own "create if missing" line
        # cannot add the owner flag to it. One of ours that FILE no longer defines goes too.
        prefix = [
            f"delete table {fam} {self.args.table}"
            for fam in sorted(families - self.owned)
            if self.exists(fam)
        ] + [f"delete table {fam} {self.args.table}" for fam in sorted(self.owned - families)]
        rc, _out, err = self.nft.cmd("\n".join([*prefix, text]))
        if rc != 0:
            return False, err.strip() or f"nft rc {rc}"
        self.owned = families
        self.generation += 1
        self.loaded_at = time.time()
        self.digest = hashlib.sha256(text.encode()).hexdigest()
        return True, "loaded"

    def status(self) -> dict:
        return {
            "pid": os.getpid(),
            "table": self.args.table,
            "file": self.args.file,
            "families": sorted(self.owned),
            "generation": self.generation,
            "loaded_at": self.loaded_at,
            "sha256": self.digest,
        }

    def serve(self) -> int:
        ok, message = self.load()
        if not ok:
            log(f"cannot load {self.args.file}: {message}")
            return 1
        log(f"tables loaded and owned: {' '.join(sorted(self.owned))} {self.args.table}")
        enable_ports(self.args.bridge, self.paths)
        RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.paths.socket.unlink(missing_ok=True)
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.paths.socket))
        os.chmod(self.paths.socket, 0o600)
        server.listen(4)
        server.settimeout(CHECK_EVERY_S)

        def stop(signum, _frame):
            self.stopping = True
            log(f"signal {signum}: stopping")
            raise Stopping  # out of accept() at once, not at its next timeout

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        die_with_supervisor()
        notify("READY=1")
        try:
            while not self.stopping:
                try:
                    conn, _addr = server.accept()
                except TimeoutError:
                    self.check()
                    continue
                with conn:
                    self.answer(conn)
        except Stopping:
            pass
        finally:
            # No more requests, then the ports: once this process is gone the tables are
            # gone with it.
            server.close()
            self.paths.socket.unlink(missing_ok=True)
            disable_ports(self.args.bridge, self.paths, dead_pid=os.getpid())
        return 1 if self.failed else 0

    def check(self) -> None:
        """The kernel keeps owned tables; should one be gone all the same, load it again."""
        missing = [fam for fam in sorted(self.owned) if not self.exists(fam)]
        if missing:
            log(f"tables missing ({' '.join(missing)}): loading again")
            self.owned -= set(missing)
            ok, message = self.load()
            if not ok:
                log(f"cannot load {self.args.file}: {message}; stopping (ports disabled)")
                self.stopping = True
                self.failed = True

    def answer(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            request = conn.recv(256).decode().strip()
        except (OSError, UnicodeDecodeError):
            return
        if request == "reload":
            ok, message = self.load()
            reply = {"ok": ok, "message": message, **self.status()}
            log(f"reload: {message}")
        elif request == "status":
            reply = {"ok": True, **self.status()}
        else:
            reply = {"ok": False, "message": f"unknown request {request!r}"}
        with contextlib.suppress(OSError):
            conn.sendall((json.dumps(reply) + "\n").encode())


def ask(paths: Paths, request: str, timeout: float = 60) -> dict | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(paths.socket))
            sock.sendall(request.encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def supervise(args: argparse.Namespace) -> int:
    """The keeper's supervisor where there is no systemd: one per table (a locked pid file)."""
    paths = Paths(args.table)
    RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    lock = open(paths.pid, "a+")  # noqa: SIM115 - held for the supervisor's lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        log(f"another supervisor holds {paths.pid}")
        return 1
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    child: subprocess.Popen | None = None
    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    starts: list[float] = []
    argv = [sys.executable, os.path.abspath(__file__), "run", *common_argv(args)]
    rc = 0
    while not stopping:
        now = time.monotonic()
        starts = [t for t in starts if now - t < RESTART_WINDOW_S] + [now]
        if len(starts) > RESTART_BURST:
            log(f"{RESTART_BURST} restarts in {RESTART_WINDOW_S:.0f} s: giving up, ports disabled")
            rc = 1
            break
        child = subprocess.Popen(
            argv, env={**os.environ, "MV6_KEEPER_SUPERVISOR": str(os.getpid())}
        )
        rc = child.wait()
        # The child's tables are gone with it; its own stop path disabled the ports, a
        # SIGKILL did not: disable them here in both cases before anything else passes.
        disable_ports(args.bridge, paths, dead_pid=child.pid)
        if stopping:
            break
        log(f"keeper exited with {rc}; starting it again")
        time.sleep(RESTART_DELAY_S)
    # The file stays (a new supervisor locks the same inode); its lock goes with this process.
    lock.seek(0)
    lock.truncate()
    lock.flush()
    return rc


def common_argv(args: argparse.Namespace) -> list[str]:
    return ["--table", args.table, "--file", args.file, "--bridge", args.bridge]


def supervisor_pid(paths: Paths) -> int | None:
    """The supervisor's pid while one holds the pid file's lock, else None."""
    try:
        with open(paths.pid) as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return int(fh.read().split()[0])
            fcntl.flock(fh, fcntl.LOCK_UN)
            return None
    except (OSError, ValueError, IndexError):
        return None


def start(args: argparse.Namespace) -> int:
    paths = Paths(args.table)
    if ask(paths, "status", timeout=5):
        print(json.dumps({"changed": False, "message": "the keeper is running"}))
        return 0
    if supervisor_pid(paths) is None:
        RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(paths.log, "ab") as out:
            subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "supervise", *common_argv(args)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                close_fds=True,
            )
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        reply = ask(paths, "status", timeout=5)
        if reply and reply.get("generation", 0) > 0:
            print(json.dumps({"changed": True, "message": "the keeper started", **reply}))
            return 0
        time.sleep(0.1)
    print(
        f"the keeper did not load {args.file} within {args.timeout:.0f} s; see {paths.log}",
        file=sys.stderr,
    )
    return 1


def exited(pid: int) -> bool:
    """Gone, or a zombie (where PID 1 does not reap, /proc/PID stays)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def stop_supervisor(args: argparse.Namespace) -> int:
    paths = Paths(args.table)
    pid = supervisor_pid(paths)
    what = f"supervisor {pid}"
    if pid is None:
        # A keeper without its supervisor (it was killed): stop the keeper itself.
        reply = ask(paths, "status", timeout=5)
        if not reply:
            print(json.dumps({"changed": False, "message": "no supervisor or keeper is running"}))
            return 0
        pid, what = reply["pid"], f"keeper {reply['pid']} (no supervisor)"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if exited(pid):
            print(json.dumps({"changed": True, "message": f"{what} stopped"}))
            return 0
        time.sleep(0.1)
    print(f"{what} did not stop within {args.timeout:.0f} s", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mv6-keeper", description=__doc__.split("\n", maxsplit=1)[0]
    )
    parser.add_argument(
        "command",
        choices=["run", "supervise", "start", "stop", "reload", "status", "disable-ports"],
    )
    parser.add_argument("--table", required=True)
    parser.add_argument("--file", default="")
    parser.add_argument("--bridge", default="")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    paths = Paths(args.table)
    if args.command in ("run", "supervise", "start") and not (args.file and args.bridge):
        parser.error(f"{args.command} needs --file and --bridge")
    if args.command == "run":
        return Keeper(args).serve()
    if args.command == "supervise":
        return supervise(args)
    if args.command == "start":
        return start(args)
    if args.command == "stop":
        return stop_supervisor(args)
    if args.command == "disable-ports":
        if not args.bridge:
            parser.error("disable-ports needs --bridge")
        disable_ports(args.bridge, paths)
        return 0
    reply = ask(paths, args.command, timeout=args.timeout)
    if reply is None:
        print(f"no keeper answers on {paths.socket}", file=sys.stderr)
        return 1
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
