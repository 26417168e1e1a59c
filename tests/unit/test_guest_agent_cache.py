"""with_module_cache (plugins/module_utils/_guest_agent.py), for real: the preamble the
guest_agent connection puts before a pipelined AnsiballZ module, run by subprocesses of this
Python with its cache directory (MODULE_CACHE_DIR) moved into the test's tmp_path.

The fake module is a script that carries AnsiballZ's mark and imports a small package from a
zip the way AnsiballZ does: the zip on sys.path, zipimport compiling each source. The last
tests run a real ansible-core AnsiballZ payload (ansible.builtin.ping) through the preamble.
Whether the cache was read is shown by poisoning an entry with the code of another source:
the preamble trusts its cache as it is, which is why the cache must be root's alone.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import marshal
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _guest_agent as ga

TAG = sys.implementation.cache_tag
PKG = "mv6pkg"
INIT_SOURCE = b'"""A package imported from a zip."""\n'
# A module whose code objects nest two deep (a function in a function, a method in a class
# body, a lambda in a list comprehension), so that every level's co_filename is seen.
MOD_SOURCE = textwrap.dedent(
    """\
    import sys

    VALUE = "from-source"
    MODULE_FILE = sys._getframe().f_code.co_filename


    def outer():
        def inner():
            raise ValueError("raised in inner")

        return inner


    class Boom:
        def method(self):
            raise RuntimeError("raised in method")


    LAMBDAS = [lambda: n for n in range(2)]
    """
).encode()
# The fake AnsiballZ module: the mark, a future import on top as ansible-core's has, the zip
# (sys.argv[1]) put first on sys.path, a report of what it imported on stdout.
FAKE_MODULE = b"""#!/usr/bin/python3
from __future__ import annotations

import datetime

_ANSIBALLZ_WRAPPER = True

import json
import sys
import traceback


def _report(zip_path: str) -> dict:
    sys.path.insert(0, zip_path)
    from mv6pkg import mod

    tracebacks = {}
    for name, call in (("inner", mod.outer()), ("method", mod.Boom().method)):
        try:
            call()
        except Exception as e:
            tracebacks[name] = {
                "files": [f.filename for f in traceback.extract_tb(e.__traceback__)],
                "text": traceback.format_exc(),
            }
    return {
        "name": __name__,
        "value": mod.VALUE,
        "loader": type(mod.__loader__).__name__,
        "code_files": sorted(
            {
                mod.MODULE_FILE,
                mod.outer.__code__.co_filename,
                mod.outer().__code__.co_filename,
                mod.Boom.method.__code__.co_filename,
                mod.LAMBDAS[0].__code__.co_filename,
            }
        ),
        "tracebacks": tracebacks,
    }


if __name__ == "__main__":
    print(json.dumps(_report(sys.argv[1])))
"""


# --- helpers -----------------------------------------------------------------------------------
def key(source: bytes, optimize: int = 0) -> str:
    """The cache entry's name for *source*, as the preamble computes it."""
    return hashlib.sha256(b"%d:" % optimize + source).hexdigest()


def make_zip(path: Path, mod_source: bytes = MOD_SOURCE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{PKG}/__init__.py", INIT_SOURCE)
        z.writestr(f"{PKG}/mod.py", mod_source)
    return path


def wrap(program: bytes, cache: Path) -> bytes:
    """with_module_cache(program), its cache directory moved to *cache*: the directory's repr
    is replaced once in the produced bytes, where the preamble (which comes first) holds it."""
    wrapped = ga.with_module_cache(program)
    old = repr(ga.MODULE_CACHE_DIR).encode()
    preamble = ga._MODULE_PREAMBLE.encode()
    assert wrapped.startswith(preamble)
    assert preamble.count(old) == 1
    moved = wrapped.replace(old, repr(str(cache)).encode(), 1)
    assert old not in moved[: len(preamble) + 200]
    return moved


def clean_env() -> dict:
    """This environment without PYTHON* variables: the child's flags (optimize) are the
    defaults the cache keys assume. The venv's own compile cache (scripts/venv_module_cache.py)
    is off in the child, so that only the cache under test is between zipimport and the
    compiler."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["MV6_VENV_MODULE_CACHE"] = "0"
    return env


def run(program: bytes, *args: str, python: str = sys.executable, **kwargs):
    proc = subprocess.run(
        [python, "-", *args],
        input=program,
        capture_output=True,
        env=kwargs.pop("env", None) or clean_env(),
        timeout=120,
        check=False,
        **kwargs,
    )
    return proc


def report(proc) -> dict:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stderr == b"", proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def entries(cache: Path, tag: str = TAG) -> dict[str, tuple[int, int, int]]:
    """Each file of the cache: (inode, size, mtime), to see whether a run wrote any."""
    root = cache / tag
    if not root.is_dir():
        return {}
    return {
        p.name: (p.stat().st_ino, p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.iterdir())
    }


def code_of(source: bytes, filename: str = "x") -> object:
    return compile(source, filename, "exec", dont_inherit=True)


def poison(entry: Path, source: bytes, filename: str) -> None:
    entry.write_bytes(marshal.dumps(code_of(source, filename)))


FROM_CACHE = MOD_SOURCE.replace(b'"from-source"', b'"from-cache"')


@pytest.fixture
def site(tmp_path):
    """A zip, a cache directory (not made yet) and the fake module wrapped to use it."""
    zip_path = make_zip(tmp_path / "run1" / "ansible_payload.zip")
    cache = tmp_path / "cache"
    return zip_path, cache, wrap(FAKE_MODULE, cache)


def mod_path(zip_path: Path) -> str:
    return f"{zip_path}/{PKG}/mod.py"


# --- the cache ---------------------------------------------------------------------------------
def test_first_run_compiles_and_fills_a_cache_only_its_owner_may_enter(site):
    zip_path, cache, program = site
    out = report(run(program, str(zip_path)))
    assert out["value"] == "from-source"
    assert out["loader"] == "zipimporter"
    assert out["code_files"] == [mod_path(zip_path)]
    root = cache / TAG
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    # One entry per source imported from the zip, named by its key; no temporary file left.
    assert set(entries(cache)) == {key(INIT_SOURCE), key(MOD_SOURCE)}
    for source, name in ((INIT_SOURCE, "__init__.py"), (MOD_SOURCE, "mod.py")):
        code = marshal.loads((root / key(source)).read_bytes())
        assert code == code_of(source)
        assert code.co_filename == f"{zip_path}/{PKG}/{name}"


def test_second_run_gives_the_same_result_and_writes_nothing(site):
    zip_path, cache, program = site
    first = report(run(program, str(zip_path)))
    before = entries(cache)
    second = report(run(program, str(zip_path)))
    assert second == first
    assert entries(cache) == before
    assert len(before) == 2


def test_second_run_uses_the_cached_code_as_it_finds_it(site):
    """The proof that the cache is read, and the trust model: an entry holding the code of
    another source is run as the module. Only its owner (root in the guest, 0700) may write
    there."""
    zip_path, cache, program = site
    report(run(program, str(zip_path)))
    poison(cache / TAG / key(MOD_SOURCE), FROM_CACHE, mod_path(zip_path))
    out = report(run(program, str(zip_path)))
    assert out["value"] == "from-cache"


def test_cached_code_names_the_new_zip_path_nested_code_included(site, tmp_path):
    """AnsiballZ extracts its zip to a new temporary directory at every task: the code from
    the cache (compiled for the old path) names the new one, at every nesting level."""
    zip_path, cache, program = site
    report(run(program, str(zip_path)))
    old = mod_path(zip_path)
    # The entry, as a first run from the old zip wrote it, made recognisable.
    poison(cache / TAG / key(MOD_SOURCE), FROM_CACHE, old)
    new_zip = make_zip(tmp_path / "run2" / "ansible_payload.zip")
    proc = run(program, str(new_zip))
    out = report(proc)
    assert out["value"] == "from-cache"  # from the cache, not compiled again
    new = mod_path(new_zip)
    assert out["code_files"] == [new]
    for name in ("inner", "method"):
        frames = [f for f in out["tracebacks"][name]["files"] if PKG in f]
        assert frames == [new], out["tracebacks"][name]
        assert f'File "{new}"' in out["tracebacks"][name]["text"]
    assert str(zip_path) not in proc.stdout.decode()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xffgarbage\x00" * 10, id="garbage"),
        pytest.param(marshal.dumps(42), id="not-code"),
        pytest.param(marshal.dumps(code_of(MOD_SOURCE))[:40], id="truncated"),
    ],
)
def test_a_corrupt_entry_is_compiled_again_and_replaced(site, content):
    zip_path, cache, program = site
    report(run(program, str(zip_path)))
    entry = cache / TAG / key(MOD_SOURCE)
    entry.write_bytes(content)
    out = report(run(program, str(zip_path)))
    assert out["value"] == "from-source"
    assert out["code_files"] == [mod_path(zip_path)]
    assert marshal.loads(entry.read_bytes()) == code_of(MOD_SOURCE)
    assert set(entries(cache)) == {key(INIT_SOURCE), key(MOD_SOURCE)}


@pytest.mark.parametrize("where", ["is-a-file", "under-a-file"])
def test_a_cache_that_cannot_be_made_falls_back_silently(tmp_path, where):
    zip_path = make_zip(tmp_path / "z" / "ansible_payload.zip")
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a directory")
    cache = blocker if where == "is-a-file" else blocker / "cache"
    out = report(run(wrap(FAKE_MODULE, cache), str(zip_path)))
    assert out["value"] == "from-source"
    assert out["code_files"] == [mod_path(zip_path)]
    assert blocker.read_bytes() == b"not a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "z"]


def _unprivileged_python() -> tuple[str, int, int] | None:
    """A Python that the nobody user may run, and nobody's uid and gid (when this is root)."""
    if os.geteuid() != 0:
        return None
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        return None
    for python in (sys.executable, sys._base_executable, "/usr/bin/python3"):
        try:
            proc = subprocess.run(
                [python, "-c", "print(1)"],
                capture_output=True,
                user=user.pw_uid,
                group=user.pw_gid,
                extra_groups=[],
                cwd="/",
                timeout=30,
                check=False,
            )
        except OSError:
            continue
        if proc.returncode == 0:
            return python, user.pw_uid, user.pw_gid
    return None


def test_under_become_to_another_user_the_cache_is_neither_read_nor_written():
    """A task with become (runuser -u USER) runs the module as USER: root's cache directory
    (0700) is closed to it, so the module compiles as usual, quietly, and the cache stays as
    it was. Shown with a poisoned entry that the unprivileged run must not use."""
    found = _unprivileged_python()
    if found is None:
        pytest.skip("needs root and a Python the nobody user may run")
    python, uid, gid = found
    tag = subprocess.run(
        [python, "-c", "import sys; print(sys.implementation.cache_tag)"],
        capture_output=True,
        check=True,
        text=True,
    ).stdout.strip()
    # Not under tmp_path: pytest's base directory is root's only. Here only the cache's own
    # directory (made by the preamble, 0700) keeps nobody out.
    base = Path(tempfile.mkdtemp(prefix="mv6-cache-test-"))
    try:
        base.chmod(0o755)
        zip_path = make_zip(base / "z" / "ansible_payload.zip")
        cache = base / "cache"
        program = wrap(FAKE_MODULE, cache)
        assert report(run(program, str(zip_path), python=python))["value"] == "from-source"
        assert stat.S_IMODE((cache / tag).stat().st_mode) == 0o700
        poison(cache / tag / key(MOD_SOURCE), FROM_CACHE, mod_path(zip_path))
        before = entries(cache, tag)
        proc = run(
            program,
            str(zip_path),
            python=python,
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"},
        )
        assert report(proc)["value"] == "from-source"
        assert entries(cache, tag) == before
        # And root's next run still finds it: the unprivileged run broke nothing.
        assert report(run(program, str(zip_path), python=python))["value"] == "from-cache"
    finally:
        shutil.rmtree(base)


def test_a_failed_write_leaves_no_temporary_file(site):
    zip_path, cache, program = site
    report(run(program, str(zip_path)))
    entry = cache / TAG / key(MOD_SOURCE)
    entry.unlink()
    entry.mkdir()  # open() of it fails, then os.replace() onto it fails
    for _i in range(2):
        assert report(run(program, str(zip_path)))["value"] == "from-source"
    assert set(entries(cache)) == {key(INIT_SOURCE), key(MOD_SOURCE)}


def test_a_cache_directory_others_may_write_is_not_trusted(site):
    zip_path, cache, program = site
    (cache / TAG).mkdir(parents=True)
    (cache / TAG).chmod(0o777)
    poison(cache / TAG / key(MOD_SOURCE), FROM_CACHE, mod_path(zip_path))
    assert report(run(program, str(zip_path)))["value"] == "from-source"


# --- the wrapping ------------------------------------------------------------------------------
@pytest.mark.parametrize("future", [True, False], ids=["future-annotations", "plain"])
def test_the_module_keeps_its_own_future_imports(tmp_path, future):
    """The module is compiled on its own (dont_inherit): a future import on its first line
    still works, and none leaks into a module without one."""
    program = (
        b"#!/usr/bin/python3\n"
        + (b"from __future__ import annotations\n" if future else b"")
        + b"_ANSIBALLZ_WRAPPER = True\n"
        b"def f(x: int) -> str: ...\n"
        b"print(repr(f.__annotations__))\n"
    )
    wrapped = wrap(program, tmp_path / "cache")
    assert wrapped != program
    proc = run(wrapped)
    assert proc.returncode == 0, proc.stderr.decode()
    expected = (
        "{'x': 'int', 'return': 'str'}"
        if future
        else "{'x': <class 'int'>, 'return': <class 'str'>}"
    )
    assert proc.stdout.decode().strip() == expected
    assert proc.stdout == run(program).stdout


def test_the_wrapped_module_runs_as_main_like_the_plain_one(tmp_path):
    program = textwrap.dedent(
        """\
        #!/usr/bin/python3
        _ANSIBALLZ_WRAPPER = True
        import json, sys
        main = False
        if __name__ == "__main__":
            main = True
        print(json.dumps({"name": __name__, "main": main, "argv": sys.argv,
                          "file": "__file__" in globals(), "path0": sys.path[0]}))
        sys.exit(7)
        """
    ).encode()
    wrapped = wrap(program, tmp_path / "cache")
    got, plain = run(wrapped, "arg1"), run(program, "arg1")
    assert (got.returncode, plain.returncode) == (7, 7)
    assert json.loads(got.stdout)["name"] == "__main__"
    assert json.loads(got.stdout)["main"] is True
    assert got.stdout == plain.stdout
    assert got.stderr == plain.stderr == b""


def test_the_wrapped_module_gets_its_bytes_exactly(tmp_path):
    """The module travels as a bytes literal inside the preamble: quotes, backslashes, bytes
    that are not UTF-8 under a coding declaration, a NUL escape and CRLF line ends arrive as
    they were. (Compared with the module run from a file: this Python refuses a coding
    declaration other than UTF-8 in a script read from a pipe, "encoding problem".)"""
    program = (
        b"# -*- coding: latin-1 -*-\r\n"
        b"_ANSIBALLZ_WRAPPER = True\r\n"
        b"S = '\xe9\xff \\' \" \\\\ \\x00 \\'\\'\\' \"\"\" \\n'\r\n"
        b'T = b"""\\xff\r\nline"""\r\n'
        b"print(ascii(S), ascii(T))\r\n"
    )
    script = tmp_path / "module.py"
    script.write_bytes(program)
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, check=False)
    assert plain.returncode == 0, plain.stderr.decode()
    got = run(wrap(program, tmp_path / "cache"))
    assert got.returncode == 0, got.stderr.decode()
    assert got.stdout == plain.stdout
    assert got.stdout.decode() == (
        "'\\xe9\\xff \\' \" \\\\ \\x00 \\'\\'\\' \"\"\" \\n' b'\\xff\\nline'\n"
    )


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"import sys\nprint(sys.version)\n", id="other-python"),
        pytest.param(bytes(range(256)) * 20, id="binary"),
        pytest.param(b"#!/bin/sh\necho _ANSIBALLZ_WRAPPER=True\n", id="mark-spelt-otherwise"),
        pytest.param(b"#" * 4096 + b"\n" + ga.ANSIBALLZ_MARK + b"\n", id="mark-after-4096"),
    ],
)
def test_anything_but_an_ansiballz_module_is_returned_unchanged(data):
    assert ga.with_module_cache(data) == data


def test_an_ansiballz_module_is_put_behind_the_preamble():
    program = b"#!/usr/bin/python3\n" + ga.ANSIBALLZ_MARK + b"\n"
    wrapped = ga.with_module_cache(program)
    assert wrapped.startswith(ga._MODULE_PREAMBLE.encode())
    assert repr(program).encode() in wrapped


# --- a real AnsiballZ module -------------------------------------------------------------------
# Built in a child Python: modify_module needs Ansible's collection loader, which
# tests/unit/test_guest_agent.py installs and removes for its own module, and a local tmp.
BUILD_PING = textwrap.dedent(
    """\
    import os, sys
    import ansible
    from ansible.executor.module_common import modify_module
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar

    init_plugin_loader([])
    built = modify_module(
        module_name="ping",
        module_path=os.path.join(os.path.dirname(ansible.__file__), "modules", "ping.py"),
        module_args={"data": sys.argv[1]},
        templar=Templar(loader=DataLoader()),
        task_vars={"ansible_python_interpreter": sys.executable},
    )
    assert built.module_style == "new", built.module_style
    sys.stdout.buffer.write(built.b_module_data)
    """
)
PING_DATA = "pong-through-the-cache"


@pytest.fixture(scope="module")
def ping(tmp_path_factory):
    """The AnsiballZ payload of ansible.builtin.ping (data=PING_DATA) for this Python, and the
    sources of its zip by name."""
    work = tmp_path_factory.mktemp("ansiballz")
    env = {k: v for k, v in clean_env().items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_LOCAL_TEMP=str(work / "local"), ANSIBLE_HOME=str(work / "home"))
    proc = subprocess.run(
        [sys.executable, "-c", BUILD_PING, PING_DATA],
        capture_output=True,
        env=env,
        cwd=work,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    payload = proc.stdout
    assert ga.ANSIBALLZ_MARK in payload[:4096]
    found = re.search(rb"zip_data='([A-Za-z0-9+/=]+)'", payload)
    assert found, "no zip_data in the AnsiballZ payload"
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(found.group(1)))) as z:
        sources = {n: z.read(n) for n in z.namelist() if n.endswith(".py")}
    return payload, sources


def run_payload(payload: bytes):
    """The payload on the standard input of a bare python, as a pipelined task runs it."""
    return subprocess.run(
        [sys.executable],
        input=payload,
        capture_output=True,
        env=clean_env(),
        timeout=120,
        check=False,
    )


def ping_result(proc) -> dict:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def test_real_ansiballz_ping_twice_through_the_cache(ping, tmp_path):
    payload, sources = ping
    cache = tmp_path / "cache"
    wrapped = wrap(payload, cache)
    assert ping_result(run_payload(payload))["ping"] == PING_DATA  # the plain one, for reference
    assert ping_result(run_payload(wrapped))["ping"] == PING_DATA
    first = entries(cache)
    keys = {key(s): n for n, s in sources.items()}
    # Every entry is the code of one source of the zip; basic.py, the big one, among them.
    assert len(first) > 10
    assert set(first) <= set(keys)
    assert key(sources["ansible/module_utils/basic.py"]) in first
    for name in first:
        assert marshal.loads((cache / TAG / name).read_bytes()) == code_of(sources[keys[name]])
    assert stat.S_IMODE((cache / TAG).stat().st_mode) == 0o700
    assert ping_result(run_payload(wrapped))["ping"] == PING_DATA
    assert entries(cache) == first


def test_real_ansiballz_module_code_is_loaded_from_the_cache(ping, tmp_path):
    payload, sources = ping
    cache = tmp_path / "cache"
    wrapped = wrap(payload, cache)
    ping_result(run_payload(wrapped))
    entry = cache / TAG / key(sources["ansible/modules/ping.py"])
    assert entry.is_file()
    poison(
        entry,
        b'import json, sys\nprint(json.dumps({"ping": "from-cache"}))\nsys.exit(0)\n',
        "ansible/modules/ping.py",
    )
    assert ping_result(run_payload(wrapped)) == {"ping": "from-cache"}
