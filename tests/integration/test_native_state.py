"""native_state on a real network stack: a namespace this test creates and removes.

The module runs unchanged (as Ansible would run it, from an argument file) inside
``ip netns exec``, so it reads that namespace's links, routes, nftables ruleset and
/proc/sys/net, never the host's.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
PYTHON = str(TOP / ".venv" / "bin" / "python")
MODULE = "ansible_collections.mv6.transition.plugins.modules.native_state"

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="creates a network namespace: needs root"),
]


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def netns():
    name = f"t-lab-{uuid.uuid4().hex[:8]}"
    _sh("ip", "netns", "add", name)
    try:

        def run(*argv: str) -> str:
            return _sh("ip", "netns", "exec", name, *argv)

        run("ip", "link", "set", "lo", "up")
        run("ip", "link", "add", "t-lab-a", "type", "veth", "peer", "name", "t-lab-b")
        run("ip", "link", "set", "t-lab-a", "up")
        run("ip", "link", "set", "t-lab-b", "up")
        run("ip", "addr", "add", "198.51.100.10/24", "dev", "t-lab-a", "nodad")
        # The kernel adds each veth's link-local address (and its local route) a moment after
        # the carrier comes up: wait for it, or a record taken now differs from a later one.
        deadline = time.monotonic() + 20
        while True:
            shown = run("ip", "-6", "-o", "addr", "show", "scope", "link")
            ready = all(f"{dev} " in shown for dev in ("t-lab-a", "t-lab-b"))
            if ready and "tentative" not in shown:
                break
            assert time.monotonic() < deadline, f"no link-local addresses yet: {shown}"
            time.sleep(0.2)
        yield name, run
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def module(netns_name: str, tmp_path: Path, check_mode: bool = False, **args) -> dict:
    argfile = tmp_path / f"args-{uuid.uuid4().hex[:6]}.json"
    args.setdefault("state_dir", str(tmp_path / "records"))
    payload = dict(args, _ansible_check_mode=check_mode)
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": payload}))
    proc = subprocess.run(
        ["ip", "netns", "exec", netns_name, PYTHON, "-m", MODULE, str(argfile)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(TOP / ".collections")),
        check=False,
    )
    result = json.loads(proc.stdout)
    assert not result.get("failed"), result.get("msg")
    return result


def test_unchanged_namespace_compares_identical(netns, tmp_path):
    name = netns[0]
    first = module(name, tmp_path, op="record", label="before-run")
    assert first["changed"] is True
    assert Path(first["record_path"]).is_file()
    assert "t-lab-a 198.51.100.10/24" in first["native_state"]["sections"]["addresses"]
    again = module(name, tmp_path, op="record", label="before-run")
    assert again["changed"] is False, "an unchanged host must record the same state"
    result = module(name, tmp_path, op="compare", against="before-run")
    assert result["identical"] is True, result["differences"]


def test_changed_address_sysctl_and_ruleset_are_named(netns, tmp_path):
    name, run = netns
    module(name, tmp_path, op="record", label="before-run")
    run("ip", "addr", "del", "198.51.100.10/24", "dev", "t-lab-a")
    run("ip", "addr", "add", "198.51.100.11/24", "dev", "t-lab-a", "nodad")
    run("sysctl", "-qw", "net.ipv4.ip_forward=1")
    run("nft", "add", "table", "inet", "t_lab_native")
    result = module(name, tmp_path, op="compare", against="before-run")
    assert result["identical"] is False
    lines = result["differences"]
    assert "addresses: removed t-lab-a 198.51.100.10/24" in lines
    assert "addresses: added t-lab-a 198.51.100.11/24" in lines
    assert "sysctls: changed net.ipv4.ip_forward: 0 -> 1" in lines
    assert "ruleset: added inet t_lab_native table" in lines
    assert any(
        line.startswith("routes: removed ipv4") and "198.51.100.10" in line for line in lines
    )


def test_objects_mv6_owns_are_not_native(netns, tmp_path):
    name, run = netns
    module(name, tmp_path, op="record", label="before-run")
    run("ip", "link", "add", "mv6br0", "type", "bridge")
    run("ip", "link", "add", "mv6p0", "type", "veth", "peer", "name", "t-lab-up1")
    run("ip", "link", "set", "mv6p0", "master", "mv6br0")
    run("ip", "link", "set", "mv6br0", "up")
    run("sysctl", "-qw", "net.ipv6.conf.mv6br0.disable_ipv6=1")
    run("nft", "add", "table", "bridge", "mv6_isolation")
    run("nft", "add", "chain", "bridge", "mv6_isolation", "guard")
    result = module(
        name,
        tmp_path,
        op="compare",
        against="before-run",
        exclude_interfaces=["mv6br0", "mv6p*", "t-lab-up1"],
    )
    assert result["identical"] is True, result["differences"]


def test_pre_mv6_record_is_written_once(netns, tmp_path):
    name, run = netns
    first = module(name, tmp_path, op="record", label="pre-mv6", overwrite=False)
    assert first["changed"] is True
    run("ip", "addr", "add", "198.51.100.20/24", "dev", "t-lab-b", "nodad")
    kept = module(name, tmp_path, op="record", label="pre-mv6", overwrite=False)
    assert (kept["changed"], kept["kept"]) == (False, True)
    result = module(name, tmp_path, op="compare", against="pre-mv6")
    assert "addresses: added t-lab-b 198.51.100.20/24" in result["differences"]


def test_check_mode_writes_nothing_and_reference_compares(netns, tmp_path):
    name, run = netns
    seen = module(name, tmp_path, check_mode=True, op="record", label="before-run")
    assert seen["changed"] is True
    assert not Path(seen["record_path"]).exists()
    run("ip", "link", "set", "t-lab-b", "mtu", "1400")
    result = module(name, tmp_path, op="compare", reference=seen["native_state"])
    assert "links: changed t-lab-b: mtu 1500 -> 1400" in result["differences"]


def test_missing_record_is_a_clear_error(netns, tmp_path):
    name = netns[0]
    argfile = tmp_path / "args.json"
    argfile.write_text(
        json.dumps(
            {
                "ANSIBLE_MODULE_ARGS": {
                    "op": "compare",
                    "against": "pre-mv6",
                    "state_dir": str(tmp_path / "none"),
                }
            }
        )
    )
    proc = subprocess.run(
        ["ip", "netns", "exec", name, PYTHON, "-m", MODULE, str(argfile)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(TOP / ".collections")),
        check=False,
    )
    result = json.loads(proc.stdout)
    assert result["failed"] is True
    assert result["msg"] == f"against: no native state record '{tmp_path}/none/pre-mv6.json'"


def test_device_left_out_of_a_record_does_not_change_it(netns, tmp_path):
    """site.yml's per-run record leaves /dev/kvm out: roles/hypervisor changes it on run 1."""
    name = netns[0]
    node = tmp_path / "t-lab-device"
    node.write_text("")
    node.chmod(0o600)
    args = {"devices": [str(node)]}
    module(name, tmp_path, op="record", label="before-run", exclude_devices=[str(node)], **args)
    module(name, tmp_path, op="record", label="pre-mv6", overwrite=False, **args)
    node.chmod(0o660)
    again = module(
        name, tmp_path, op="record", label="before-run", exclude_devices=[str(node)], **args
    )
    assert again["changed"] is False, "an excluded device must not change the record"
    assert str(node) not in again["native_state"]["sections"]["devices"]
    # The record's own exclusion holds when it is compared with later (as for interfaces).
    same = module(name, tmp_path, op="compare", against="before-run", **args)
    assert same["identical"] is True, same["differences"]
    changed = module(name, tmp_path, op="compare", against="pre-mv6", **args)
    assert changed["differences"] == [f"devices: changed {node}: mode 0600 -> 0660"]
