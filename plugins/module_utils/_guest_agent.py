# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The hypervisor's half of the mv6.transition.guest_agent connection, and the framing both
halves share.

The connection plugin runs on the controller. For each exec, put or fetch it sends THIS FILE
and one framed request over the hypervisor's own inventory connection (SSH, or local when the
hypervisor is the controller) to ``python3 -c BOOTSTRAP`` on the hypervisor. There the file
speaks to the guest's QEMU guest agent through a transport, does the whole operation (an exec
and its status polls, every chunk of a file and its checksum) and prints one framed reply. So
one task costs one exec over the hypervisor connection, whatever number of agent commands it
takes, and the controller needs no libvirt-python and no second host key.

Standard library only, plus libvirt-python on the hypervisor when it is there (python3-libvirt,
installed by roles/hypervisor); without it the ``virsh`` transport does the same, a little
slower. A transport is one method, ``command(execute, arguments)``: the libvirt one today, a
socket one for guests that are not libvirt domains later, and nothing above it changes.

Frame: ``MV6AGENT1 <header bytes> <payload bytes>\\n`` then a JSON object, then the raw payload.
Whatever a login script prints before the reply is skipped; the lengths bound the rest.

PRIVATE to the collection: no compatibility promise. No Ansible imports: this file runs on
hypervisors, alone.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import subprocess
import time
import xml.etree.ElementTree as ET

MAGIC = b"MV6AGENT1"
# Bytes of data per agent command, measured here (docs/guest_agent.md, "Limits"). Commands TO
# the agent (guest-file-write, guest-exec's input): one of 218 KB went through, one of 262 KB
# never got an answer and left the agent deaf for seconds, so 128 KiB (175 KB of base64).
# virsh takes the command as one argument, and Linux refuses an argument over 128 KiB
# (MAX_ARG_STRLEN): 64 KiB. Replies FROM the agent: libvirt refuses one over 10 MiB ("No
# complete agent response found in 10485760 bytes"), so reads are 1 MiB and the output of one
# command is read from files (Agent.run).
WRITE_CHUNK = 128 << 10
VIRSH_WRITE_CHUNK = 64 << 10
READ_CHUNK = 1 << 20
# Output of one command carried through the connection at all (read in READ_CHUNK pieces): it
# is held a few times over in memory on the hypervisor and on the controller.
OUTPUT_MAX = 64 << 20
# Error text from the guest (an agent's message, a command's stderr) kept in a reply.
ERROR_MAX = 4096
# Seconds an operation may take beyond its command's own bound: a guest that answers one
# byte per read cannot keep the helper busy without end.
OP_SLACK = 600
# Bytes of a file per helper call: memory on both ends stays bounded for files of any size.
SEGMENT = 16 << 20
# Status polls of a running exec: the first after POLL_MIN, each next one POLL_GROWTH times
# later, never more than a transport's poll_max apart. Every poll is work for libvirtd and
# for the guest agent inside the guest (a TCG guest's one vCPU, which is also running the
# command polled for), and through virsh a process start on the hypervisor. The fixed
# 5-50 ms pauses before cost up to 20 such polls a second (not measured on their own).
POLL_MIN = 0.005
POLL_GROWTH = 1.5
POLL_MAX = 0.1
VIRSH_POLL_MAX = 0.25
# The header is JSON of a few fields; a bigger one is not ours.
HEADER_MAX = 1 << 20
# The bootstrap, run by python3 on the hypervisor: the first line of its stdin is the length
# of this file, then this file, then one framed request.
BOOTSTRAP = (
    "import sys;r=sys.stdin.buffer;n=int(r.readline());g={'__name__':'mv6_guest_agent'};"
    "exec(compile(r.read(n),'mv6_guest_agent','exec'),g);sys.exit(g['main'](r,sys.stdout.buffer))"
)
# The environment of every exec in the guest: qemu-ga's own is a service's, without HOME.
GUEST_ENV = [
    "HOME=/root",
    "USER=root",
    "LOGNAME=root",
    "SHELL=/bin/sh",
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
]
# The work files of execs: each exec's stdout and stderr, and its stdin when that is too big for
# guest-exec (every AnsiballZ module of ansible-core 2.19 is), in a directory only root may
# enter (qemu-ga makes the files it creates 0666). Under /var/lib, where only root may create
# it: in world-writable /var/tmp any user could have made it first. On disk, not in /run: a
# big output filled the guest's small /run tmpfs, where qemu-ga keeps its own state, and
# broke the agent ("failed to commit persistent state to disk").
STAGING = "/var/lib/mv6-agent"
# The guest's side of an exec: one shell that makes STAGING the first time, takes its stdin from
# the staged file when there is one, sends its output to the work files and runs the command.
# Output goes to files, never into the agent's reply: a reply over libvirt's 10 MiB leaves the
# domain's agent unusable until the guest restarts (measured, docs/guest_agent.md).
_MAKE_DIR = (
    f"[ -d {STAGING} ] || mkdir -m 700 {STAGING} 2>/dev/null; [ -d {STAGING} ] || exit 125\n"
)
_RUN_SCRIPT = (
    _MAKE_DIR
    + """[ ! -e "$0.in" ] || exec <"$0.in"
umask 077
exec >"$0.out" 2>"$0.err" || exit 125
umask 022
"""
)
# Stop a process tree, then kill it: on timeout, the exec and everything it started. Its
# children are read from /proc (they share qemu-ga's session, so no group kill).
_KILL_SCRIPT = """tree() { kill -STOP "$1" 2>/dev/null
  for c in $(cat /proc/"$1"/task/*/children 2>/dev/null); do tree "$c"; done
  kill -KILL "$1" 2>/dev/null; }
tree "$1"
"""
# Ansible runs a module by extracting its zip to a temporary file and importing from it, so the
# guest's Python compiles every module_utils file from source at every task: 3.0 s of a 3.9 s
# ping in a TCG guest (docs/guest_agent.md). This preamble, put before a pipelined module by
# the connection, keeps the compiled code of each source in a root-only cache in the guest,
# keyed by the source's SHA-256 and the interpreter's cache tag and optimisation level. Any
# failure (no permission under become, an unknown Python) falls back to compiling.
MODULE_CACHE_DIR = "/var/cache/mv6-agent"
_MODULE_PREAMBLE = """import sys as _mv6_sys
def _mv6_cache():
    try:
        import hashlib, marshal, os, zipimport
        compile_source = zipimport._compile_source
        tag = _mv6_sys.implementation.cache_tag
    except Exception:
        return
    if not tag:
        return
    root = @CACHE@ + "/" + tag
    state = {}
    def trusted():
        # Only a cache this user owns, that nobody else may write, and not through a link.
        if "ok" not in state:
            try:
                st = os.lstat(root)
                import stat
                state["ok"] = (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                               and not st.st_mode & 0o022)
            except OSError:
                state["ok"] = None
        return state["ok"]
    def rename(code, pathname):
        consts = tuple(rename(c, pathname) if isinstance(c, type(code)) else c
                       for c in code.co_consts)
        return code.replace(co_filename=pathname, co_consts=consts)
    def cached(pathname, source):
        key = hashlib.sha256(b"%d:" % _mv6_sys.flags.optimize + source).hexdigest()
        path = os.path.join(root, key)
        if trusted():
            try:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                with os.fdopen(fd, "rb") as f:
                    return rename(marshal.load(f), pathname)
            except Exception:
                pass
        code = compile_source(pathname, source)
        if trusted() is False:
            return code
        tmp = "%s.%d" % (path, os.getpid())
        try:
            if trusted() is None:
                os.makedirs(root, mode=0o700, exist_ok=True)
                state.clear()
                if not trusted():
                    return code
            with open(tmp, "wb") as f:
                marshal.dump(code, f)
            os.replace(tmp, path)
        except Exception:
            try:
                os.unlink(tmp)
            except Exception:
                pass
        return code
    zipimport._compile_source = cached
_mv6_cache()
del _mv6_cache
""".replace("@CACHE@", repr(MODULE_CACHE_DIR))
# The mark of an AnsiballZ module (ansible-core's wrapper): only those get the preamble.
ANSIBALLZ_MARK = b"_ANSIBALLZ_WRAPPER = True"


def with_module_cache(module: bytes) -> bytes:
    """A pipelined AnsiballZ module, run behind the compile cache; anything else unchanged."""
    if ANSIBALLZ_MARK not in module[:4096]:
        return module
    return (
        _MODULE_PREAMBLE.encode()
        + b"exec(compile(%s, '<stdin>', 'exec', dont_inherit=True))\n" % repr(module).encode()
    )


# A domain name as libvirt and the planner allow it (no path or shell characters).
_DOMAIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


class FrameError(ValueError):
    """A reply or request that is not one whole frame."""


class AgentError(Exception):
    """An operation that failed. *unreachable*: the guest's agent cannot be reached at all
    (no such domain, not running, agent not connected), as opposed to a command that ran and
    failed."""

    def __init__(self, message: str, unreachable: bool = False, timed_out: bool = False):
        super().__init__(message)
        self.unreachable = unreachable
        self.timed_out = timed_out


# --- framing ---------------------------------------------------------------------------------
def frame(header: dict, payload: bytes = b"") -> bytes:
    body = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"%s %d %d\n" % (MAGIC, len(body), len(payload)) + body + payload


def unframe(data: bytes) -> tuple[dict, bytes]:
    """The header and payload of the first frame in *data*; text before it is skipped (a login
    script's greeting, a become plugin's success line)."""
    start = data.find(MAGIC + b" ")
    if start < 0:
        raise FrameError("no reply frame")
    end = data.find(b"\n", start, start + 64)
    if end < 0:
        raise FrameError("the reply frame has no length line")
    fields = data[start:end].split(b" ")
    if len(fields) != 3 or not all(f.isdigit() for f in fields[1:]):
        raise FrameError(f"the reply frame's length line is malformed: {data[start:end]!r}")
    hlen, plen = int(fields[1]), int(fields[2])
    if hlen > HEADER_MAX:
        raise FrameError(f"the reply frame's header is {hlen} bytes, more than {HEADER_MAX}")
    body = data[end + 1 :]
    if len(body) < hlen + plen:
        raise FrameError(
            f"the reply frame is cut short: {len(body)} of {hlen + plen} bytes arrived"
        )
    try:
        header = json.loads(body[:hlen])
    except ValueError as e:
        raise FrameError(f"the reply frame's header is not JSON: {e}") from None
    if not isinstance(header, dict):
        raise FrameError("the reply frame's header is not a JSON object")
    return header, body[hlen : hlen + plen]


def read_frame(stream) -> tuple[dict, bytes]:
    """One frame from a binary stream (the helper's stdin, after the bootstrap's part)."""
    line = stream.readline(64)
    fields = line.rstrip(b"\n").split(b" ")
    if len(fields) != 3 or fields[0] != MAGIC or not all(f.isdigit() for f in fields[1:]):
        raise FrameError(f"the request's length line is malformed: {line[:64]!r}")
    hlen, plen = int(fields[1]), int(fields[2])
    if hlen > HEADER_MAX:
        raise FrameError(f"the request's header is {hlen} bytes, more than {HEADER_MAX}")
    head = stream.read(hlen)
    payload = stream.read(plen)
    if len(head) != hlen or len(payload) != plen:
        raise FrameError("the request is cut short")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise FrameError("the request's header is not a JSON object")
    return header, payload


# --- transports ------------------------------------------------------------------------------
class LibvirtTransport:
    """The guest agent of a libvirt domain, through libvirt-python (one connection per call of
    the helper)."""

    name = "libvirt"
    chunk = WRITE_CHUNK
    poll_max = POLL_MAX

    def __init__(self, uri: str, domain: str, timeout: int):
        import libvirt  # only on hypervisors that have it
        import libvirt_qemu

        self._libvirt, self._qemu, self.timeout = libvirt, libvirt_qemu, timeout
        # libvirt prints every error on stderr as well as raising it: keep one copy.
        libvirt.registerErrorHandler(lambda *_: None, None)
        try:
            self._conn = libvirt.open(uri)
            self._dom = self._conn.lookupByName(domain)
        except libvirt.libvirtError as e:
            raise self._error(e) from None

    def _error(self, e) -> AgentError:
        lv = self._libvirt
        unreachable = {
            getattr(lv, n, None)
            for n in (
                "VIR_ERR_NO_DOMAIN",
                "VIR_ERR_OPERATION_INVALID",
                "VIR_ERR_AGENT_UNRESPONSIVE",
                "VIR_ERR_AGENT_UNSYNCED",
                "VIR_ERR_SYSTEM_ERROR",
                "VIR_ERR_NO_CONNECT",
                "VIR_ERR_OPERATION_TIMEOUT",
            )
        }
        return AgentError(str(e).strip(), unreachable=e.get_error_code() in unreachable)

    def command(self, execute: str, arguments: dict | None = None) -> object:
        message = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        try:
            reply = self._qemu.qemuAgentCommand(self._dom, json.dumps(message), self.timeout, 0)
        except self._libvirt.libvirtError as e:
            raise self._error(e) from None
        return json.loads(reply).get("return")

    def domain_xml(self) -> str:
        try:
            return self._dom.XMLDesc(0)
        except self._libvirt.libvirtError:
            return ""


class VirshTransport:
    """The same through ``virsh qemu-agent-command``, for hypervisors without libvirt-python."""

    name = "virsh"
    chunk = VIRSH_WRITE_CHUNK
    # Each poll is a virsh process: fewer of them.
    poll_max = VIRSH_POLL_MAX
    _UNREACHABLE = (
        "not responding",
        "not connected",
        "not running",
        "failed to get domain",
        "domain not found",
        "failed to connect",
        "timed out",
    )

    def __init__(self, uri: str, domain: str, timeout: int):
        self.uri, self.domain, self.timeout = uri, domain, timeout

    def _virsh(self, *args: str) -> subprocess.CompletedProcess:
        try:
            return subprocess.run(
                ["virsh", "-q", "-c", self.uri, *args],
                capture_output=True,
                timeout=self.timeout + 30,
                check=False,
            )
        except FileNotFoundError:
            raise AgentError(
                "neither libvirt-python nor virsh is installed on the hypervisor"
            ) from None
        except subprocess.TimeoutExpired:
            raise AgentError(f"virsh {args[0]} did not return", unreachable=True) from None

    def command(self, execute: str, arguments: dict | None = None) -> object:
        message = {"execute": execute}
        if arguments is not None:
            message["arguments"] = arguments
        proc = self._virsh(
            "qemu-agent-command", "--timeout", str(self.timeout), self.domain, json.dumps(message)
        )
        if proc.returncode != 0:
            text = proc.stderr.decode(errors="replace").strip()
            raise AgentError(text, unreachable=any(m in text.lower() for m in self._UNREACHABLE))
        return json.loads(proc.stdout).get("return")

    def domain_xml(self) -> str:
        proc = self._virsh("dumpxml", self.domain)
        return proc.stdout.decode(errors="replace") if proc.returncode == 0 else ""


def open_transport(request: dict):
    domain = str(request.get("domain", ""))
    if not _DOMAIN.match(domain):
        raise AgentError(f"{domain!r} is not a libvirt domain name")
    uri = str(request.get("uri") or "qemu:///system")
    timeout = int(request.get("agent_timeout") or 30)
    try:
        return LibvirtTransport(uri, domain, timeout)
    except ImportError:
        return VirshTransport(uri, domain, timeout)


def serial_logs(domain_xml: str) -> list[str]:
    """The files a domain's serial ports and consoles write to: where to look when its agent
    does not answer."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return []
    paths = []
    for dev in root.findall("./devices/serial") + root.findall("./devices/console"):
        source = dev.find("source")
        path = source.get("path") if source is not None else None
        if dev.get("type") == "file" and path and path not in paths:
            paths.append(path)
        log = dev.find("log")
        if log is not None and log.get("file") and log.get("file") not in paths:
            paths.append(log.get("file"))
    return paths


# --- operations ------------------------------------------------------------------------------
def poll_interval(elapsed: float, poll_max: float = POLL_MAX) -> float:
    """The pause before the next status poll of an exec that has run *elapsed* seconds: half
    the time run so far, from POLL_MIN up to *poll_max* (reached at 0.2 s through libvirt,
    0.5 s through virsh). A command that ends within a few ms is seen within a few ms; one
    that runs seconds costs 1 / *poll_max* polls a second, and is seen at most *poll_max*
    late."""
    return min(poll_max, max(POLL_MIN, elapsed * (POLL_GROWTH - 1)))


class Agent:
    """What the connection asks for, as guest agent commands over one transport."""

    # guest-exec-status only reads: it may be asked again when a TCG guest on a busy machine
    # misses one deadline. guest-exec itself is never repeated.
    STATUS_ATTEMPTS = 3

    def __init__(self, transport, clock=time.monotonic, sleep=time.sleep, budget=None):
        self.t, self.clock, self.sleep = transport, clock, sleep
        # The whole operation's deadline (handle() sets it): loops of agent commands stop
        # there whatever the guest answers.
        self.deadline = None if budget is None else clock() + budget

    def _in_time(self, what: str) -> None:
        if self.deadline is not None and self.clock() > self.deadline:
            raise AgentError(f"{what} took longer than this operation may take", timed_out=True)

    def _status(self, pid: int) -> dict:
        for attempt in range(1, self.STATUS_ATTEMPTS + 1):
            try:
                return self.t.command("guest-exec-status", {"pid": pid})
            except AgentError as e:
                if attempt == self.STATUS_ATTEMPTS or not e.unreachable:
                    raise
        raise AssertionError("unreachable")

    def spawn(self, argv: list[str], stdin: bytes = b"", capture: bool = False) -> int:
        arguments = {
            "path": argv[0],
            "arg": list(argv[1:]),
            "env": list(GUEST_ENV),
            "capture-output": capture,
        }
        if stdin:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        return int(self.t.command("guest-exec", arguments)["pid"])

    def wait(self, pid: int, timeout: float) -> dict:
        """guest-exec-status until the process exits; past *timeout* its tree is killed."""
        start = self.clock()
        while True:
            status = self._status(pid)
            if status.get("exited"):
                return status
            elapsed = self.clock() - start
            if elapsed >= timeout:
                self.kill(pid)
                raise AgentError(
                    f"the command ran longer than {timeout:g} s and was killed", timed_out=True
                )
            self.sleep(poll_interval(elapsed, getattr(self.t, "poll_max", POLL_MAX)))

    def kill(self, pid: int) -> None:
        """Kill the process tree of *pid* and reap it; gives up quietly after 30 s (a process
        in D state, an agent that never reports an exit)."""
        give_up = self.clock() + 30
        with contextlib.suppress(AgentError):
            pending = [pid, self.spawn(["/bin/sh", "-c", _KILL_SCRIPT, "sh", str(pid)])]
            while pending and self.clock() < give_up:
                pending = [p for p in pending if not self._status(p).get("exited")]
                if pending:
                    self.sleep(0.05)

    def exec_raw(self, argv: list[str], stdin: bytes = b"", timeout: float = 600) -> dict:
        """One guest-exec with its output in the agent's reply: only for the helper's own
        commands, whose output is a line."""
        status = self.wait(self.spawn(argv, stdin, capture=True), timeout)
        return {
            "rc": _exit_code(status),
            "out": base64.b64decode(status.get("out-data", "")),
            "err": base64.b64decode(status.get("err-data", "")),
        }

    def run(self, argv: list[str], stdin: bytes = b"", timeout: float = 3600) -> dict:
        """Run *argv* in the guest; rc, stdout, stderr (read from its work files in
        READ_CHUNK pieces, at most OUTPUT_MAX bytes)."""
        work = f"{STAGING}/{base64.b32encode(os.urandom(10)).decode().lower()}"
        if len(stdin) > self.t.chunk:
            # Too big for one agent command: to a work file first. The directory is made
            # (an exec) only when the file cannot be opened, the first time in a guest.
            stdin, staged = b"", stdin
            try:
                try:
                    handle = self._open(work + ".in", "w")
                except AgentError as e:
                    if e.unreachable:
                        raise
                    made = self.exec_raw(["/bin/sh", "-c", _MAKE_DIR])
                    if made["rc"] != 0:
                        raise AgentError(f"cannot make {STAGING} in the guest") from None
                    handle = self._open(work + ".in", "w")
                self.write_file(work + ".in", staged, mode="w", handle=handle)
            except AgentError:
                self._remove(work)
                raise
        script = _RUN_SCRIPT + 'exec "$@"'
        try:
            pid = self.spawn(["/bin/sh", "-c", script, work, *argv], stdin)
            status = self.wait(pid, timeout)
            rc = _exit_code(status)
            if rc == 125 and not self._exists(work + ".out"):
                raise AgentError(f"cannot write the work files {work}.* in the guest")
            out = self.read_file(work + ".out", 0, OUTPUT_MAX + 1)[0]
            err = self.read_file(work + ".err", 0, OUTPUT_MAX + 1 - len(out))[0]
            if len(out) + len(err) > OUTPUT_MAX:
                raise AgentError(
                    f"the command's output is more than the {OUTPUT_MAX} bytes this connection"
                    " carries; write it to a file and fetch that instead"
                )
        finally:
            self._remove(work)
        return {"rc": rc, "out": out, "err": err}

    def _exists(self, path: str) -> bool:
        try:
            self.t.command("guest-file-close", {"handle": self._open(path, "r")})
            return True
        except AgentError:
            return False

    def _open(self, path: str, mode: str) -> int:
        return int(self.t.command("guest-file-open", {"path": path, "mode": mode}))

    def _remove(self, work: str) -> None:
        with contextlib.suppress(AgentError):
            self.exec_raw(["/bin/rm", "-f", "--", work + ".in", work + ".out", work + ".err"])

    def write_file(self, path: str, data: bytes, mode: str, handle: int | None = None) -> None:
        if handle is None:
            handle = self._open(path, mode)
        try:
            view = memoryview(data)
            while view:
                self._in_time(f"writing {path}")
                piece = view[: self.t.chunk]
                count = self.t.command(
                    "guest-file-write",
                    {"handle": handle, "buf-b64": base64.b64encode(piece).decode()},
                )["count"]
                if count <= 0:
                    raise AgentError(f"the guest agent wrote nothing to {path}")
                view = view[count:]
        finally:
            self.t.command("guest-file-close", {"handle": handle})

    def read_file(
        self, path: str, offset: int, limit: int, sized: bool = False
    ) -> tuple[bytes, bool]:
        """Up to *limit* bytes of *path* from *offset*, and whether its end was reached. With
        *sized*, the end is the file's size when it was opened (a file that grows, or
        /dev/zero put in its place, ends there)."""
        handle = self._open(path, "r")
        parts, size, eof = [], 0, False
        try:
            if sized:
                end = int(
                    self.t.command(
                        "guest-file-seek", {"handle": handle, "offset": 0, "whence": "end"}
                    )["position"]
                )
                limit = max(0, min(limit, end - offset))
                eof = offset + limit >= end
            if offset or sized:
                self.t.command(
                    "guest-file-seek", {"handle": handle, "offset": offset, "whence": "set"}
                )
            while size < limit:
                self._in_time(f"reading {path}")
                reply = self.t.command(
                    "guest-file-read", {"handle": handle, "count": min(READ_CHUNK, limit - size)}
                )
                piece = base64.b64decode(reply.get("buf-b64", ""))
                parts.append(piece)
                size += len(piece)
                if reply.get("eof") or not piece:
                    eof = True
                    break
            if sized and size < limit:
                raise AgentError(f"{path} became shorter while it was read")
        finally:
            self.t.command("guest-file-close", {"handle": handle})
        return b"".join(parts), eof

    def sha256(self, path: str) -> str:
        result = self.exec_raw(["/bin/sh", "-c", 'sha256sum -- "$1"', "sh", path], timeout=600)
        digest = result["out"].split(b" ", 1)[0].decode(errors="replace")
        if result["rc"] != 0 or not re.fullmatch(r"[0-9a-f]{64}", digest):
            text = result["err"].decode(errors="replace").strip()
            raise AgentError(f"sha256sum {path} failed in the guest: {text[:ERROR_MAX]}")
        return digest


def _exit_code(status: dict) -> int:
    if "exitcode" in status:
        return int(status["exitcode"])
    return 128 + int(status.get("signal", 0))


def handle(request: dict, payload: bytes, transport) -> tuple[dict, bytes]:
    """One request: its reply header and payload."""
    op = request.get("op")
    timeout = float(request.get("timeout") or 3600)
    agent = Agent(transport, budget=(timeout if op == "exec" else 3600) + OP_SLACK)
    if op == "exec":
        result = agent.run(request["argv"], payload, timeout)
        out, err = result["out"], result["err"]
        reply = {"rc": result["rc"], "out": len(out)}
        return reply, out + err
    if op == "put":
        agent.write_file(request["path"], payload, "a" if request.get("offset") else "w")
        reply = {"written": len(payload)}
        if request.get("final"):
            reply["sha256"] = agent.sha256(request["path"])
        return reply, b""
    if op == "fetch":
        limit = min(int(request.get("limit") or SEGMENT), SEGMENT)
        offset = int(request.get("offset") or 0)
        data, eof = agent.read_file(request["path"], offset, limit, sized=True)
        reply = {"eof": eof}
        if eof:
            reply["sha256"] = agent.sha256(request["path"])
        return reply, data
    if op == "ping":
        transport.command("guest-ping")
        return {}, b""
    raise AgentError(f"unknown operation {op!r}")


def main(stdin, stdout) -> int:
    """Read one request, answer it: the entry point the bootstrap calls on the hypervisor."""
    transport = None
    try:
        request, payload = read_frame(stdin)
        transport = open_transport(request)
        reply, data = handle(request, payload, transport)
    except AgentError as e:
        reply, data = {"error": str(e)[:ERROR_MAX], "unreachable": e.unreachable}, b""
        if e.timed_out:
            reply["timed_out"] = True
        if e.unreachable:
            xml = transport.domain_xml() if transport is not None else ""
            reply["serial_logs"] = serial_logs(xml)
    except (FrameError, ValueError, KeyError, TypeError) as e:
        reply, data = {"error": f"bad request: {e}"[:ERROR_MAX], "unreachable": False}, b""
    except Exception as e:  # an agent's reply of an unexpected shape, an OS error: say so
        text = f"{type(e).__name__}: {e}"[:ERROR_MAX]
        reply, data = {"error": f"the helper failed: {text}", "unreachable": False}, b""
    reply["transport"] = getattr(transport, "name", None)
    stdout.write(frame(reply, data))
    stdout.flush()
    return 0
