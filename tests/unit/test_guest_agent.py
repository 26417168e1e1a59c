"""The guest_agent connection: the hypervisor's helper (plugins/module_utils/_guest_agent.py),
the controller's plugin (plugins/connection/guest_agent.py) and the runuser become plugin.

No guest is needed. FakeAgentTransport answers the QEMU guest agent commands the helper sends
by really running them on this machine (processes with subprocess.Popen, files with open), with
the helper's STAGING directory moved into the test's tmp_path, so the helper's shell scripts
(_RUN_SCRIPT, _KILL_SCRIPT, sha256sum) really run. It refuses what the real agent or libvirt
refuses: an input over the transport's chunk, a reply over libvirt's 10 MiB.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import io
import itertools
import json
import os
import pwd
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _guest_agent as ga

COLLECTIONS = Path(__file__).resolve().parents[2] / ".collections"

PLUGIN = "mv6.transition.guest_agent"
REAL_STAGING = "/var/lib/mv6-agent"
LIBVIRT_REPLY_MAX = 10 << 20
AgentError = ga.AgentError


# --- the fake guest agent ----------------------------------------------------------------------
class _Exec:
    """One guest-exec: the process and, when captured, its output (read by a thread, as
    qemu-ga does)."""

    def __init__(self, popen: subprocess.Popen, capture: bool, stdin: bytes | None):
        self.popen, self.capture = popen, capture
        self.out = self.err = b""
        self.thread = threading.Thread(target=self._communicate, args=(stdin,), daemon=True)
        self.thread.start()

    def _communicate(self, stdin):
        out, err = self.popen.communicate(stdin)
        self.out, self.err = out or b"", err or b""


class FakeAgentTransport:
    """The commands of the QEMU guest agent that the helper uses, run on this machine."""

    name = "fake"

    def __init__(self, helper=ga, chunk: int = ga.WRITE_CHUNK, xml: str = ""):
        # The helper's own AgentError: the plugin's tests load a second copy of the module.
        self.AgentError = helper.AgentError
        self.chunk = chunk
        self.xml = xml
        self.calls: list[tuple[str, dict | None]] = []
        # execute -> exceptions to raise, one per call, before answering normally again.
        self.faults: dict[str, list[Exception]] = {}
        # Most bytes one guest-file-write takes (the agent may write less than it is given).
        self.write_max: int | None = None
        self.execs: dict[int, _Exec] = {}
        self.spawned: list[int] = []
        self.files: dict[int, object] = {}
        self._next_handle = 1000

    # The transport interface.
    def command(self, execute: str, arguments: dict | None = None) -> object:
        self.calls.append((execute, arguments))
        text = json.dumps({"execute": execute, "arguments": arguments})
        # The helper must never reach the real staging directory from a test.
        assert REAL_STAGING not in text, f"{execute} touches {REAL_STAGING}: {text[:300]}"
        if self.faults.get(execute):
            raise self.faults[execute].pop(0)
        method = getattr(self, "_" + execute.replace("-", "_"))
        result = method(**{k.replace("-", "_"): v for k, v in (arguments or {}).items()})
        if len(json.dumps({"return": result})) > LIBVIRT_REPLY_MAX:
            raise self.AgentError("No complete agent response found in 10485760 bytes")
        return result

    def domain_xml(self) -> str:
        return self.xml

    # Bookkeeping for the tests.
    def error(self, message: str, unreachable: bool = False) -> Exception:
        return self.AgentError(message, unreachable=unreachable)

    def count(self, execute: str) -> int:
        return sum(1 for e, _args in self.calls if e == execute)

    def args_of(self, execute: str) -> list[dict]:
        return [a for e, a in self.calls if e == execute]

    def close(self):
        for ex in self.execs.values():
            with contextlib.suppress(OSError):
                ex.popen.kill()
            ex.thread.join(5)
        for f in self.files.values():
            f.close()

    # The agent's commands.
    def _guest_ping(self):
        return {}

    def _guest_exec(self, path, arg=(), env=(), input_data=None, capture_output=False):
        stdin = base64.b64decode(input_data) if input_data is not None else None
        if stdin is not None and len(stdin) > self.chunk:
            raise self.AgentError(f"guest-exec input of {len(stdin)} bytes, over {self.chunk}")
        pipe = subprocess.PIPE if capture_output else subprocess.DEVNULL
        popen = subprocess.Popen(
            [path, *arg],
            env=dict(e.split("=", 1) for e in env),
            cwd="/",
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=pipe,
            stderr=pipe,
        )
        self.execs[popen.pid] = _Exec(popen, capture_output, stdin)
        self.spawned.append(popen.pid)
        return {"pid": popen.pid}

    def _guest_exec_status(self, pid):
        ex = self.execs.get(pid)
        if ex is None:
            raise self.AgentError("Invalid parameter 'pid'")
        if ex.thread.is_alive():
            return {"exited": False}
        del self.execs[pid]  # qemu-ga forgets a process once it has reported its end
        rc = ex.popen.returncode
        status = {"exited": True, **({"exitcode": rc} if rc >= 0 else {"signal": -rc})}
        if ex.capture and ex.out:
            status["out-data"] = base64.b64encode(ex.out).decode()
        if ex.capture and ex.err:
            status["err-data"] = base64.b64encode(ex.err).decode()
        return status

    def _guest_file_open(self, path, mode="r"):
        try:
            f = open(path, mode if "b" in mode else mode + "b")  # noqa: SIM115
        except OSError as e:
            message = f"failed to open file '{path}' (mode: '{mode}'): {e.strerror}"
            raise self.AgentError(message) from None
        self._next_handle += 1
        self.files[self._next_handle] = f
        return self._next_handle

    def _file(self, handle):
        if handle not in self.files:
            raise self.AgentError(f"handle '{handle}' has not been found")
        return self.files[handle]

    def _guest_file_close(self, handle):
        self._file(handle).close()
        del self.files[handle]
        return {}

    def _guest_file_read(self, handle, count=4096):
        data = self._file(handle).read(count)
        return {
            "count": len(data),
            "buf-b64": base64.b64encode(data).decode(),
            "eof": len(data) < count,
        }

    def _guest_file_write(self, handle, buf_b64, count=None):
        data = base64.b64decode(buf_b64)
        if len(data) > self.chunk:
            raise self.AgentError(f"guest-file-write of {len(data)} bytes, over {self.chunk}")
        if self.write_max is not None:
            data = data[: self.write_max]
        f = self._file(handle)
        written = f.write(data)
        f.flush()
        return {"count": written, "eof": False}

    def _guest_file_seek(self, handle, offset, whence):
        whence = {"set": 0, "cur": 1, "end": 2}.get(whence, whence)
        position = self._file(handle).seek(offset, whence)
        return {"position": position, "eof": False}


def redirect_staging(monkeypatch, helper, path: Path) -> None:
    """The helper's STAGING (and the two scripts that name it) into *path*."""
    assert helper.STAGING == REAL_STAGING
    for name in ("_MAKE_DIR", "_RUN_SCRIPT"):
        text = getattr(helper, name)
        assert REAL_STAGING in text
        monkeypatch.setattr(helper, name, text.replace(REAL_STAGING, str(path)))
    monkeypatch.setattr(helper, "STAGING", str(path))


@pytest.fixture
def staging(tmp_path, monkeypatch):
    path = tmp_path / "mv6-agent"
    redirect_staging(monkeypatch, ga, path)
    return path


@pytest.fixture
def transport():
    t = FakeAgentTransport()
    yield t
    t.close()
    assert not t.files, f"guest files left open: {t.files}"


def gone(pid: int, within: float = 3.0) -> bool:
    """The process has ended (no such process, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + within
    while True:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# --- 1. framing --------------------------------------------------------------------------------
def test_frame_round_trip():
    header = {"op": "exec", "argv": ["/bin/sh", "-c", "echo é"], "timeout": 5}
    payload = bytes(range(256)) * 3
    data = ga.frame(header, payload)
    hline, rest = data.split(b"\n", 1)
    assert hline == b"MV6AGENT1 %d %d" % (len(rest) - len(payload), len(payload))
    assert ga.unframe(data) == (header, payload)
    assert ga.unframe(ga.frame({})) == ({}, b"")


@pytest.mark.parametrize(
    "noise",
    [
        b"Welcome to hv1!\nLast login: Mon Jan  1 00:00:00 2024 from 2001:db8::1\n",
        b"BECOME-SUCCESS-abcdefghijklmnopqrstuvwxyzabcdef\n",
        b"MV6AGENT1x not ours\n\x00\xff",
    ],
)
def test_unframe_skips_noise_before_the_frame(noise):
    data = noise + ga.frame({"rc": 0, "out": 2}, b"hi") + b"trailing junk"
    assert ga.unframe(data) == ({"rc": 0, "out": 2}, b"hi")


def test_payload_containing_magic_is_carried_whole():
    payload = b"x" + ga.frame({"nested": True}, b"MV6AGENT1 9 9\n") + b"MV6AGENT1 1 1\n"
    assert ga.unframe(ga.frame({"a": 1}, payload)) == ({"a": 1}, payload)
    stream = io.BytesIO(ga.frame({"a": 1}, payload))
    assert ga.read_frame(stream) == ({"a": 1}, payload)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "no reply frame"),
        (b"python3: not found\n", "no reply frame"),
        (b"MV6AGENT1 12 0", "has no length line"),
        (b"MV6AGENT1 " + b"1" * 80 + b"\n{}", "has no length line"),
        (b"MV6AGENT1 2\n{}", "length line is malformed"),
        (b"MV6AGENT1 2 x\n{}", "length line is malformed"),
        (b"MV6AGENT1 -2 0\n{}", "length line is malformed"),
        (b"MV6AGENT1 2 0 0\n{}", "length line is malformed"),
        (b"MV6AGENT1 %d 0\n{}" % (ga.HEADER_MAX + 1), "more than 1048576"),
        (b"MV6AGENT1 2 5\n{}abc", "cut short: 5 of 7 bytes arrived"),
        (ga.frame({"a": 1}, b"payload")[:-1], "cut short"),
        (b"MV6AGENT1 3 0\n{x}", "header is not JSON"),
        (b"MV6AGENT1 2 0\n[]", "header is not a JSON object"),
        (b"MV6AGENT1 4 0\nnull", "header is not a JSON object"),
    ],
)
def test_unframe_errors(data, message):
    with pytest.raises(ga.FrameError) as e:
        ga.unframe(data)
    assert message in str(e.value)


def test_read_frame_reads_consecutive_frames_from_a_stream():
    stream = io.BytesIO(ga.frame({"n": 1}, b"one") + ga.frame({"n": 2}, b"\ntwo\n") + b"rest")
    assert ga.read_frame(stream) == ({"n": 1}, b"one")
    assert ga.read_frame(stream) == ({"n": 2}, b"\ntwo\n")
    assert stream.read() == b"rest"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "length line is malformed"),
        (b"banner\n" + ga.frame({}), "length line is malformed"),
        (b"MV6AGENT2 2 0\n{}", "length line is malformed"),
        (b"MV6AGENT1 2 zero\n{}", "length line is malformed"),
        (b"MV6AGENT1 %d 0\n" % (ga.HEADER_MAX + 1), "more than 1048576"),
        (b"MV6AGENT1 2 5\n{}abc", "cut short"),
        (b"MV6AGENT1 9 0\n{}", "cut short"),
        (b"MV6AGENT1 2 0\n[]", "not a JSON object"),
    ],
)
def test_read_frame_errors(data, message):
    with pytest.raises(ga.FrameError) as e:
        ga.read_frame(io.BytesIO(data))
    assert message in str(e.value)


# --- 2. the helper's operations over the fake agent --------------------------------------------
def run_op(t, request, payload=b""):
    return ga.handle(request, payload, t)


def test_exec_rc_stdout_stderr(staging, transport):
    reply, data = run_op(
        transport,
        {"op": "exec", "argv": ["/bin/sh", "-c", 'echo out; echo "$HOME $USER" >&2; exit 3']},
    )
    assert reply == {"rc": 3, "out": 4}
    assert data == b"out\n/root root\n"
    # The work directory was made for root alone, and is empty again.
    assert staging.stat().st_mode & 0o777 == 0o700
    assert list(staging.iterdir()) == []
    # The command's output came from the work files, not from the agent's reply.
    run = transport.args_of("guest-exec")[0]
    assert run["capture-output"] is False
    assert run["env"] == ga.GUEST_ENV


def test_exec_killed_by_a_signal_is_128_plus_signal(staging, transport):
    reply, _data = run_op(transport, {"op": "exec", "argv": ["/bin/sh", "-c", "kill -TERM $$"]})
    assert reply["rc"] == 128 + 15


def test_exec_stdin_inline(staging, transport):
    stdin = b"line one\nline two\n"
    reply, data = run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, stdin)
    assert (reply, data) == ({"rc": 0, "out": len(stdin)}, stdin)
    run = transport.args_of("guest-exec")[0]
    assert base64.b64decode(run["input-data"]) == stdin
    assert transport.count("guest-file-write") == 0
    assert list(staging.iterdir()) == []


def test_exec_stdin_bigger_than_chunk_is_staged_through_a_file(staging, transport):
    transport.chunk = 4096
    stdin = os.urandom(3 * 4096 + 17)
    reply, data = run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, stdin)
    assert reply == {"rc": 0, "out": len(stdin)}
    assert data == stdin
    writes = transport.args_of("guest-file-write")
    assert [len(base64.b64decode(w["buf-b64"])) for w in writes] == [4096, 4096, 4096, 17]
    assert transport.args_of("guest-file-open")[0]["path"].endswith(".in")
    assert all("input-data" not in a for a in transport.args_of("guest-exec"))
    assert list(staging.iterdir()) == []


def test_exec_stdin_exactly_chunk_goes_inline(staging, transport):
    transport.chunk = 4096
    stdin = b"s" * 4096
    _reply, data = run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, stdin)
    assert data == stdin
    assert transport.count("guest-file-write") == 0


def test_agent_short_writes_are_continued(staging, transport):
    transport.chunk, transport.write_max = 4096, 1000
    stdin = os.urandom(9000)
    _reply, data = run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, stdin)
    assert data == stdin


def test_agent_writing_nothing_is_an_error_and_leaves_no_work_file(staging, transport):
    transport.chunk, transport.write_max = 4096, 0
    with pytest.raises(AgentError, match=r"wrote nothing to .*\.in"):
        run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, b"z" * 5000)
    assert list(staging.iterdir()) == []


def test_staged_stdin_write_failure_leaves_no_work_file(staging, transport):
    transport.chunk = 4096
    transport.faults["guest-file-write"] = [AgentError("No space left on device")]
    with pytest.raises(AgentError, match="No space left on device"):
        run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, b"z" * 5000)
    assert transport.count("guest-exec") == 2  # mkdir, then rm: the command never ran
    assert list(staging.iterdir()) == []


def test_output_bigger_than_read_chunk_is_read_back_whole(staging, transport):
    size = 2 * ga.READ_CHUNK + ga.READ_CHUNK // 2
    reply, data = run_op(
        transport,
        {"op": "exec", "argv": ["/bin/sh", "-c", f"yes abcdefg | head -c {size}; echo e >&2"]},
    )
    expected = (b"abcdefg\n" * (size // 8 + 1))[:size]
    assert reply == {"rc": 0, "out": size}
    assert data[:size] == expected
    assert data[size:] == b"e\n"
    counts = [a["count"] for a in transport.args_of("guest-file-read")]
    assert max(counts) <= ga.READ_CHUNK
    assert len(counts) >= 4  # three pieces of stdout at least, and stderr
    assert list(staging.iterdir()) == []


@pytest.mark.parametrize(
    ("script", "ok"),
    [
        ("head -c 1500 /dev/zero", False),
        ("head -c 600 /dev/zero; head -c 600 /dev/zero >&2", False),
        ("head -c 1001 /dev/zero >&2", False),
        ("head -c 400 /dev/zero; head -c 600 /dev/zero >&2", True),
    ],
)
def test_output_over_output_max_is_refused(staging, transport, monkeypatch, script, ok):
    monkeypatch.setattr(ga, "OUTPUT_MAX", 1000)
    request = {"op": "exec", "argv": ["/bin/sh", "-c", script]}
    if ok:
        reply, data = run_op(transport, request)
        assert (reply["out"], len(data)) == (400, 1000)
    else:
        with pytest.raises(AgentError) as e:
            run_op(transport, request)
        assert "more than the 1000 bytes this connection carries" in str(e.value)
        assert "fetch" in str(e.value)
    assert list(staging.iterdir()) == []


def test_failed_command_still_removes_work_files(staging, transport):
    reply, data = run_op(transport, {"op": "exec", "argv": ["/nonexistent/program"]})
    assert reply["rc"] == 127
    assert b"/nonexistent/program" in data
    assert list(staging.iterdir()) == []


def test_staging_that_cannot_be_made_is_reported(tmp_path, monkeypatch, transport):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the directory should be")
    redirect_staging(monkeypatch, ga, blocked)
    with pytest.raises(AgentError, match=r"cannot write the work files .*not-a-dir/"):
        run_op(transport, {"op": "exec", "argv": ["/bin/true"]})
    transport.chunk = 16
    with pytest.raises(AgentError, match=r"cannot make .*not-a-dir in the guest"):
        run_op(transport, {"op": "exec", "argv": ["/bin/cat"]}, b"x" * 17)


def test_a_command_exiting_125_is_not_a_staging_failure(staging, transport):
    reply, _data = run_op(transport, {"op": "exec", "argv": ["/bin/sh", "-c", "exit 125"]})
    assert reply["rc"] == 125


def test_exec_timeout_kills_the_whole_tree(staging, transport, monkeypatch, tmp_path):
    child_file, parent_file = tmp_path / "child", tmp_path / "parent"
    script = f"sleep 30 & echo $! >{child_file}; echo $$ >{parent_file}; wait"
    request = {"op": "exec", "argv": ["/bin/sh", "-c", script], "timeout": 0.5}
    monkeypatch.setattr(ga, "open_transport", lambda _request: transport)
    out = io.BytesIO()
    child = None
    start = time.monotonic()
    try:
        assert ga.main(io.BytesIO(ga.frame(request)), out) == 0
        elapsed = time.monotonic() - start
        reply, data = ga.unframe(out.getvalue())
        child, parent = int(child_file.read_text()), int(parent_file.read_text())
        assert reply["timed_out"] is True
        assert reply["unreachable"] is False
        assert "serial_logs" not in reply
        assert reply["error"] == "the command ran longer than 0.5 s and was killed"
        assert data == b""
        assert parent == transport.spawned[0]  # the exec itself
        assert gone(parent), "the exec's shell outlived its timeout"
        assert gone(child), "the exec's background child outlived its timeout"
        assert elapsed < 5
        assert list(staging.iterdir()) == []
    finally:
        if child is not None:
            with contextlib.suppress(OSError):
                os.kill(child, 9)


def test_put_in_segments_with_final_sha256(tmp_path, transport):
    path = tmp_path / "dest"
    path.write_bytes(b"old content that must go")
    reply, data = run_op(transport, {"op": "put", "path": str(path), "offset": 0}, b"abc")
    assert (reply, data) == ({"written": 3}, b"")
    assert path.read_bytes() == b"abc"
    reply, _data = run_op(transport, {"op": "put", "path": str(path), "offset": 3}, b"def")
    assert reply == {"written": 3}
    reply, _data = run_op(
        transport, {"op": "put", "path": str(path), "offset": 6, "final": True}, b"g" * 9000
    )
    content = b"abcdef" + b"g" * 9000
    assert path.read_bytes() == content
    assert reply == {"written": 9000, "sha256": hashlib.sha256(content).hexdigest()}
    assert [a["mode"] for a in transport.args_of("guest-file-open")] == ["w", "a", "a"]


def test_put_pieces_respect_the_chunk(tmp_path, transport):
    transport.chunk = 1000
    path = tmp_path / "dest"
    payload = os.urandom(2500)
    reply, _data = run_op(
        transport, {"op": "put", "path": str(path), "offset": 0, "final": True}, payload
    )
    assert path.read_bytes() == payload
    assert reply["sha256"] == hashlib.sha256(payload).hexdigest()
    assert transport.count("guest-file-write") == 3


def test_put_empty_file(tmp_path, transport):
    path = tmp_path / "empty"
    reply, _data = run_op(transport, {"op": "put", "path": str(path), "offset": 0, "final": True})
    assert path.read_bytes() == b""
    assert reply == {"written": 0, "sha256": hashlib.sha256(b"").hexdigest()}


def test_fetch_offset_limit_eof_sha256(tmp_path, transport):
    path = tmp_path / "src"
    content = b"0123456789"
    path.write_bytes(content)
    fetch = {"op": "fetch", "path": str(path)}
    assert run_op(transport, {**fetch, "offset": 0, "limit": 4}) == ({"eof": False}, b"0123")
    assert run_op(transport, {**fetch, "offset": 4, "limit": 4}) == ({"eof": False}, b"4567")
    digest = hashlib.sha256(content).hexdigest()
    assert run_op(transport, {**fetch, "offset": 8, "limit": 4}) == (
        {"eof": True, "sha256": digest},
        b"89",
    )
    # A segment that ends exactly at the end of the file (its size when the read began) is the
    # last; one past the end is empty and the last too.
    assert run_op(transport, {**fetch, "offset": 6, "limit": 4}) == (
        {"eof": True, "sha256": digest},
        b"6789",
    )
    assert run_op(transport, {**fetch, "offset": 10, "limit": 4}) == (
        {"eof": True, "sha256": digest},
        b"",
    )
    seeks = [s for s in transport.args_of("guest-file-seek") if s["whence"] == "set"]
    assert [s["offset"] for s in seeks] == [0, 4, 8, 6, 10]


def test_fetch_limit_is_bounded_by_segment(tmp_path, transport, monkeypatch):
    monkeypatch.setattr(ga, "SEGMENT", 3)
    path = tmp_path / "src"
    path.write_bytes(b"abcdefgh")
    assert run_op(transport, {"op": "fetch", "path": str(path), "limit": 100}) == (
        {"eof": False},
        b"abc",
    )
    assert run_op(transport, {"op": "fetch", "path": str(path), "offset": 3}) == (
        {"eof": False},
        b"def",
    )


def test_fetch_big_file_reads_in_read_chunks(tmp_path, transport):
    path = tmp_path / "src"
    content = os.urandom(ga.READ_CHUNK * 2 + 5)
    path.write_bytes(content)
    reply, data = run_op(transport, {"op": "fetch", "path": str(path)})
    assert data == content
    assert reply == {"eof": True, "sha256": hashlib.sha256(content).hexdigest()}
    assert [a["count"] for a in transport.args_of("guest-file-read")] == [
        ga.READ_CHUNK,
        ga.READ_CHUNK,
        5,
    ]


def test_fetch_missing_file(tmp_path, transport):
    with pytest.raises(AgentError, match="No such file or directory"):
        run_op(transport, {"op": "fetch", "path": str(tmp_path / "missing")})


def test_sha256_failure_names_the_path_and_the_error(tmp_path, transport):
    with pytest.raises(AgentError) as e:
        ga.Agent(transport).sha256(str(tmp_path))
    assert f"sha256sum {tmp_path} failed in the guest:" in str(e.value)
    assert "Is a directory" in str(e.value)


def test_sha256_of_a_name_starting_with_a_dash(tmp_path, transport, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-n").write_bytes(b"dash")
    # The agent's cwd is /, so the relative name is looked up there: it is missing, and the
    # name is still not taken for an option of sha256sum.
    with pytest.raises(AgentError, match="-n: No such file"):
        ga.Agent(transport).sha256("-n")


def unreachable(n):
    return [AgentError("Guest agent is not responding", unreachable=True) for _i in range(n)]


def test_status_retried_on_unreachable(transport):
    transport.faults["guest-exec-status"] = unreachable(ga.Agent.STATUS_ATTEMPTS - 1)
    result = ga.Agent(transport).exec_raw(["/bin/echo", "hello"])
    assert result == {"rc": 0, "out": b"hello\n", "err": b""}
    assert transport.faults["guest-exec-status"] == []
    assert transport.count("guest-exec") == 1  # guest-exec itself is never repeated


def test_status_gives_up_after_status_attempts(transport):
    assert ga.Agent.STATUS_ATTEMPTS == 3
    transport.faults["guest-exec-status"] = unreachable(ga.Agent.STATUS_ATTEMPTS)
    with pytest.raises(AgentError) as e:
        ga.Agent(transport).exec_raw(["/bin/true"])
    assert e.value.unreachable
    assert transport.count("guest-exec-status") == ga.Agent.STATUS_ATTEMPTS
    assert transport.count("guest-exec") == 1


def test_status_not_retried_on_other_errors(transport):
    transport.faults["guest-exec-status"] = [AgentError("Invalid parameter 'pid'")]
    with pytest.raises(AgentError, match="Invalid parameter") as e:
        ga.Agent(transport).exec_raw(["/bin/true"])
    assert not e.value.unreachable
    assert transport.count("guest-exec-status") == 1


@pytest.mark.parametrize("poll_max", [ga.POLL_MAX, ga.VIRSH_POLL_MAX])
def test_status_polls_back_off_to_a_bound(poll_max):
    """An exec that runs 10 s costs a few polls a second, not the 20-200 a second that fixed
    5-50 ms pauses cost (each one work for libvirtd and the guest's agent); a short one is
    seen within a few ms."""
    assert ga.poll_interval(0.0, poll_max) == ga.POLL_MIN
    now = [0.0]
    polls = []

    class Clocked:
        name = "clocked"

        def command(self, execute, arguments=None):
            if execute == "guest-exec":
                return {"pid": 7}
            polls.append(now[0])
            return {"exited": now[0] >= 10.0, "exitcode": 0}

    def sleep(seconds):
        now[0] += seconds

    Clocked.poll_max = poll_max
    ga.Agent(Clocked(), clock=lambda: now[0], sleep=sleep).wait(7, timeout=60)
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(gaps)), gaps
    assert max(gaps) == pytest.approx(poll_max)
    assert polls[-1] - 10.0 <= poll_max  # seen at most one bound late
    assert len(polls) <= 10.0 / poll_max + 20, len(polls)


def test_virsh_polls_are_further_apart_than_libvirt_ones():
    assert ga.VirshTransport.poll_max > ga.LibvirtTransport.poll_max == ga.POLL_MAX


def test_ping(transport):
    assert run_op(transport, {"op": "ping"}) == ({}, b"")
    assert transport.calls == [("guest-ping", None)]


def test_unknown_op(transport):
    with pytest.raises(AgentError, match="unknown operation 'frobnicate'"):
        run_op(transport, {"op": "frobnicate"})
    assert transport.calls == []


SERIAL_XML = """<domain type='kvm'>
  <name>web6</name>
  <devices>
    <disk type='file'><source file='/srv/guests/web6/session.qcow2'/></disk>
    <serial type='file'>
      <source path='/var/log/libvirt/qemu/web6-serial0.log'/>
      <target port='0'/>
    </serial>
    <serial type='pty'>
      <source path='/dev/pts/3'/>
      <log file='/var/log/libvirt/qemu/web6-pty.log' append='on'/>
      <target port='1'/>
    </serial>
    <console type='pty' tty='/dev/pts/3'>
      <source path='/dev/pts/3'/>
      <log file='/var/log/libvirt/qemu/web6-pty.log'/>
    </console>
    <console type='file'><source path='/var/log/libvirt/qemu/web6-console.log'/></console>
  </devices>
</domain>"""


def main_reply(transport, request, payload=b"", monkeypatch=None):
    monkeypatch.setattr(ga, "open_transport", lambda _request: transport)
    out = io.BytesIO()
    assert ga.main(io.BytesIO(ga.frame(request, payload)), out) == 0
    return ga.unframe(out.getvalue())


def test_main_unreachable_reply_names_the_serial_logs(transport, monkeypatch):
    transport.xml = SERIAL_XML
    transport.faults["guest-ping"] = [AgentError("Guest agent is not connected", unreachable=True)]
    reply, data = main_reply(transport, {"op": "ping", "domain": "web6"}, monkeypatch=monkeypatch)
    assert data == b""
    assert reply == {
        "error": "Guest agent is not connected",
        "unreachable": True,
        "serial_logs": [
            "/var/log/libvirt/qemu/web6-serial0.log",
            "/var/log/libvirt/qemu/web6-pty.log",
            "/var/log/libvirt/qemu/web6-console.log",
        ],
        "transport": "fake",
    }


def test_main_other_agent_error_is_not_unreachable(transport, monkeypatch):
    transport.xml = SERIAL_XML
    reply, _data = main_reply(transport, {"op": "nope"}, monkeypatch=monkeypatch)
    assert reply == {"error": "unknown operation 'nope'", "unreachable": False, "transport": "fake"}


def test_main_success_reply_carries_transport_and_payload(transport, monkeypatch, tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"data")
    reply, data = main_reply(transport, {"op": "fetch", "path": str(path)}, monkeypatch=monkeypatch)
    assert data == b"data"
    assert reply["transport"] == "fake"
    assert reply["eof"] is True


@pytest.mark.parametrize(
    ("stdin", "message"),
    [
        (b"garbage\n", "bad request: the request's length line is malformed"),
        (b"MV6AGENT1 3 0\n{x}", "bad request: "),
        (b"MV6AGENT1 2 0\n[]", "bad request: the request's header is not a JSON object"),
        (ga.frame({"op": "exec"}), "bad request: 'argv'"),
    ],
)
def test_main_bad_request(stdin, message, transport, monkeypatch):
    monkeypatch.setattr(ga, "open_transport", lambda _request: transport)
    out = io.BytesIO()
    assert ga.main(io.BytesIO(stdin), out) == 0
    reply, _data = ga.unframe(out.getvalue())
    assert reply["error"].startswith(message)
    assert reply["unreachable"] is False


@pytest.mark.parametrize("domain", ["", "../etc/passwd", "web 6", "-web6", "web6;id", "a" * 129])
def test_main_refuses_a_bad_domain_name(domain):
    out = io.BytesIO()
    ga.main(io.BytesIO(ga.frame({"op": "ping", "domain": domain})), out)
    reply, _data = ga.unframe(out.getvalue())
    assert reply == {
        "error": f"{domain!r} is not a libvirt domain name",
        "unreachable": False,
        "transport": None,
    }


def test_bootstrap_runs_the_helper_in_a_fresh_python():
    """The real bootstrap in a real python3: the file as sent, then one request."""
    source = Path(ga.__file__).read_bytes()
    stdin = b"%d\n" % len(source) + source + ga.frame({"op": "ping", "domain": "bad/name"})
    proc = subprocess.run(
        [sys.executable, "-c", ga.BOOTSTRAP], input=stdin, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    reply, _data = ga.unframe(proc.stdout)
    assert reply["error"] == "'bad/name' is not a libvirt domain name"


def test_open_transport_falls_back_to_virsh(monkeypatch):
    monkeypatch.setitem(sys.modules, "libvirt", None)  # a hypervisor without libvirt-python
    t = ga.open_transport({"domain": "web6", "uri": "qemu:///session", "agent_timeout": 7})
    assert isinstance(t, ga.VirshTransport)
    assert (t.uri, t.domain, t.timeout, t.chunk) == ("qemu:///session", "web6", 7, 64 << 10)
    t = ga.open_transport({"domain": "web6"})
    assert (t.uri, t.timeout) == ("qemu:///system", 30)


FAKE_VIRSH = """#!/bin/sh
printf '%s\\n' "$@" >>"$0.log"; echo --- >>"$0.log"
case "$*" in
  *dumpxml*) cat "$0.xml" 2>/dev/null || { echo "error: failed to get domain" >&2; exit 1; } ;;
  *) if [ -e "$0.reply" ]; then cat "$0.reply"; else cat "$0.err" >&2; exit 1; fi ;;
esac
"""


def fake_virsh(tmp_path, monkeypatch, reply=None, err="", xml=None):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    virsh = bindir / "virsh"
    virsh.write_text(FAKE_VIRSH)
    virsh.chmod(0o755)
    if reply is not None:
        (bindir / "virsh.reply").write_text(json.dumps(reply))
    (bindir / "virsh.err").write_text(err)
    if xml is not None:
        (bindir / "virsh.xml").write_text(xml)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    return bindir / "virsh.log"


def virsh_calls(log: Path) -> list[list[str]]:
    calls, current = [], []
    for line in log.read_text().splitlines():
        if line == "---":
            calls.append(current)
            current = []
        else:
            current.append(line)
    return calls


def test_virsh_transport_command(tmp_path, monkeypatch):
    log = fake_virsh(tmp_path, monkeypatch, reply={"return": {"pid": 42}})
    t = ga.VirshTransport("qemu:///session", "web6", 9)
    assert t.command("guest-exec", {"path": "/bin/true"}) == {"pid": 42}
    [call] = virsh_calls(log)
    assert call[:7] == [
        "-q",
        "-c",
        "qemu:///session",
        "qemu-agent-command",
        "--timeout",
        "9",
        "web6",
    ]
    assert json.loads(call[7]) == {"execute": "guest-exec", "arguments": {"path": "/bin/true"}}


@pytest.mark.parametrize(
    ("err", "unreachable"),
    [
        ("error: Guest agent is not responding: QEMU guest agent is not connected", True),
        ("error: failed to get domain 'web6'", True),
        ("error: Requested operation is not valid: domain is not running", True),
        (
            "error: internal error: unable to execute QEMU agent command 'guest-file-open':"
            " failed to open file '/x': No such file or directory",
            False,
        ),
    ],
)
def test_virsh_transport_errors(tmp_path, monkeypatch, err, unreachable):
    fake_virsh(tmp_path, monkeypatch, err=err)
    with pytest.raises(AgentError) as e:
        ga.VirshTransport("qemu:///system", "web6", 5).command("guest-ping")
    assert str(e.value) == err
    assert e.value.unreachable is unreachable


def test_virsh_transport_without_virsh(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AgentError, match="neither libvirt-python nor virsh") as e:
        ga.VirshTransport("qemu:///system", "web6", 5).command("guest-ping")
    assert not e.value.unreachable


def test_virsh_transport_domain_xml(tmp_path, monkeypatch):
    fake_virsh(tmp_path, monkeypatch, xml=SERIAL_XML)
    assert ga.VirshTransport("qemu:///system", "web6", 5).domain_xml() == SERIAL_XML
    shutil.rmtree(tmp_path / "bin")
    fake_virsh(tmp_path, monkeypatch)
    assert ga.VirshTransport("qemu:///system", "web6", 5).domain_xml() == ""


needs_libvirt = pytest.mark.skipif(
    importlib.util.find_spec("libvirt") is None, reason="no libvirt-python here"
)


@needs_libvirt
def test_libvirt_transport_no_such_domain_is_unreachable(capfd):
    with pytest.raises(AgentError, match="Domain not found") as e:
        ga.LibvirtTransport("test:///default", "no-such-guest", 5)
    assert e.value.unreachable
    assert "libvirt:" not in capfd.readouterr().err  # reported once, not printed as well


@needs_libvirt
def test_libvirt_transport_command_error_and_domain_xml():
    # libvirt's test driver has a domain "test" and no guest agent commands at all.
    t = ga.LibvirtTransport("test:///default", "test", 5)
    assert (t.name, t.chunk, t.timeout) == ("libvirt", ga.WRITE_CHUNK, 5)
    with pytest.raises(AgentError, match="not supported") as e:
        t.command("guest-ping")
    assert not e.value.unreachable
    assert "<name>test</name>" in t.domain_xml()


# --- 3. serial_logs ----------------------------------------------------------------------------
def test_serial_logs_sample_domain():
    assert ga.serial_logs(SERIAL_XML) == [
        "/var/log/libvirt/qemu/web6-serial0.log",
        "/var/log/libvirt/qemu/web6-pty.log",
        "/var/log/libvirt/qemu/web6-console.log",
    ]


@pytest.mark.parametrize(
    "xml",
    [
        "",
        "<domain><devices>",
        "not xml at all",
        "<domain><name>web6</name></domain>",
        "<domain><devices><serial type='pty'><source path='/dev/pts/1'/></serial>"
        "</devices></domain>",
        "<domain><devices><serial type='file'/></devices></domain>",
    ],
)
def test_serial_logs_none(xml):
    assert ga.serial_logs(xml) == []


def test_serial_logs_console_log_only():
    xml = (
        "<domain><devices><console type='pty'><log file='/var/log/c.log'/></console>"
        "</devices></domain>"
    )
    assert ga.serial_logs(xml) == ["/var/log/c.log"]


# --- 4. the connection plugin ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ansible_env():
    """Ansible's collection loader, with the collection under .collections, for this module's
    tests only: the plain imports the other test files made are put back afterwards."""
    from ansible.utils.collection_loader._collection_finder import _AnsibleCollectionFinder

    def ours():
        return [
            m
            for m in sys.modules
            if m == "ansible_collections" or m.startswith("ansible_collections.")
        ]

    saved = {m: sys.modules.pop(m) for m in ours()}
    from ansible.parsing.dataloader import DataLoader
    from ansible.playbook.play_context import PlayContext
    from ansible.plugins.loader import (
        become_loader,
        connection_loader,
        get_shell_plugin,
        init_plugin_loader,
    )
    from ansible.template import Templar

    init_plugin_loader([str(COLLECTIONS)])
    try:
        probe = connection_loader.get(PLUGIN, PlayContext())
        assert probe is not None, f"{PLUGIN} does not load"
        module = sys.modules[type(probe).__module__]
        from ansible import errors

        yield SimpleNamespace(
            module=module,
            helper=module.helper,
            connection_loader=connection_loader,
            become_loader=become_loader,
            get_shell_plugin=get_shell_plugin,
            PlayContext=PlayContext,
            templar=Templar(loader=DataLoader()),
            errors=errors,
        )
    finally:
        _AnsibleCollectionFinder._remove()
        for m in ours():
            del sys.modules[m]
        sys.modules.update(saved)


def guest(env, hostvars=None, name="web6", **guest_vars):
    """The guest's connection as the task executor makes it: loaded, then its options from the
    guest's variables."""
    if hostvars is None:
        hostvars = {"hv1": {"ansible_connection": "local"}}
    conn = env.connection_loader.get(PLUGIN, env.PlayContext())
    variables = {
        "inventory_hostname": name,
        "mv6_guest_hypervisor": "hv1",
        "hostvars": hostvars,
        **guest_vars,
    }
    conn.set_options(var_options=conn._resolve_option_variables(variables, env.templar))
    return conn


class FakeVia:
    """The hypervisor's connection, answering in this process: it reads the helper and the
    request the plugin sends, and runs the helper's main() on them with a FakeAgentTransport."""

    def __init__(self, helper, transport, shell, monkeypatch):
        self.helper, self.transport, self._shell = helper, transport, shell
        self.commands: list[str] = []
        self.requests: list[dict] = []
        self.after = None  # called with each request once it is answered
        self.closed = False
        monkeypatch.setattr(helper, "open_transport", self._open)

    def _open(self, request):
        self.requests.append(request)
        return self.transport

    def exec_command(self, cmd, in_data=None, sudoable=True):
        self.commands.append(cmd)
        stream = io.BytesIO(in_data)
        source = stream.read(int(stream.readline()))
        assert source == Path(self.helper.__file__).read_bytes()
        out = io.BytesIO()
        self.helper.main(stream, out)
        assert stream.read() == b""  # the request was all of it
        if self.after is not None:
            self.after(self.requests[-1])
        return 0, out.getvalue(), b""

    def close(self):
        self.closed = True


@pytest.fixture
def via(ansible_env, monkeypatch, tmp_path):
    redirect_staging(monkeypatch, ansible_env.helper, tmp_path / "mv6-agent")
    transport = FakeAgentTransport(ansible_env.helper)
    conn = guest(ansible_env)
    conn._connect()
    real = conn._via
    fake = FakeVia(ansible_env.helper, transport, real._shell, monkeypatch)
    conn._via = fake
    yield SimpleNamespace(conn=conn, fake=fake, transport=transport, staging=tmp_path / "mv6-agent")
    transport.close()
    real.close()


def test_plugin_loads_with_its_options(ansible_env):
    conn = guest(ansible_env)
    assert conn.transport == PLUGIN
    assert conn.has_pipelining is True
    assert conn.get_option("remote_addr") == "web6"
    assert conn.get_option("hypervisor") == "hv1"
    assert conn.get_option("libvirt_uri") == "qemu:///system"
    assert conn.get_option("agent_timeout") == 30
    assert conn.get_option("exec_timeout") == 3600
    assert conn.get_option("pipelining") is True
    assert conn._hv_vars == {"ansible_connection": "local"}


def fail_message(conn, reply, kind):
    with pytest.raises(kind) as e:
        conn._fail(reply)
    return e.value


def test_fail_unreachable_names_guest_hypervisor_and_serial_logs(ansible_env):
    errors = ansible_env.errors
    conn = guest(ansible_env, mv6_guest_serial_log="/var/log/mv6/web6.serial")
    reply = {
        "error": "Guest agent is not connected",
        "unreachable": True,
        "serial_logs": ["/var/log/libvirt/qemu/web6.log", "/var/log/mv6/web6.serial"],
    }
    e = fail_message(conn, reply, errors.AnsibleConnectionFailure)
    text = str(e)
    assert "guest web6 on hypervisor hv1" in text
    assert "Guest agent is not connected" in text
    assert "its serial log on hv1: /var/log/mv6/web6.serial, /var/log/libvirt/qemu/web6.log" in text
    assert text.count("/var/log/mv6/web6.serial") == 1

    conn = guest(ansible_env)
    e = fail_message(conn, {"error": "x", "unreachable": True}, errors.AnsibleConnectionFailure)
    assert "libvirt names no serial log file for it" in str(e)
    e = fail_message(
        conn,
        {"error": "x", "unreachable": True, "serial_logs": ["/l"]},
        errors.AnsibleConnectionFailure,
    )
    assert "its serial log on hv1: /l" in str(e)


def test_fail_timed_out_mentions_exec_timeout(ansible_env):
    errors = ansible_env.errors
    conn = guest(ansible_env, mv6_guest_agent_exec_timeout=42)
    reply = {"error": "the command ran longer than 42 s and was killed", "unreachable": False}
    reply["timed_out"] = True
    e = fail_message(conn, reply, errors.AnsibleError)
    assert not isinstance(e, errors.AnsibleConnectionFailure)
    assert "guest web6 on hypervisor hv1: the command ran longer than 42 s" in str(e)
    assert "exec_timeout, mv6_guest_agent_exec_timeout: 42" in str(e)


def test_fail_other_error(ansible_env):
    errors = ansible_env.errors
    e = fail_message(
        guest(ansible_env), {"error": "boom", "unreachable": False}, errors.AnsibleError
    )
    assert not isinstance(e, errors.AnsibleConnectionFailure)
    assert str(e) == "guest web6 on hypervisor hv1: boom"


@pytest.mark.parametrize("name", ["mv6.transition.guest_agent", "guest_agent"])
def test_hypervisor_reached_with_this_plugin_is_refused(ansible_env, name):
    conn = guest(ansible_env, {"hv1": {"ansible_connection": name}})
    with pytest.raises(ansible_env.errors.AnsibleError) as e:
        conn._connect()
    assert f"the hypervisor 'hv1' of guest 'web6' is itself reached with {name}" in str(e.value)
    assert conn._via is None


def test_hypervisor_missing_from_hostvars(ansible_env):
    with pytest.raises(ansible_env.errors.AnsibleError) as e:
        guest(ansible_env, {"other": {}})
    assert "mv6_guest_hypervisor: 'hv1' of guest 'web6' is not a host of the inventory" in str(
        e.value
    )


def inventory_hostvars(tmp_path, hosts: dict):
    """hostvars as the task executor passes them: ansible's HostVars over a real inventory."""
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.vars.hostvars import HostVars
    from ansible.vars.manager import VariableManager

    source = tmp_path / "hosts.yml"
    source.write_text(json.dumps({"all": {"hosts": hosts}}))
    loader = DataLoader()
    inventory = InventoryManager(loader=loader, sources=[str(source)])
    manager = VariableManager(loader=loader, inventory=inventory)
    return HostVars(inventory=inventory, variable_manager=manager, loader=loader)


def test_hypervisor_from_real_hostvars(ansible_env, tmp_path):
    hostvars = inventory_hostvars(
        tmp_path, {"web6": {}, "hv1": {"ansible_connection": "local", "ansible_port": 2222}}
    )
    conn = guest(ansible_env, hostvars)
    assert conn._hv_get("ansible_port") == 2222
    assert conn._hv_get("ansible_user") is None
    conn._connect()
    try:
        assert conn._via.transport == "local"
    finally:
        conn.close()


def test_hypervisor_missing_from_real_hostvars(ansible_env, tmp_path):
    hostvars = inventory_hostvars(tmp_path, {"web6": {}, "hv1": {"ansible_connection": "local"}})
    variables = {"inventory_hostname": "web6", "mv6_guest_hypervisor": "hv9", "hostvars": hostvars}
    conn = ansible_env.connection_loader.get(PLUGIN, ansible_env.PlayContext())
    with pytest.raises(ansible_env.errors.AnsibleError) as e:
        conn.set_options(var_options=conn._resolve_option_variables(variables, ansible_env.templar))
        conn._connect()
    assert "mv6_guest_hypervisor: 'hv9' of guest 'web6' is not a host of the inventory" in str(
        e.value
    )


def test_hypervisor_unknown_connection_or_become(ansible_env):
    errors = ansible_env.errors
    conn = guest(ansible_env, {"hv1": {"ansible_connection": "no_such_plugin"}})
    with pytest.raises(errors.AnsibleError, match="no connection plugin 'no_such_plugin'"):
        conn._connect()
    hv = {"ansible_connection": "local", "ansible_become": True, "ansible_become_method": "nope"}
    conn = guest(ansible_env, {"hv1": hv})
    with pytest.raises(errors.AnsibleError, match="no become plugin 'nope'"):
        conn._connect()


def test_hypervisor_default_connection_is_ssh(ansible_env):
    conn = guest(ansible_env, {"hv1": {}})
    assert conn._hv_connection_name() == "ssh"
    conn = guest(ansible_env, {"hv1": {"ansible_connection": "smart"}})
    assert conn._hv_connection_name() == "ssh"


@pytest.mark.parametrize(
    ("hv", "guest_vars", "python"),
    [
        ({}, {}, "/usr/bin/python3"),
        ({"ansible_python_interpreter": "auto_silent"}, {}, "/usr/bin/python3"),
        ({"ansible_python_interpreter": "/opt/py/bin/python3"}, {}, "/opt/py/bin/python3"),
        (
            {"ansible_python_interpreter": "/opt/py/bin/python3"},
            {"mv6_guest_agent_hypervisor_python": "/usr/local/bin/python3.12"},
            "/usr/local/bin/python3.12",
        ),
    ],
)
def test_hypervisor_python(ansible_env, hv, guest_vars, python):
    conn = guest(ansible_env, {"hv1": {"ansible_connection": "local", **hv}}, **guest_vars)
    assert conn._hv_python() == python


def test_exec_command_through_the_helper(via):
    rc, out, err = via.conn.exec_command("echo out; echo err >&2; exit 3")
    assert (rc, out, err) == (3, b"out\n", b"err\n")
    [request] = via.fake.requests
    assert request == {
        "op": "exec",
        "argv": ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        "timeout": 3600,
        "domain": "web6",
        "uri": "qemu:///system",
        "agent_timeout": 30,
    }
    [cmd] = via.fake.commands
    assert shlex.split(cmd) == ["/usr/bin/python3", "-c", ga.BOOTSTRAP]
    assert list(via.staging.iterdir()) == []


def test_exec_command_with_stdin(via):
    via.transport.chunk = 4096
    small, big = b"module source\n", os.urandom(10000)
    assert via.conn.exec_command("cat", in_data=small) == (0, small, b"")
    assert via.conn.exec_command("cat", in_data=big) == (0, big, b"")
    assert via.transport.count("guest-file-write") == 3
    assert list(via.staging.iterdir()) == []


def test_exec_command_errors_from_the_helper(via, ansible_env):
    failure = via.transport.error("Guest agent is not connected", unreachable=True)
    via.transport.faults["guest-exec"] = [failure]
    via.transport.xml = SERIAL_XML
    with pytest.raises(ansible_env.errors.AnsibleConnectionFailure) as e:
        via.conn.exec_command("true")
    assert "the QEMU guest agent does not answer (Guest agent is not connected)" in str(e.value)
    assert "/var/log/libvirt/qemu/web6-serial0.log" in str(e.value)


def test_exec_command_timeout_through_the_plugin(via, ansible_env):
    conn = guest(ansible_env, mv6_guest_agent_exec_timeout=1)
    conn._connect()
    conn._via.close()
    conn._via = via.fake
    with pytest.raises(ansible_env.errors.AnsibleError) as e:
        conn.exec_command("sleep 20")
    assert not isinstance(e.value, ansible_env.errors.AnsibleConnectionFailure)
    assert "ran longer than 1 s and was killed" in str(e.value)
    assert "mv6_guest_agent_exec_timeout: 1" in str(e.value)
    assert gone(via.transport.spawned[0])


def test_helper_gave_no_frame(via, ansible_env):
    via.fake.exec_command = lambda cmd, in_data=None, sudoable=True: (
        127,
        b"",
        b"sh: 1: python3: not found\n",
    )
    with pytest.raises(ansible_env.errors.AnsibleConnectionFailure) as e:
        via.conn.exec_command("true")
    text = str(e.value)
    assert "guest web6: the guest agent helper on hypervisor hv1 gave no reply" in text
    assert "no reply frame; exit code 127" in text
    assert text.endswith("sh: 1: python3: not found")


def test_helper_gave_a_cut_frame(via, ansible_env):
    framed = ga.frame({"rc": 0, "out": 5}, b"hello")
    via.fake.exec_command = lambda cmd, in_data=None, sudoable=True: (1, framed[:-2], b"")
    with pytest.raises(ansible_env.errors.AnsibleConnectionFailure) as e:
        via.conn.exec_command("true")
    assert "cut short" in str(e.value)
    assert "no error output" in str(e.value)


def test_put_file_in_segments(via, ansible_env, monkeypatch, tmp_path):
    monkeypatch.setattr(ansible_env.helper, "SEGMENT", 4)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(b"0123456789")
    dest.write_bytes(b"old content, longer than the new one")
    via.conn.put_file(str(src), str(dest))
    assert dest.read_bytes() == b"0123456789"
    reqs = [(r["offset"], r["final"]) for r in via.fake.requests]
    assert reqs == [(0, False), (4, False), (8, True)]
    assert [a["mode"] for a in via.transport.args_of("guest-file-open")] == ["w", "a", "a"]


def test_put_file_exact_multiple_and_empty(via, ansible_env, monkeypatch, tmp_path):
    monkeypatch.setattr(ansible_env.helper, "SEGMENT", 4)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(b"01234567")
    via.conn.put_file(str(src), str(dest))
    assert dest.read_bytes() == b"01234567"
    assert [r["final"] for r in via.fake.requests] == [False, True]
    src.write_bytes(b"")
    via.conn.put_file(str(src), str(dest))
    assert dest.read_bytes() == b""


def test_put_file_missing_source(via, ansible_env, tmp_path):
    with pytest.raises(ansible_env.errors.AnsibleFileNotFound):
        via.conn.put_file(str(tmp_path / "missing"), str(tmp_path / "dest"))
    assert via.fake.requests == []


def test_put_file_mismatch(via, ansible_env, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(b"abc")
    # Something in the guest changes the file before the checksum: the helper's put and its
    # sha256 are one call, so the change goes into the agent's file writes.
    real_write = via.transport._guest_file_write

    def write_and_spoil(handle, buf_b64, count=None):
        result = real_write(handle, buf_b64)
        via.transport.files[handle].write(b"!")
        return result

    via.transport._guest_file_write = write_and_spoil
    with pytest.raises(ansible_env.errors.AnsibleError) as e:
        via.conn.put_file(str(src), str(dest))
    assert f"{dest} does not match {src} after the copy" in str(e.value)
    assert hashlib.sha256(b"abc").hexdigest() in str(e.value)


class Looping(Exception):
    """The plugin kept calling the helper: a test's way out of an endless loop."""


def test_put_file_of_a_source_that_shrinks_ends(via, ansible_env, monkeypatch, tmp_path):
    # Segments bigger than the reader's buffer, so that each is read from the file then.
    monkeypatch.setattr(ansible_env.helper, "SEGMENT", 4 * io.DEFAULT_BUFFER_SIZE)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(os.urandom(10 * io.DEFAULT_BUFFER_SIZE))

    def truncate_after_first(request):
        if len(via.fake.requests) == 1:
            src.write_bytes(b"01")  # a log rotated under the copy, say
        if len(via.fake.requests) > 10:
            raise Looping(f"{len(via.fake.requests)} put calls for a file of 3 segments")

    via.fake.after = truncate_after_first
    with pytest.raises(ansible_env.errors.AnsibleError):
        via.conn.put_file(str(src), str(dest))


def test_fetch_file_in_segments(via, ansible_env, monkeypatch, tmp_path):
    monkeypatch.setattr(ansible_env.helper, "SEGMENT", 4)
    src, dest = tmp_path / "src", tmp_path / "dest"
    content = b"0123456789"
    src.write_bytes(content)
    via.conn.fetch_file(str(src), str(dest))
    assert dest.read_bytes() == content
    assert [r["offset"] for r in via.fake.requests] == [0, 4, 8]
    assert not Path(str(dest) + ".mv6-partial").exists()


def test_fetch_file_big(via, tmp_path):
    src, dest = tmp_path / "src", tmp_path / "dest"
    content = os.urandom(ga.READ_CHUNK + 100)
    src.write_bytes(content)
    via.conn.fetch_file(str(src), str(dest))
    assert dest.read_bytes() == content


def test_fetch_file_sha256_mismatch_leaves_no_partial_file(via, ansible_env, monkeypatch, tmp_path):
    monkeypatch.setattr(ansible_env.helper, "SEGMENT", 4)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(b"0123456789")
    dest.write_bytes(b"the previous copy")

    def change_after_first(request):
        if request["offset"] == 0:
            src.write_bytes(b"XXXX456789")

    via.fake.after = change_after_first
    with pytest.raises(ansible_env.errors.AnsibleError) as e:
        via.conn.fetch_file(str(src), str(dest))
    assert f"{src} changed while it was fetched or was damaged" in str(e.value)
    assert not Path(str(dest) + ".mv6-partial").exists()
    assert dest.read_bytes() == b"the previous copy"


def test_fetch_file_error_midway_leaves_no_partial_file(via, ansible_env, monkeypatch, tmp_path):
    monkeypatch.setattr(ansible_env.helper, "SEGMENT", 4)
    src, dest = tmp_path / "src", tmp_path / "dest"
    src.write_bytes(b"0123456789")

    def remove_after_first(request):
        src.unlink(missing_ok=True)

    via.fake.after = remove_after_first
    with pytest.raises(ansible_env.errors.AnsibleError, match="No such file or directory"):
        via.conn.fetch_file(str(src), str(dest))
    assert not dest.exists()
    assert not Path(str(dest) + ".mv6-partial").exists()


def test_close_closes_the_hypervisor_connection(via):
    via.conn.close()
    assert via.fake.closed
    assert via.conn._via is None
    assert not via.conn.connected


def test_hypervisor_become_wraps_the_helper_command(via, ansible_env):
    hv = {"ansible_connection": "local", "ansible_become": True, "ansible_become_method": "sudo"}
    conn = guest(ansible_env, {"hv1": hv})
    conn._connect()
    conn._via.close()
    via.fake._shell = ansible_env.get_shell_plugin(executable="/bin/sh")
    conn._via = via.fake
    assert conn.exec_command("echo hi") == (0, b"hi\n", b"")
    words = shlex.split(via.fake.commands[-1])
    assert words[0] == "sudo"
    assert words[-3:-1] == ["/bin/sh", "-c"]
    assert "BECOME-SUCCESS-" in words[-1]
    assert f"/usr/bin/python3 -c {shlex.quote(ga.BOOTSTRAP)}" in words[-1]


# End to end: the real local connection and the real helper in a real python. No guest agent,
# so the answers are the helper's own errors (a fake virsh in PATH says the domain's agent is
# not there).
def test_end_to_end_unreachable_through_local_and_virsh(ansible_env, tmp_path, monkeypatch):
    # A hypervisor's python without libvirt-python: no site packages.
    python = tmp_path / "python3"
    python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    python.chmod(0o755)
    log = fake_virsh(
        tmp_path,
        monkeypatch,
        err="error: Guest agent is not responding: QEMU guest agent is not connected",
        xml=SERIAL_XML,
    )
    conn = guest(
        ansible_env,
        mv6_guest_agent_hypervisor_python=str(python),
        mv6_guest_agent_libvirt_uri="qemu:///session",
        mv6_guest_agent_command_timeout=7,
    )
    try:
        with pytest.raises(ansible_env.errors.AnsibleConnectionFailure) as e:
            conn.exec_command("true")
    finally:
        conn.close()
    text = str(e.value)
    assert "guest web6 on hypervisor hv1: the QEMU guest agent does not answer" in text
    assert "QEMU guest agent is not connected" in text
    assert "its serial log on hv1: /var/log/libvirt/qemu/web6-serial0.log" in text
    calls = virsh_calls(log)
    first = calls[0]
    assert first[:7] == [
        "-q",
        "-c",
        "qemu:///session",
        "qemu-agent-command",
        "--timeout",
        "7",
        "web6",
    ]
    message = json.loads(first[7])
    assert message["execute"] == "guest-exec"
    assert message["arguments"]["arg"][-3:] == ["/bin/sh", "-c", "true"]
    assert calls[-1] == ["-q", "-c", "qemu:///session", "dumpxml", "web6"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"), reason="runuser works from root only"
)
def test_end_to_end_hypervisor_become_runuser_output_before_the_frame(ansible_env, monkeypatch):
    hv = {
        "ansible_connection": "local",
        "ansible_become": True,
        "ansible_become_method": "mv6.transition.runuser",
        "ansible_become_user": "root",
        # Keep the become plugin's success line in the output: the reply comes after it.
        "ansible_local_become_strip_preamble": False,
    }
    conn = guest(
        ansible_env, {"hv1": hv}, name="bad/guest", mv6_guest_agent_hypervisor_python=sys.executable
    )
    conn._connect()
    seen = []
    real_exec = conn._via.exec_command

    def spy(*args, **kwargs):
        seen.append(real_exec(*args, **kwargs))
        return seen[-1]

    monkeypatch.setattr(conn._via, "exec_command", spy)
    try:
        with pytest.raises(ansible_env.errors.AnsibleError) as e:
            conn.exec_command("true")
    finally:
        conn.close()
    assert str(e.value) == (
        "guest bad/guest on hypervisor hv1: 'bad/guest' is not a libvirt domain name"
    )
    [(rc, out, _err)] = seen
    assert rc == 0
    assert out.startswith(b"BECOME-SUCCESS-")


# --- 5. the runuser become plugin --------------------------------------------------------------
def runuser(env, **options):
    become = env.become_loader.get("mv6.transition.runuser")
    become.set_options(direct=options)
    return become


def test_runuser_command_form(ansible_env):
    become = runuser(ansible_env, become_user="app")
    shell = ansible_env.get_shell_plugin(executable="/bin/sh")
    cmd = become.build_become_command("echo 'hi there'", shell)
    assert become.success.startswith("BECOME-SUCCESS-")
    assert shlex.split(cmd) == [
        "runuser",
        "-u",
        "app",
        "--",
        "/bin/sh",
        "-c",
        f"echo {become.success} ; echo 'hi there'",
    ]
    assert cmd.startswith("runuser -u app -- /bin/sh -c '")


@pytest.mark.parametrize("user", ["o'brien", "a b", "$(id)", "-x", "x;y"])
def test_runuser_quotes_odd_user_names(ansible_env, user):
    become = runuser(ansible_env, become_user=user)
    cmd = become.build_become_command("id", ansible_env.get_shell_plugin(executable="/bin/sh"))
    words = shlex.split(cmd)
    assert words[:4] == ["runuser", "-u", user, "--"]
    assert words[4:6] == ["/bin/sh", "-c"]


def test_runuser_flags_exe_and_default_user(ansible_env):
    become = runuser(ansible_env, become_flags="-g wheel", become_exe="/usr/sbin/runuser")
    cmd = become.build_become_command("id", ansible_env.get_shell_plugin(executable="/bin/sh"))
    assert shlex.split(cmd)[:6] == ["/usr/sbin/runuser", "-g", "wheel", "-u", "root", "--"]


def test_runuser_empty_command_and_pipelining(ansible_env):
    become = runuser(ansible_env, become_user="app")
    shell = ansible_env.get_shell_plugin(executable="/bin/sh")
    assert become.build_become_command("", shell) == ""
    assert become.pipelining is True
    assert type(become).pipelining is True
    assert become.name == "mv6.transition.runuser"


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("runuser"), reason="runuser works from root only"
)
def test_runuser_command_really_runs(ansible_env):
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user nobody")
    become = runuser(ansible_env, become_user="nobody")
    cmd = become.build_become_command("id -un", ansible_env.get_shell_plugin(executable="/bin/sh"))
    proc = subprocess.run(["/bin/sh", "-c", cmd], capture_output=True, check=False, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().splitlines() == [become.success, "nobody"]
    assert become.check_success(proc.stdout)
