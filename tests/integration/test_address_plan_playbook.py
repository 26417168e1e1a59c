"""mv6.transition.address_plan through a real ansible-playbook run, on local hosts only.

Every test builds its own inventory in a temporary directory; nothing outside it is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))
from ansible_collections.mv6.transition.plugins.module_utils import _diagram, _plan

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

pytestmark = [pytest.mark.timeout(300), pytest.mark.files_only]

PLAY = """\
- name: Plan the parallel network
  hosts: mv6_hypervisors
  gather_facts: false
  tasks:
    - name: Plan addresses
      mv6.transition.address_plan: {args}
      run_once: true
      register: mv6_planned

    - name: Every host has the fact, and the filters read it
      ansible.builtin.copy:
        dest: "{{{{ inventory_dir }}}}/seen-{{{{ inventory_hostname }}}}.json"
        mode: "0644"
        content: >-
          {{{{ {{'subnet': (mv6_plan | mv6.transition.host_plan(inventory_hostname)).subnet,
               'mac': mv6_parallel | mv6.transition.guest_mac(1, 2),
               'address': mv6_parallel | mv6.transition.guest_address(1, 2),
               'slice': mv6_parallel | mv6.transition.parallel_subnet(1)}} | to_json }}}}
"""


@pytest.fixture
def site(tmp_path):
    """A two-hypervisor site: hv1 with two guests (one name templated), hv2 with one."""
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "host_vars").mkdir()
    (inv / "hosts.yml").write_text(
        textwrap.dedent(
            """\
            all:
              children:
                mv6_hypervisors:
                  hosts:
                    hv1:
                    hv2:
              vars:
                ansible_connection: local
                ansible_python_interpreter: "{{ ansible_playbook_python }}"
            """
        )
    )
    write_vars(
        inv / "group_vars" / "all.yml",
        {
            "mv6_native_family": "ipv4",
            "mv6_parallel": {"prefix": "2001:db8:600::/48", "dns": ["2001:db8::53"]},
            "mv6_plan_file": "{{ inventory_dir }}/mv6_plan.yml",
            "guest_prefix": "web",
        },
    )
    write_vars(
        inv / "host_vars" / "hv1.yml",
        {
            "mv6_guests": [
                {"name": "{{ guest_prefix }}6", "vcpus": 1, "memory_mib": 512},
                {"name": "rtr6", "router": True},
            ]
        },
    )
    write_vars(inv / "host_vars" / "hv2.yml", {"mv6_guests": [{"name": "app6"}]})
    return inv


def write_vars(path: Path, data) -> None:
    path.write_text("---\n" + yaml.safe_dump(data, sort_keys=False))


def play(inv: Path, *options: str, args: str = "", expect_rc: int = 0) -> dict:
    playbook = inv.parent / "plan.yml"
    playbook.write_text(PLAY.format(args=args))
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}:{env.get('PATH', '')}",
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(inv / "hosts.yml"), str(playbook), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == expect_rc, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    return out["plays"][0]["tasks"][0]["hosts"]


def read(plan_file: Path) -> dict:
    """The plan at plan_file, read (and checked) by the collection's reader."""
    return _plan.read_plan(str(plan_file))[0]


def diffs(result: dict) -> dict:
    """{file name: (before, after)} of the planner's per-file diffs."""
    return {Path(d["after_header"]).name: (d["before"], d["after"]) for d in result["diff"]}


def plan_result(hosts: dict) -> dict:
    (result,) = hosts.values()  # run_once: one result
    return result


def test_check_diff_apply_idempotent(site):
    plan_file = site / "mv6_plan.yml"

    # check mode: reports the change, shows it, writes nothing
    result = plan_result(play(site, "--check", "--diff"))
    assert result["changed"] is True
    shown = diffs(result)
    assert sorted(shown) == ["hv1.json", "hv2.json", "mv6_plan.yml"]
    assert all(before == "" for before, _after in shown.values())
    assert '"web6": ' in shown["hv1.json"][1] and '"app6": ' in shown["hv2.json"][1]
    assert not plan_file.exists()
    # nothing at all was written: not the plan, not the copy task's files
    assert sorted(p.name for p in site.iterdir()) == ["group_vars", "host_vars", "hosts.yml"]

    # apply: the file holds exactly the returned plan, every host has the fact
    result = plan_result(play(site, "--diff"))
    assert result["changed"] is True
    text = plan_file.read_text()
    assert read(plan_file) == result["plan"]
    assert diffs(result)["mv6_plan.yml"][1] == text
    assert diffs(result)["hv1.json"][1] == (site / "mv6_plan.d" / "hv1.json").read_text()
    plan = result["plan"]
    assert plan["site"]["bridge"] == "mv6br0" and hv1_router(plan) == "rtr6"
    hv1 = plan["hosts"]["hv1"]
    assert hv1["subnet"] == "2001:db8:600::/64"
    assert sorted(hv1["guests"]) == ["rtr6", "web6"]  # the templated name arrives as text
    assert hv1["gateway"] == hv1["guests"]["rtr6"]["address"]
    assert hv1["dns"] == ["2001:db8::53"]
    assert plan["hosts"]["hv2"]["guests"]["app6"]["mac"] == "02:6d:00:01:00:00"
    for host in ("hv1", "hv2"):
        seen = json.loads((site / f"seen-{host}.json").read_text())
        assert seen["subnet"] == plan["hosts"][host]["subnet"]
        assert seen == {**seen, "mac": "02:6d:00:01:00:02", "slice": "2001:db8:600:1::/64"}
        assert seen["address"] == "2001:db8:600:1:6d:ff:fe01:2"

    # second run: unchanged, the file is byte-identical and was not rewritten
    files = [plan_file, *sorted((site / "mv6_plan.d").iterdir())]
    inodes = [f.stat().st_ino for f in files]
    result = plan_result(play(site, "--diff"))
    assert result["changed"] is False
    assert "diff" not in result or not result["diff"]
    assert plan_file.read_text() == text
    assert [f.stat().st_ino for f in files] == inodes

    # a third host: the diff and the writes are its file and the site file, nothing else
    _add_host(site, "hv3", [{"name": "db6"}])
    result = plan_result(play(site, "--limit", "hv3", "--diff"))
    assert sorted(diffs(result)) == ["hv3.json", "mv6_plan.yml"]
    assert [f.stat().st_ino for f in files[1:]] == inodes[1:]


def hv1_router(plan: dict) -> str | None:
    return plan["hosts"]["hv1"]["router"]


def test_a_version_1_plan_file_is_migrated_in_place(site):
    """The file this collection wrote before plan v2: the playbook migrates it where it is,
    keeps a copy, and no address, MAC, port or slot moves."""
    play(site)
    v2 = read(site / "mv6_plan.yml")
    v1 = {"version": 1, **{k: v2["site"][k] for k in _plan.SITE_ALLOCATION}}
    v1["hosts"] = {
        h: {k: v for k, v in e.items() if k not in ("router", "dhcp4_pool")}
        for h, e in v2["hosts"].items()
    }
    shutil.rmtree(site / "mv6_plan.d")
    old = "# mv6.transition address plan, written by mv6.transition.address_plan.\n"
    old += yaml.safe_dump(v1)
    (site / "mv6_plan.yml").write_text(old)
    result = plan_result(play(site, "--diff"))
    assert result["changed"] is True
    assert (site / "mv6_plan.yml.v1").read_text() == old
    assert read(site / "mv6_plan.yml") == v2 == result["plan"]
    # and the read-only playbooks read a version 1 file migrated in memory
    assert (
        _plan.upgrade_plan(v1, "ipv4", {"prefix": "2001:db8:600::/48", "dns": ["2001:db8::53"]})
        == v2
    )


def test_removed_guest_released_and_limit_keeps_other_hosts(site):
    play(site)
    first = read(site / "mv6_plan.yml")

    write_vars(site / "host_vars" / "hv1.yml", {"mv6_guests": [{"name": "rtr6", "router": True}]})
    write_vars(site / "host_vars" / "hv2.yml", {"mv6_guests": []})
    result = plan_result(play(site, "--limit", "hv1", "--diff"))
    assert result["changed"] is True
    plan = read(site / "mv6_plan.yml")
    # hv1 is in the play: its removed guest stays, released, with the same allocation
    assert plan["hosts"]["hv1"]["guests"]["web6"] == {
        **first["hosts"]["hv1"]["guests"]["web6"],
        "released": True,
    }
    before, after = diffs(result)["hv1.json"]
    assert sorted(diffs(result)) == ["hv1.json"]  # hv2 and the site file are unchanged
    assert json.loads(before)["guests"]["web6"]["released"] is False
    assert json.loads(after)["guests"]["web6"]["released"] is True
    # hv2 is outside the play: untouched, although its mv6_guests is now empty
    assert plan["hosts"]["hv2"] == first["hosts"]["hv2"]

    # pruning on purpose drops the released guest
    play(site, "--limit", "hv1", args="{prune: true}")
    plan = read(site / "mv6_plan.yml")
    assert sorted(plan["hosts"]["hv1"]["guests"]) == ["rtr6"]
    assert plan["hosts"]["hv2"] == first["hosts"]["hv2"]


def test_bad_input_fails_before_anything_is_written(site):
    play(site)
    plan_file = site / "mv6_plan.yml"
    text = plan_file.read_text()
    write_vars(
        site / "host_vars" / "hv2.yml",
        {"mv6_guests": [{"name": "app6", "vcpus": "two"}]},
    )
    hosts = play(site, expect_rc=2)
    (result,) = hosts.values()
    assert result["failed"] is True
    assert result["msg"] == (
        "mv6_guests[0].vcpus on host hv2: must be an integer from 1 to 256, got 'two'"
    )
    assert plan_file.read_text() == text


def test_bad_input_on_a_fresh_site_creates_no_file(site):
    write_vars(
        site / "group_vars" / "all.yml",
        {
            "mv6_native_family": "ipv6",
            "mv6_parallel": {"prefix": "2001:db8:600::/48"},
            "mv6_plan_file": "{{ inventory_dir }}/mv6_plan.yml",
            "guest_prefix": "web",
        },
    )
    (result,) = play(site, expect_rc=2).values()
    assert result["msg"] == (
        "mv6_parallel.prefix: 2001:db8:600::/48 is ipv6, the same family as mv6_native_family; "
        "the parallel network must run the other family"
    )
    assert not (site / "mv6_plan.yml").exists()


def test_corrupt_plan_file_is_kept(site):
    plan_file = site / "mv6_plan.yml"
    plan_file.write_text("hosts: [\n")
    (result,) = play(site, expect_rc=2).values()
    assert result["msg"].startswith(f"mv6_plan_file: {plan_file} is corrupt (not YAML: ")
    assert result["msg"].endswith("; it was kept unchanged, fix it or move it away")
    assert plan_file.read_text() == "hosts: [\n"
    assert sorted(p.name for p in site.iterdir() if p.name.startswith(".mv6_plan")) == []


def test_a_setting_that_moved_into_the_plan_is_refused_before_planning(site):
    """An inventory of before plan v2 that names its table with the role's old variable:
    planning (and migrating) with the default name would strand the live table."""
    write_vars(site / "host_vars" / "hv2.yml", {"mv6_guests": [], "mv6_hypervisor_nft_table": "t"})
    (result,) = play(site, expect_rc=2).values()
    assert result["msg"] == (
        "mv6_hypervisor_nft_table: is set for host hv2, but it moved into the plan (plan version "
        "2): set mv6_parallel.nft_table instead; nothing was planned or written"
    )
    assert not (site / "mv6_plan.yml").exists()


def test_site_values_must_agree_between_hosts(site):
    write_vars(site / "host_vars" / "hv2.yml", {"mv6_guests": [], "mv6_native_family": "ipv6"})
    (result,) = play(site, expect_rc=2).values()
    assert result["msg"] == (
        "mv6_native_family: host hv2 has a different value than host hv1; one plan needs one "
        "site-wide value (set it in group_vars)"
    )
    assert not (site / "mv6_plan.yml").exists()


def _holds_open(pid: int, path: Path) -> bool:
    """Whether process pid or one of its descendants has path open."""
    pids, seen = [pid], set()
    while pids:
        p = pids.pop()
        seen.add(p)
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{p}/fd/{fd}") == str(path):
                        return True
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split() if int(c) not in seen]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return False


def _add_host(inv: Path, host: str, guests: list) -> None:
    hosts = yaml.safe_load((inv / "hosts.yml").read_text())
    hosts["all"]["children"]["mv6_hypervisors"]["hosts"][host] = None
    (inv / "hosts.yml").write_text(yaml.safe_dump(hosts))
    write_vars(inv / "host_vars" / f"{host}.yml", {"mv6_guests": guests})


def test_a_second_run_waits_for_the_first_and_keeps_its_allocations(site):
    """Two runs planning at once: the second waits on the lock, then plans on top of what the
    first wrote. Without the lock it would have read the old plan and dropped hv4."""
    play(site)
    plan_file = site / "mv6_plan.yml"
    lock_path = Path(f"{plan_file}.lock")
    # "The first run": holds the lock, has read the plan, and adds hv4 (planner core).
    previous, files = _plan.read_plan(str(plan_file))
    _add_host(site, "hv3", [{"name": "db6"}])
    playbook = site.parent / "plan.yml"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_STDOUT_CALLBACK="ansible.posix.json"
    )
    with open(lock_path, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        second = subprocess.Popen(
            [str(BIN / "ansible-playbook"), "-i", str(site / "hosts.yml"), str(playbook),
             "--limit", "hv3"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not _holds_open(second.pid, lock_path):
                assert second.poll() is None, second.communicate()
                assert time.monotonic() < deadline, "the second run never reached the lock"
                time.sleep(0.1)
            time.sleep(1.0)
            assert second.poll() is None, "the second run did not wait for the lock"
            plan = _plan.build_plan(
                "ipv4",
                {"prefix": "2001:db8:600::/48", "dns": ["2001:db8::53"]},
                {"hv4": [{"name": "cache6"}]},
                previous,
            )
            _plan.write_plan(str(plan_file), files, _plan.dump_plan(plan, str(plan_file)))
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        out, err = second.communicate(timeout=240)
    assert second.returncode == 0, out[-3000:] + err[-3000:]
    final = read(plan_file)
    assert sorted(final["hosts"]) == ["hv1", "hv2", "hv3", "hv4"]
    assert final["hosts"]["hv4"] == plan["hosts"]["hv4"]
    for host in ("hv1", "hv2"):
        assert final["hosts"][host] == previous["hosts"][host]


def test_lock_held_too_long_fails_and_writes_nothing(site):
    play(site)
    plan_file = site / "mv6_plan.yml"
    text = plan_file.read_text()
    _add_host(site, "hv3", [{"name": "db6"}])
    with open(f"{plan_file}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        (result,) = play(site, args="{lock_timeout: 1}", expect_rc=2).values()
    assert result["msg"] == (
        f"mv6_plan_file: another run has held {plan_file}.lock for more than 1 s "
        "(lock_timeout); nothing was written"
    )
    assert plan_file.read_text() == text
    (result,) = play(site, args="{lock_timeout: -1}", expect_rc=2).values()
    assert result["msg"] == "lock_timeout: must be 0 or more seconds, got -1"
    assert plan_file.read_text() == text


def test_the_plans_picture_is_drawn_beside_it_and_only_when_it_changes(site):
    picture = site / "mv6_plan.svg"
    # check mode: reported through the plan's change, nothing written
    assert plan_result(play(site, "--check"))["diagram_file"] == str(picture)
    assert not picture.exists()
    result = plan_result(play(site))
    assert result["changed"] is True and result["diagram_file"] == str(picture)
    text = picture.read_text()
    assert text == _diagram.render(read(site / "mv6_plan.yml"))
    for name in ("hv1", "hv2", "web6", "rtr6", "app6"):
        assert f'data-name="{name}"' in text
    inode = picture.stat().st_ino
    # the same plan: unchanged, not rewritten, also from a run that has only one host
    assert plan_result(play(site))["changed"] is False
    assert plan_result(play(site, "--limit", "hv2"))["changed"] is False
    assert picture.stat().st_ino == inode
    # a new guest changes the plan and its picture; only the picture missing is a change too
    write_vars(site / "host_vars" / "hv2.yml", {"mv6_guests": [{"name": "app6"}, {"name": "b6"}]})
    assert plan_result(play(site))["changed"] is True
    assert 'data-name="b6"' in picture.read_text()
    picture.unlink()
    assert plan_result(play(site))["changed"] is True and picture.exists()


def test_a_file_the_picture_would_replace_is_kept_and_nothing_is_written(site):
    picture = site / "mv6_plan.svg"
    picture.write_text("my own notes\n")
    (result,) = play(site, expect_rc=2).values()
    assert result["msg"] == (
        f"diagram: {picture} exists and is not a plan picture this collection drew; it was "
        "kept, and nothing was written (name another path, or an empty one for none)"
    )
    assert picture.read_text() == "my own notes\n"
    assert not (site / "mv6_plan.yml").exists()
    # another path, or none at all
    result = plan_result(play(site, args="{diagram: '{{ inventory_dir }}/pictures-plan.svg'}"))
    assert result["diagram_file"] == str(site / "pictures-plan.svg")
    assert _diagram.drawn_here((site / "pictures-plan.svg").read_text())
    write_vars(site / "host_vars" / "hv1.yml", {"mv6_guests": [], "mv6_plan_diagram": ""})
    result = plan_result(play(site))
    assert result["diagram_file"] is None
    assert picture.read_text() == "my own notes\n"


def test_a_picture_path_that_cannot_be_ours_is_refused_before_the_plan_is_written(site):
    plan_file = site / "mv6_plan.yml"
    target = site / "elsewhere.svg"
    target.write_text("someone's file\n")
    (site / "mv6_plan.svg").symlink_to(target)
    cases = {
        "": "is not a regular file (a symlink, a directory, a FIFO or a device); it was kept",
        "{diagram: '{{ inventory_dir }}/no/such/dir/p.svg'}": "does not exist or is not writable",
        "{diagram: '{{ inventory_dir }}/mv6_plan.yml.lock'}": "is one of the plan's own files",
        "{diagram: '{{ inventory_dir }}/mv6_plan.d/x.svg'}": "is one of the plan's own files",
        "{diagram: 7}": "diagram: must be a path, or empty or false for no picture, got int 7",
    }
    for args, message in cases.items():
        (result,) = play(site, args=args, expect_rc=2).values()
        assert message in result["msg"], (args, result["msg"])
        assert not plan_file.exists(), args
        assert not (site / "mv6_plan.yml.lock").exists(), args
    assert target.read_text() == "someone's file\n"
    assert (site / "mv6_plan.svg").is_symlink()
    # false draws none (it once drew a file named False in the working directory), and a
    # relative path is the plan file's neighbour
    result = plan_result(play(site, args="{diagram: false}"))
    assert result["diagram_file"] is None and not (ROOT / "False").exists()
    result = plan_result(play(site, args="{diagram: pictures.svg}"))
    assert result["diagram_file"] == str(site / "pictures.svg")
    assert _diagram.drawn_here((site / "pictures.svg").read_text())
