"""The inventory plugin mv6.transition.plan through the real ansible-inventory.

Every test writes real plan files (the planner core's build_plan, dump_plan, write_plan) and
inventory sources in its own temporary directory. The keeper is this machine, reached with the
real local connection plugin (and once with ssh to an address that does not answer); its
command is the real tar.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.inventory import plan as plugin
from ansible_collections.mv6.transition.plugins.module_utils import _plan

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
V6 = {"prefix": "2001:db8:600::/48"}

pytestmark = pytest.mark.timeout(120)


def g(name, **kw):
    return {"name": name, **kw}


def write_plan(path: Path, plan: dict) -> dict:
    before = _plan.read_plan(str(path))[1]
    _plan.write_plan(str(path), before, _plan.dump_plan(plan, str(path)))
    return plan


def site_plan(path: Path) -> dict:
    """hv1: rtr6 (its router), web6 and old6 (released); hv2: db6; hv3 released with x6."""
    guests = {
        "hv1": [g("rtr6", router=True), g("web6"), g("old6")],
        "hv2": [g("db6")],
        "hv3": [g("x6")],
    }
    first = _plan.build_plan("ipv4", V6, guests)
    guests["hv1"].pop()
    plan = _plan.build_plan("ipv4", V6, guests, first, release_hosts=["hv3"])
    assert plan["hosts"]["hv1"]["guests"]["old6"]["released"] is True
    assert plan["hosts"]["hv3"]["released"] is True
    return write_plan(path, plan)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def config(path: Path, **options) -> Path:
    return write(path, yaml.safe_dump({"plugin": "mv6.transition.plan", **options}))


def _plain(obj):
    # ansible-core 2.19's legacy output profile marks the plan's strings (untrusted) so.
    return obj["__ansible_unsafe"] if set(obj) == {"__ansible_unsafe"} else obj


def inventory(*sources: Path, args: tuple = (), ok: bool = True, timeout: float = 60):
    """ansible-inventory --list over the sources: (inventory, stderr), or stderr when it
    must fail. Any unparsed source fails the run (ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED):
    without it ansible-inventory warns and goes on without that source."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED="1",
        ANSIBLE_NOCOLOR="1",
        PATH=f"{BIN}:{env.get('PATH', '')}",
    )
    argv = [str(BIN / "ansible-inventory")]
    for source in sources:
        argv += ["-i", str(source)]
    proc = subprocess.run(
        [*argv, "--list", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if not ok:
        assert proc.returncode != 0, proc.stdout[-3000:]
        return " ".join(proc.stderr.split())
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout, object_hook=_plain), proc.stderr


def hosts_of(inv: dict, group: str) -> set:
    return set(inv.get(group, {}).get("hosts", []))


def guest_vars(plan: dict, hv: str, name: str, **over) -> dict:
    entry = plan["hosts"][hv]
    rtr = entry["router"]
    return {
        "ansible_connection": "mv6.transition.guest_agent",
        "ansible_host": name,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_become_method": "mv6.transition.runuser",
        "mv6_guest_hypervisor": hv,
        "mv6_guest_agent_libvirt_uri": "qemu:///system",
        "mv6_guest_plan": entry["guests"][name],
        "mv6_guest_site": {
            "subnet": entry["subnet"],
            "gateway": entry["gateway"],
            "dns": entry["dns"],
            "router": rtr and {"name": rtr, "address": entry["guests"][rtr]["address"]},
            "layout": "per_host",
            "dhcp4_pool": entry["dhcp4_pool"],
        },
        "mv6_parallel_family": "ipv6",
        **over,
    }


HOSTS = """\
all:
  children:
    mv6_hypervisors:
      hosts:
        hv1:
          ansible_connection: local
"""


# --- the plan on the controller ------------------------------------------------------------
def test_the_guests_of_the_plan_with_their_hypervisor_and_connection(tmp_path):
    plan = site_plan(tmp_path / "inv" / "mv6_plan.yml")
    hosts = write(tmp_path / "inv" / "hosts.yml", HOSTS)
    # plan_file relative to the configuration file's directory, not to the working directory
    source = config(tmp_path / "inv" / "guests.mv6.yml", plan_file="mv6_plan.yml")
    inv, stderr = inventory(hosts, source)

    assert hosts_of(inv, "mv6_guests") == {"rtr6", "web6", "db6"}
    assert hosts_of(inv, "mv6_guests_of_hv1") == {"rtr6", "web6"}
    assert hosts_of(inv, "mv6_guests_of_hv2") == {"db6"}
    assert set(inv["mv6_guests"]["children"]) == {"mv6_guests_of_hv1", "mv6_guests_of_hv2"}
    # hv2 is only in the plan: added, with a warning; hv3 is released
    assert hosts_of(inv, "mv6_hypervisors") == {"hv1", "hv2"}
    assert "hypervisor hv2 of the plan is not a host of the inventory" in stderr
    assert "hypervisor hv1" not in stderr
    hostvars = inv["_meta"]["hostvars"]
    assert "old6" not in hostvars and "x6" not in hostvars
    assert hostvars["hv1"] == {"ansible_connection": "local"}
    assert "hv2" not in hostvars
    assert hostvars["web6"] == guest_vars(plan, "hv1", "web6")
    assert hostvars["db6"] == guest_vars(plan, "hv2", "db6")
    assert hostvars["web6"]["mv6_guest_site"]["router"]["name"] == "rtr6"
    assert hostvars["db6"]["mv6_guest_site"]["router"] is None


def test_released_guests_and_hypervisors_only_when_asked(tmp_path):
    plan = site_plan(tmp_path / "mv6_plan.yml")
    source = config(tmp_path / "all.mv6.yaml", plan_file="mv6_plan.yml", include_released=True)
    inv = inventory(source)[0]
    assert hosts_of(inv, "mv6_guests") == {"rtr6", "web6", "old6", "db6", "x6"}
    assert hosts_of(inv, "mv6_guests_of_hv3") == {"x6"}
    assert hosts_of(inv, "mv6_hypervisors") == {"hv1", "hv2", "hv3"}
    old6 = inv["_meta"]["hostvars"]["old6"]
    assert old6 == guest_vars(plan, "hv1", "old6")
    assert old6["mv6_guest_plan"]["released"] is True


def test_shared_layout_names_the_fleets_router_on_another_hypervisor(tmp_path):
    v4 = {"prefix": "198.51.100.0/24", "layout": "shared"}
    plan = _plan.build_plan("ipv6", v4, {"hv1": [g("rtr4", router=True)], "hv2": [g("app4")]})
    write_plan(tmp_path / "mv6_plan.yml", plan)
    inv = inventory(config(tmp_path / "mv6.yml", plan_file=str(tmp_path / "mv6_plan.yml")))[0]
    app4 = inv["_meta"]["hostvars"]["app4"]
    assert app4["mv6_parallel_family"] == "ipv4"
    assert app4["mv6_guest_site"] == {
        "subnet": "198.51.100.0/24",
        "gateway": plan["hosts"]["hv2"]["gateway"],
        "dns": [],
        "router": {"name": "rtr4", "address": plan["hosts"]["hv1"]["guests"]["rtr4"]["address"]},
        "layout": "shared",
        "dhcp4_pool": plan["hosts"]["hv2"]["dhcp4_pool"],
    }


def test_options_and_constructed_compose_groups_keyed_groups(tmp_path):
    plan = site_plan(tmp_path / "mv6_plan.yml")
    # an earlier source's group vars reach compose
    hosts = write(
        tmp_path / "hosts.yml",
        """\
        all:
          children:
            apps:
              vars:
                site_name: lab
        """,
    )
    source = config(
        tmp_path / "guests.mv6.yml",
        plan_file="mv6_plan.yml",
        group="apps",
        hypervisor_group="kvm_hosts",
        connection="community.libvirt.libvirt_qemu",
        python_interpreter="/usr/local/bin/python3",
        become_method="ansible.builtin.su",
        libvirt_uri="qemu:///session",
        strict=True,
        compose={
            "guest_address": "mv6_guest_plan.address",
            "label": "site_name ~ '-' ~ inventory_hostname",
        },
        groups={"routers": "mv6_guest_plan.router"},
        keyed_groups=[{"key": "mv6_parallel_family", "prefix": "family"}],
    )
    inv = inventory(hosts, source)[0]
    assert hosts_of(inv, "apps") == {"rtr6", "web6", "db6"}
    assert hosts_of(inv, "apps_of_hv1") == {"rtr6", "web6"}
    assert hosts_of(inv, "kvm_hosts") == {"hv1", "hv2"}
    assert "mv6_guests" not in inv and "mv6_hypervisors" not in inv
    assert hosts_of(inv, "routers") == {"rtr6"}
    assert hosts_of(inv, "family_ipv6") == {"rtr6", "web6", "db6"}
    web6 = inv["_meta"]["hostvars"]["web6"]
    assert web6 == guest_vars(
        plan,
        "hv1",
        "web6",
        ansible_connection="community.libvirt.libvirt_qemu",
        ansible_python_interpreter="/usr/local/bin/python3",
        ansible_become_method="ansible.builtin.su",
        mv6_guest_agent_libvirt_uri="qemu:///session",
        guest_address=plan["hosts"]["hv1"]["guests"]["web6"]["address"],
        label="lab-web6",
        site_name="lab",  # --list gives each host its groups' variables too
    )


def test_a_hypervisor_name_with_dots_gives_a_sanitized_group(tmp_path):
    plan = _plan.build_plan("ipv4", V6, {"hv-1.example.com": [g("web6")]})
    write_plan(tmp_path / "mv6_plan.yml", plan)
    inv = inventory(config(tmp_path / "g.mv6.yml", plan_file="mv6_plan.yml"))[0]
    assert hosts_of(inv, "mv6_guests_of_hv_1_example_com") == {"web6"}
    assert inv["_meta"]["hostvars"]["web6"]["mv6_guest_hypervisor"] == "hv-1.example.com"


def test_only_configuration_files_named_mv6_yml_are_taken(tmp_path):
    site_plan(tmp_path / "mv6_plan.yml")
    stderr = inventory(config(tmp_path / "guests.yml", plan_file="mv6_plan.yml"), ok=False)
    assert "could not be verified by inventory plugin 'mv6.transition.plan'" in stderr


def test_the_cache_keeps_the_plan_until_flushed(tmp_path):
    site_plan(tmp_path / "mv6_plan.yml")
    cache = tmp_path / "cache"
    source = config(
        tmp_path / "guests.mv6.yml",
        plan_file="mv6_plan.yml",
        cache=True,
        cache_plugin="ansible.builtin.jsonfile",
        cache_connection=str(cache),
    )
    first = inventory(source)[0]
    assert len(list(cache.iterdir())) == 1
    (tmp_path / "mv6_plan.yml").unlink()
    shutil.rmtree(tmp_path / "mv6_plan.d")
    again = inventory(source)[0]
    assert again == first
    stderr = inventory(source, args=("--flush-cache",), ok=False)
    assert f"plan_file: {tmp_path}/mv6_plan.yml does not exist or is empty" in stderr


def _v1_plan(path: Path) -> None:
    v2 = _plan.build_plan("ipv4", V6, {"hv1": [g("web6")]})
    v1 = {"version": 1, **{k: v2["site"][k] for k in _plan.SITE_ALLOCATION}}
    v1["hosts"] = {
        h: {k: v for k, v in e.items() if k not in ("router", "dhcp4_pool")}
        for h, e in v2["hosts"].items()
    }
    path.write_text(yaml.safe_dump(v1))


def _corrupt_plan(path: Path) -> None:
    write_plan(path, _plan.build_plan("ipv4", V6, {"hv1": [g("web6")]}))
    (path.parent / "mv6_plan.d" / "hv1.json").write_text("{not json")


def _guest_named_like_a_hypervisor(path: Path) -> None:
    write_plan(path, _plan.build_plan("ipv4", V6, {"hv1": [g("web6")], "hv2": []}))
    text = (path.parent / "mv6_plan.d" / "hv1.json").read_text()
    (path.parent / "mv6_plan.d" / "hv1.json").write_text(text.replace('"web6"', '"hv2"'))


@pytest.mark.parametrize(
    ("options", "prepare", "message"),
    [
        ({}, None, "Required config 'plan_file' for"),
        (
            {"plan_file": "nowhere.yml"},
            None,
            "plan_file: {d}/nowhere.yml does not exist or is empty",
        ),
        (
            {"plan_file": "mv6_plan.yml"},
            _v1_plan,
            "plan_file: {d}/mv6_plan.yml is a version 1 plan; run the planner once to migrate it",
        ),
        (
            {"plan_file": "mv6_plan.yml"},
            _corrupt_plan,
            "plan_file: {d}/mv6_plan.d/hv1.json is corrupt (not JSON:",
        ),
        (
            {"plan_file": "mv6_plan.yml"},
            _guest_named_like_a_hypervisor,
            "plan_file: guest hv2 of hypervisor hv1 has the name of a hypervisor of the plan",
        ),
        (
            {"plan_file": "mv6_plan.yml", "include_released": "maybe"},
            None,
            "include_released: must be true or false, got 'maybe'",
        ),
        (
            {"plan_file": "mv6_plan.yml", "include_relased": True},
            None,
            "include_relased: not an option of mv6.transition.plan",
        ),
        (
            {"plan_file": "mv6_plan.yml", "group": "hosts", "hypervisor_group": "hosts"},
            None,
            "group and hypervisor_group: both are 'hosts'",
        ),
        (
            {"plan_file": "mv6_plan.yml", "keeper": "planhost"},
            None,
            "plan_file: 'mv6_plan.yml' must be an absolute path on the keeper 'planhost'",
        ),
    ],
    ids=[
        "no-plan-file",
        "missing",
        "version-1",
        "corrupt",
        "guest-named-hv",
        "bool",
        "typo",
        "same-groups",
        "relative-on-keeper",
    ],
)
def test_bad_configurations_and_plans_name_the_option(tmp_path, options, prepare, message):
    if prepare is not None:
        prepare(tmp_path / "mv6_plan.yml")
    stderr = inventory(config(tmp_path / "guests.mv6.yml", **options), ok=False)
    assert message.format(d=tmp_path) in stderr


# --- the plan on the keeper ----------------------------------------------------------------
KEEPER_HOSTS = """\
all:
  vars:
    ansible_connection: ssh
  children:
    mv6_hypervisors:
      hosts:
        hv1:
          ansible_connection: local
    keepers:
      vars:
        keeper_connection: local
      hosts:
        planhost:
          # its own variable over the all group's ssh, templated with its group's variable
          ansible_connection: "{{ keeper_connection }}"
"""


def snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def keeper(tmp_path):
    """A keeper's plan directory (the plan of site_plan) and the static hosts file naming the
    keeper: (plan, plan_file, hosts.yml)."""
    plan_file = tmp_path / "keeper" / "var" / "mv6_plan.yml"
    plan_file.parent.mkdir(parents=True)
    plan = site_plan(plan_file)
    # a planner's temporary file in the hosts directory is not part of the plan
    (plan_file.parent / "mv6_plan.d" / ".mv6_plan.x1.tmp").write_text("half written")
    return plan, plan_file, write(tmp_path / "inv" / "hosts.yml", KEEPER_HOSTS)


def test_the_plan_from_the_keeper_over_its_own_connection(tmp_path, keeper):
    plan, plan_file, hosts = keeper
    before = snapshot(plan_file.parent)
    source = config(
        tmp_path / "inv" / "guests.mv6.yml", keeper="planhost", plan_file=str(plan_file)
    )
    inv, stderr = inventory(hosts, source)
    assert hosts_of(inv, "mv6_guests") == {"rtr6", "web6", "db6"}
    assert hosts_of(inv, "mv6_hypervisors") == {"hv1", "hv2"}
    assert "hypervisor hv2 of the plan is not a host of the inventory" in stderr
    assert inv["_meta"]["hostvars"]["web6"] == guest_vars(plan, "hv1", "web6")
    assert inv["_meta"]["hostvars"]["db6"] == guest_vars(plan, "hv2", "db6")
    # nothing written on the keeper, not even a lock file
    assert snapshot(plan_file.parent) == before


def test_one_directory_source_holds_the_hosts_file_and_the_configuration(tmp_path, keeper):
    """An AWX inventory source from a project can be a directory: its files are read in
    sorted order, so hosts.yml (the keeper) comes before plan.mv6.yml."""
    _plan_data, plan_file, hosts = keeper
    config(hosts.parent / "plan.mv6.yml", keeper="planhost", plan_file=str(plan_file))
    inv = inventory(hosts.parent)[0]
    assert hosts_of(inv, "mv6_guests") == {"rtr6", "web6", "db6"}


def test_the_keeper_waits_for_a_planner_that_holds_the_lock(tmp_path, keeper):
    _plan_data, plan_file, hosts = keeper
    lock = Path(f"{plan_file}.lock")
    lock.write_text("")
    source = config(
        tmp_path / "inv" / "guests.mv6.yml",
        keeper="planhost",
        plan_file=str(plan_file),
        lock_timeout=1,
    )
    with open(lock, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        stderr = inventory(hosts, source, ok=False)
    assert (
        f"plan_file: another run has held planhost:{plan_file}.lock for more than 1 s"
        " (lock_timeout)" in stderr
    )
    inv = inventory(hosts, source)[0]
    assert hosts_of(inv, "mv6_guests") == {"rtr6", "web6", "db6"}


def test_a_keeper_that_is_not_in_the_inventory_so_far(tmp_path, keeper):
    _plan_data, plan_file, hosts = keeper
    source = config(
        tmp_path / "inv" / "guests.mv6.yml", keeper="planhost", plan_file=str(plan_file)
    )
    message = (
        "keeper: 'planhost' is not a host of the inventory read so far; list the source that"
        " defines it (a static hosts file) before this one"
    )
    assert message in inventory(source, ok=False)
    # listed after the plugin's source: the same
    assert message in inventory(source, hosts, ok=False)


def test_a_keeper_without_the_plan(tmp_path, keeper):
    _plan_data, plan_file, hosts = keeper
    missing = plan_file.parent / "other.yml"
    source = config(tmp_path / "inv" / "guests.mv6.yml", keeper="planhost", plan_file=str(missing))
    assert f"plan_file: planhost:{missing} does not exist" in inventory(hosts, source, ok=False)
    nowhere = tmp_path / "nowhere" / "mv6_plan.yml"
    config(source, keeper="planhost", plan_file=str(nowhere))
    stderr = inventory(hosts, source, ok=False)
    assert f"plan_file: {nowhere.parent} cannot be entered on the keeper 'planhost'" in stderr


def test_a_keepers_corrupt_or_version_1_plan_is_named_on_the_keeper(tmp_path, keeper):
    _plan_data, plan_file, hosts = keeper
    source = config(
        tmp_path / "inv" / "guests.mv6.yml", keeper="planhost", plan_file=str(plan_file)
    )
    (plan_file.parent / "mv6_plan.d" / "hv2.json").write_text("[]")
    stderr = inventory(hosts, source, ok=False)
    assert (
        f"plan_file: planhost:{plan_file.parent}/mv6_plan.d/hv2.json is corrupt"
        " (it is not the entry of host hv2)" in stderr
    )
    assert "mv6-plan-" not in stderr  # the controller's copy is not named
    v1 = tmp_path / "v1" / "mv6_plan.yml"
    v1.parent.mkdir()
    _v1_plan(v1)
    config(source, keeper="planhost", plan_file=str(v1))
    stderr = inventory(hosts, source, ok=False)
    assert f"plan_file: planhost:{v1} is a version 1 plan; run the planner once" in stderr


def test_an_unreachable_keeper_fails_quickly_and_names_it(tmp_path):
    hosts = write(
        tmp_path / "hosts.yml",
        """\
        all:
          hosts:
            planhost:
              ansible_connection: ssh
              # loopback, where nothing listens: test traffic never leaves this machine
              ansible_host: 127.0.0.1
              ansible_port: 9
              ansible_ssh_common_args: -o ConnectTimeout=2
              # ssh takes the first ConnectTimeout it is given: the plugin's own (timeout)
              ansible_ssh_timeout: 2
        """,
    )
    source = config(tmp_path / "g.mv6.yml", keeper="planhost", plan_file="/var/lib/mv6-plan/x.yml")
    start = time.monotonic()
    stderr = inventory(hosts, source, ok=False, timeout=30)
    assert time.monotonic() - start < 20
    assert "keeper: cannot reach 'planhost' over its connection ssh" in stderr
    assert "use_vars_plugins" in stderr


def test_the_keepers_host_vars_directory_with_use_vars_plugins(tmp_path, keeper):
    _plan_data, plan_file, _hosts = keeper
    hosts = write(tmp_path / "inv2" / "hosts.yml", "all:\n  hosts:\n    planhost:\n")
    write(tmp_path / "inv2" / "host_vars" / "planhost.yml", "ansible_connection: local\n")
    source = config(
        tmp_path / "inv2" / "guests.mv6.yml",
        keeper="planhost",
        plan_file=str(plan_file),
        use_vars_plugins=True,
    )
    inv = inventory(hosts, source)[0]
    assert hosts_of(inv, "mv6_guests") == {"rtr6", "web6", "db6"}


# --- unpacking the keeper's archive --------------------------------------------------------
def archive(*members: tuple[str, bytes | str | None]) -> bytes:
    """A tar archive: (name, bytes) a file, (name, None) a directory, (name, str) a
    symbolic link to str."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_the_archive_gives_the_site_file_and_the_host_files_only(tmp_path):
    data = archive(
        ("mv6_plan.yml", b"site"),
        ("mv6_plan.d", None),
        ("mv6_plan.d/hv1.json", b"{}"),
        ("mv6_plan.d/notes.txt", b"skipped"),
        ("mv6_plan.d/sub", None),
        ("mv6_plan.d/sub/x.json", b"skipped"),
    )
    site = plugin.extract_plan(data, str(tmp_path), "/var/lib/mv6-plan/mv6_plan.yml")
    assert site == str(tmp_path / "mv6_plan.yml")
    assert snapshot(tmp_path).keys() == {"mv6_plan.yml", "mv6_plan.d/hv1.json"}
    assert (tmp_path / "mv6_plan.d").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ((("../mv6_plan.yml", b"x"),), "unexpected entry '../mv6_plan.yml'"),
        ((("/etc/mv6_plan.yml", b"x"),), "unexpected entry '/etc/mv6_plan.yml'"),
        ((("mv6_plan.yml", "/etc/shadow"),), "mv6_plan.yml is not a regular file"),
        ((("mv6_plan.d/hv1.json", "../../x"),), "mv6_plan.d/hv1.json is not a regular file"),
        ((("other.yml", b"x"),), "unexpected entry 'other.yml'"),
    ],
)
def test_the_archive_refuses_anything_else(tmp_path, members, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        plugin.extract_plan(archive(*members), str(tmp_path), "/p/mv6_plan.yml")
    assert not (tmp_path / "mv6_plan.yml").exists()


def test_the_archive_has_a_size_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(plugin, "MAX_ARCHIVE", 1 << 20)
    fits = archive(("mv6_plan.yml", b"x" * 1000), ("mv6_plan.d/a.json", b"y" * 1000000))
    assert len(fits) <= 1 << 20
    plugin.extract_plan(fits, str(tmp_path), "/p/mv6_plan.yml")
    assert (tmp_path / "mv6_plan.d" / "a.json").stat().st_size == 1000000
    with pytest.raises(ValueError, match=f"^{re.escape('the archive is larger than 1 MiB')}$"):
        plugin.extract_plan(b"\0" * ((1 << 20) + 1), str(tmp_path / "x"), "/p/mv6_plan.yml")


def test_the_keeper_command_is_one_shell_command_that_only_reads(tmp_path):
    """The command itself, run here: a version 1 plan (no .d directory) is one file."""
    (tmp_path / "mv6_plan.yml").write_text("version: 1\n")
    cmd = plugin.keeper_command(str(tmp_path / "mv6_plan.yml"), 5)
    proc = subprocess.run(cmd, shell=True, capture_output=True, check=False, timeout=30)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        assert tar.getnames() == ["mv6_plan.yml"]
    assert sorted(os.listdir(tmp_path)) == ["mv6_plan.yml"]


def test_a_guest_named_like_a_host_of_another_source_is_refused(tmp_path):
    """Merged into that host, the guest's connection variables would take its over, and the
    host's tasks would run in a virtual machine."""
    plan_file = tmp_path / "inv" / "mv6_plan.yml"
    site_plan(plan_file)
    hosts = write(tmp_path / "inv" / "hosts.yml", "all:\n  hosts:\n    web6:\n")
    source = config(tmp_path / "inv" / "guests.mv6.yml", plan_file="mv6_plan.yml")
    stderr = inventory(hosts, source, ok=False)
    assert "guest web6 of hypervisor hv1 has the name of host web6 of another" in stderr


def test_the_example_awx_inventory_reaches_its_keeper_as_root(tmp_path):
    """inventories/awx/ as the guests' inventory source reads it: the keeper's user and SSH
    options come from group_vars/all.yml (use_vars_plugins). The keeper's address is moved
    to loopback, where nothing listens, so the attempt fails at once; its log shows the
    connection it was given."""
    copy = tmp_path / "awx"
    shutil.copytree(ROOT / "inventories" / "awx", copy)
    hosts = yaml.safe_load((copy / "hosts.yml").read_text())
    keeper = hosts["all"]["children"]["mv6_plan_keepers"]["hosts"]["planhost"]
    keeper.update(ansible_host="127.0.0.1", ansible_port=9)
    (copy / "hosts.yml").write_text(yaml.safe_dump(hosts))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    proc = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", str(copy), "--list", "-vvvv"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    exec_lines = [line for line in proc.stdout.splitlines() if "SSH: EXEC ssh" in line]
    assert exec_lines, proc.stdout[-3000:]
    assert 'User="root"' in exec_lines[0], exec_lines[0]
    assert "ServerAliveInterval=5" in exec_lines[0], exec_lines[0]
    assert "keeper: cannot reach 'planhost'" in " ".join(proc.stderr.split()), proc.stderr
