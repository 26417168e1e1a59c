# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Where the plan is kept: lock, read, plan, draw and write, all on the machine that holds the
plan's files. The same code runs on the controller (the address_plan action, a plan file beside
the inventory) and on a plan keeper (the plan_keeper module, run there over the keeper's own
inventory connection), so the two stores cannot drift apart.

PRIVATE to the collection: no compatibility promise. No Ansible imports.
"""

from __future__ import annotations

import contextlib
import os
import stat

from ansible_collections.mv6.transition.plugins.module_utils import _diagram, _plan

# The plan's path on a keeper when mv6_plan_file is not set (docs/awx.md).
KEEPER_PLAN_FILE = "/var/lib/mv6-plan/mv6_plan.yml"


def current_picture(path: str | None, writing: bool = True) -> str | None:
    """The text of the picture at path, None when there is none yet; ValueError when what is
    there is anything but a picture this collection drew in a regular file (it is never
    replaced), or when the picture could not be written there."""
    if not path:
        return None
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory) and not writing:
        return None  # check mode on a new site: nothing is there, and nothing is written
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(
            f"diagram: the directory of {path} does not exist or is not writable; nothing was "
            f"written (name another path, or an empty one for no picture)"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(
            f"diagram: {path} is not a regular file (a symlink, a directory, a FIFO or a "
            f"device); it was kept, and nothing was written"
        )
    try:
        # O_NOFOLLOW and O_NONBLOCK: what is swapped in after the lstat is not followed and
        # cannot block the run (and with it the plan's lock).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ValueError(f"diagram: cannot read {path} ({reason}); nothing was written") from None
    if not _diagram.drawn_here(text):
        raise ValueError(
            f"diagram: {path} exists and is not a plan picture this collection drew; it was "
            f"kept, and nothing was written (name another path, or an empty one for none)"
        )
    return text


def diagram_path(given, plan_file: str) -> str | None:
    """The picture's path from the diagram option (or mv6_plan_diagram): None gives the plan
    file's name with .svg, an empty value or false gives no picture, and a relative path is
    the plan file's neighbour, whatever directory the run started in."""
    if given is None:
        root, ext = os.path.splitext(plan_file)
        return (root if ext in (".yml", ".yaml") else plan_file) + ".svg"
    if given is False or given == "":
        return None
    if not isinstance(given, str):
        raise ValueError(
            f"diagram: must be a path, or empty or false for no picture, got "
            f"{type(given).__name__} {given!r}"
        )
    path = os.path.join(os.path.dirname(plan_file), os.path.expanduser(given))
    taken = {os.path.realpath(p) for p in (plan_file, f"{plan_file}.lock", f"{plan_file}.v1")}
    real = os.path.realpath(path)
    hosts = os.path.realpath(_plan.hosts_dir(plan_file))
    if real in taken or real == hosts or real.startswith(hosts + os.sep):
        raise ValueError(
            f"diagram: {given} is one of the plan's own files (the plan file, its lock, its "
            f"version 1 copy or its host files); nothing was written"
        )
    return path


def _draw(plan: dict, path: str | None, check_mode: bool) -> tuple[bool, str | None]:
    """(whether the picture at path differs from what the plan draws, the drawing); written
    when it differs, not in check mode. The picture shows only what the plan holds, so that
    runs with different --limit draw the same bytes for the same plan."""
    if not path:
        return False, None
    text = _diagram.render(plan)
    if current_picture(path, not check_mode) == text:
        return False, text
    if not check_mode:
        try:
            _plan.write_plan_file(path, text, what="diagram")
        except ValueError as e:
            raise ValueError(f"{e}; the plan itself was written") from None
    return True, text


def _make_directory(plan_file: str, check_mode: bool) -> None:
    """The plan's directory on a keeper (0755, root's), made on the first run."""
    directory = os.path.dirname(os.path.abspath(plan_file))
    if check_mode or os.path.isdir(directory):
        return
    try:
        os.makedirs(directory, mode=0o755)
    except OSError as e:
        raise ValueError(
            f"mv6_plan_file: cannot make the directory {directory} ({e.strerror}); nothing was "
            f"written"
        ) from None


def plan_here(
    plan_file: str,
    request: dict,
    check_mode: bool,
    lock_timeout: float,
    diagram=None,
    make_directory: bool = False,
    create: bool = True,
) -> dict:
    """Lock, read, plan, write and draw, in one step, on this machine. request holds what the
    planner read from the play: native_family, parallel, guests_by_host, native_by_host,
    inventory_hosts, prune, release_hosts. Returns before and after ({name: text} of the
    plan's files), the plan, whether the picture changed, its path and its text. ValueError
    names the variable when anything is wrong; nothing is written then. With create false,
    a plan must be there already: the keeper never starts a new plan by itself, since a new
    plan would give the site's hosts and guests new addresses and MACs."""
    if lock_timeout < 0:
        raise ValueError(f"lock_timeout: must be 0 or more seconds, got {lock_timeout}")
    picture = diagram_path(diagram, plan_file)
    if not create:
        _refuse_a_new_plan(plan_file)  # before the directory is made
    if make_directory:
        _make_directory(plan_file, check_mode)
    current_picture(picture, not check_mode)  # refused before anything is written
    # Check mode reads files that are only ever replaced by rename: no lock needed, and no
    # lock file is created.
    lock = (
        contextlib.nullcontext() if check_mode else _plan.locked_plan_file(plan_file, lock_timeout)
    )
    with lock:
        previous, before = _plan.read_plan(plan_file)
        if previous is None and not create:
            _refuse_a_new_plan(plan_file, empty=True)
        plan = _plan.build_plan(
            request["native_family"],
            request["parallel"],
            request["guests_by_host"],
            previous,
            prune=bool(request.get("prune")),
            release_hosts=request.get("release_hosts") or [],
            native_by_host=request.get("native_by_host") or {},
            inventory_hosts=request.get("inventory_hosts"),
        )
        after = _plan.dump_plan(plan, plan_file, previous, before)
        if after != before and not check_mode:
            migrating = previous is not None and previous.get("version") != plan["version"]
            _plan.write_plan(plan_file, before, after, keep_v1=migrating)
        drawn, svg = _draw(plan, picture, check_mode)
    return {
        "before": before,
        "after": after,
        "plan": plan,
        "drawn": drawn,
        "diagram_file": picture,
        "diagram_svg": svg,
    }


def _refuse_a_new_plan(plan_file: str, empty: bool = False) -> None:
    if empty or not os.path.lexists(plan_file):
        raise ValueError(
            f"mv6_plan_keeper_create: no plan at {plan_file}, and the keeper starts a new plan"
            " only when told to: a new plan gives every host and guest of the site new"
            " addresses and MACs. If the plan is in the controller's file, move it with"
            " playbooks/plan_move.yml (mv6_plan_move=to_keeper); if mv6_plan_file or"
            " mv6_plan_keeper is mistyped, correct it; for the first plan of a new site, run"
            " once with mv6_plan_keeper_create=true. Nothing was planned or written"
        )


def read_here(plan_file: str, native_family=None, parallel=None, host: str | None = None):
    """The plan at plan_file as version 2 (a version 1 file migrated in memory with the
    inventory's site), or one host's entry with host. Nothing is written."""
    if host is not None:
        return _plan.read_host_entry(plan_file, host)
    plan = _plan.read_plan(plan_file)[0]
    if plan is None:
        raise ValueError(f"mv6_plan_file: {plan_file} does not exist or is empty")
    if plan.get("version") != _plan.PLAN_VERSION and parallel is None:
        raise ValueError(
            f"mv6_plan_file: {plan_file} is a version 1 plan; give parallel (mv6_parallel) "
            f"to read it, or run the planner once to migrate it"
        )
    return _plan.upgrade_plan(plan, native_family, parallel)


def store_here(
    plan_file: str, plan: dict, check_mode: bool, lock_timeout: float, diagram=None
) -> dict:
    """Keep plan (read from the other store) at plan_file, in the plan's lock: when no plan
    is there yet, or the same one (then nothing changes). A different plan there is never
    replaced: both stores would hold allocations, and one of them would be lost. The picture
    is drawn beside it as the planner draws it. Returns before and after as plan_here()
    does, and whether the picture changed."""
    plan = _plan.check_plan(plan)
    if plan.get("version") != _plan.PLAN_VERSION:
        raise ValueError("plan: only a version 2 plan is moved; run the planner once first")
    picture = diagram_path(diagram, plan_file)
    _make_directory(plan_file, check_mode)
    current_picture(picture, not check_mode)
    lock = (
        contextlib.nullcontext() if check_mode else _plan.locked_plan_file(plan_file, lock_timeout)
    )
    with lock:
        previous, before = _plan.read_plan(plan_file)
        after = _plan.dump_plan(plan, plan_file)
        if previous is not None and after != before:
            raise ValueError(
                f"mv6_plan_file: {plan_file} already holds a different plan; it was kept and "
                f"nothing was written (move it away first, or move the plan the other way)"
            )
        if after != before and not check_mode:
            _plan.write_plan(plan_file, before, after)
        drawn = _draw(plan, picture, check_mode)[0]
    return {"before": before, "after": after, "plan": plan, "drawn": drawn}
