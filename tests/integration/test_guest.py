"""roles/guest on real libvirt and QEMU (TCG): boot, idempotence, check mode, non-persistent
discard and commit, a bounded agent wait, and removal.

The guests sit on a bridge this module creates (``t-gstbr0``, no address, IPv6 off on it) and
their layers in a state directory of their own; the golden image is a private read-only copy
of the newest one roles/golden_image built (see golden_image()). Everything the tests create
is removed in finalizers, also on failure.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import with_site
from guestlib import URI, agent, golden_image, guest_run, remove_domains, sh

TOP = Path(__file__).resolve().parents[2]
BIN = TOP / ".venv" / "bin"
BRIDGE = "t-gstbr0"
WORK = Path("/var/tmp/t-gst/it-guest")
GUEST = "t-gst-a"
TIMINGS: dict[str, float] = {}

pytestmark = [
    pytest.mark.libvirt,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (libvirt system URI, bridges)"),
]


def playbook(work: Path, extra: dict, *args: str, timeout: int = 600) -> tuple[int, str, dict]:
    """Run roles/guest on localhost with the vars in ``extra``; return rc, output, recap."""
    varfile = work / "extra.json"
    varfile.write_text(json.dumps(extra))
    env = dict(
        os.environ,
        PATH=f"{BIN}:{os.environ['PATH']}",
        ANSIBLE_CONFIG=str(TOP / "ansible.cfg"),
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [
            str(BIN / "ansible-playbook"),
            "-i",
            "localhost,",
            str(work / "site.yml"),
            "-e",
            f"@{varfile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TOP,
        env=env,
        check=False,
    )
    out = proc.stdout + proc.stderr
    recap = {}
    match = re.search(r"^localhost\s+:\s+(.*)$", out, re.M)
    if match:
        recap = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(1))}
    return proc.returncode, out, recap


def guest_exec(domain: str, *argv: str, timeout: int = 60) -> tuple[int, str]:
    """Run argv in the guest through its agent; return exit code and stdout."""
    return guest_run(domain, argv[0], list(argv[1:]), timeout=timeout)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


SITE = """
- name: Guests of this hypervisor
  hosts: localhost
  gather_facts: false
  vars:
    ansible_connection: local
    ansible_python_interpreter: "{{ ansible_playbook_python }}"
  roles:
    - role: mv6.transition.guest
"""


# --- fixtures ----------------------------------------------------------------------------
def golden_versions(image: dict) -> dict[str, dict]:
    """Two versions of one golden image (v1, v2: hard links of the test's copy, each with a
    build record naming the image debian12), as roles/golden_image leaves them after a
    rebuild. The guests are made on v1; test_restart_with_commit_... rebuilds to v2."""
    images = WORK / "images"
    images.mkdir()
    images.chmod(0o755)
    versions = {}
    for version in ("v1", "v2"):
        path = images / f"debian12-{version}.qcow2"
        os.link(image["path"], path)
        (images / f"debian12-{version}.recipe.json").write_text(
            json.dumps({"name": "debian12", "version": version})
        )
        versions[version] = dict(image, path=str(path))
    return versions


@pytest.fixture(scope="module")
def lab():
    image = golden_image()
    if image is None:
        pytest.skip("no golden image: run roles/golden_image or set MV6_TEST_GOLDEN")
    sh("bash", str(TOP / "scripts" / "libvirt-up.sh"))
    remove_domains("t-gst-")
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "guests").mkdir(parents=True)
    WORK.chmod(0o755)
    (WORK / "site.yml").write_text(SITE)
    sh("ip", "link", "del", BRIDGE, check=False)
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    try:
        sh("sysctl", "-q", "-w", f"net.ipv6.conf.{BRIDGE}.disable_ipv6=1")
        sh("ip", "link", "set", BRIDGE, "up")
        golden_sum = sha256(image["path"])
        versions = golden_versions(image)
        base = with_site(
            {
                "mv6_hypervisor_accel_effective": "qemu",
                "mv6_parallel": {"bridge": BRIDGE},
                "mv6_guest_state_dir": str(WORK / "guests"),
                "mv6_guest_images": {"debian12": versions["v1"]},
                "mv6_guest_agent_timeout": 480,
                "mv6_plan": {
                    "version": 1,
                    "native_family": "ipv4",
                    "parallel_family": "ipv6",
                    "prefix": "2001:db8:6a00::/48",
                    "layout": "per_host",
                    "host_prefixlen": 64,
                    "address_mode": "sequential",
                    "hosts": {
                        "localhost": {
                            "slot": 0,
                            "released": False,
                            "subnet": "2001:db8:6a00::/64",
                            "gateway": None,
                            "dns": [],
                            "guests": {
                                GUEST: {
                                    "slot": 0,
                                    "released": False,
                                    "mac": "02:6d:76:6a:00:0a",
                                    "address": "2001:db8:6a00::a",
                                    "prefixlen": 64,
                                    "port": "t-gstp0",
                                    "router": False,
                                },
                                "t-gst-dead": {
                                    "slot": 1,
                                    "released": False,
                                    "mac": "02:6d:76:6a:00:0d",
                                    "address": "2001:db8:6a00::d",
                                    "prefixlen": 64,
                                    "port": "t-gstp1",
                                    "router": False,
                                },
                                "t-gst-foreign": {
                                    "slot": 3,
                                    "released": False,
                                    "mac": "02:6d:76:6a:00:0f",
                                    "address": "2001:db8:6a00::f",
                                    "prefixlen": 64,
                                    "port": "t-gstp3",
                                    "router": False,
                                },
                            },
                        }
                    },
                },
            }
        )
        yield {"image": image, "base": base, "golden_sum": golden_sum, "versions": versions}
    finally:
        remove_domains("t-gst-")
        shutil.rmtree(WORK, ignore_errors=True)
        sh("ip", "link", "del", BRIDGE, check=False)
        if TIMINGS:
            print("\nroles/guest timings (s):", json.dumps(TIMINGS))


def run(lab, guests: list[dict], *args: str, **extra) -> tuple[int, str, dict]:
    return playbook(WORK, dict(lab["base"], mv6_guests=guests, **extra), *args)


GUEST_ITEM = {"name": GUEST, "persistence": "non_persistent", "memory_mib": 384}


# --- tests, in order: they share the one guest --------------------------------------------
def test_bad_input_fails_before_any_change(lab):
    rc, out, _recap = run(lab, [{"name": "t-gst-unplanned"}])
    assert rc != 0
    expected = "mv6_guests[0].name: guest t-gst-unplanned has no entry in mv6_plan.hosts.localhost"
    assert expected in out
    rc, out, _recap = run(lab, [{"name": GUEST, "persistence": "sometimes"}])
    assert rc != 0
    assert "persistence" in out and "sometimes" in out
    # The planner's name rule, even for a guest to remove (which needs no plan slot): the
    # role took "Web6" before, which the planner refuses.
    rc, out, _recap = run(lab, [{"name": "Web6", "state": "absent"}])
    assert rc != 0
    assert "mv6_guests[0].name: must be a guest name" in out and "Web6" in out
    assert not (WORK / "guests" / GUEST).exists(), "bad input must change nothing"
    assert GUEST not in sh("virsh", "-q", "-c", URI, "list", "--all", "--name").stdout.split()


def test_first_run_boots_guest_to_its_agent(lab):
    start = time.monotonic()
    rc, out, recap = run(lab, [GUEST_ITEM])
    TIMINGS["first_run_boot_to_agent"] = round(time.monotonic() - start, 1)
    assert rc == 0, out[-4000:]
    assert recap["changed"] > 0
    assert agent(GUEST, {"execute": "guest-ping"}) == {}
    xml = sh("virsh", "-c", URI, "dumpxml", GUEST).stdout
    assert xml.count("<interface ") == 1
    assert f"<source bridge='{BRIDGE}'/>" in xml and "<target dev='t-gstp0'/>" in xml
    assert "<mac address='02:6d:76:6a:00:0a'/>" in xml
    assert "network=" not in xml and "<graphics" not in xml
    assert "org.qemu.guest_agent.0" in xml and 'xmlns:mv6="https://mv6.invalid/transition"' in xml
    pid = sh("pgrep", "-f", f"guest={GUEST},").stdout.split()[0]
    assert sh("ps", "-o", "user=", "-p", pid).stdout.strip() == "libvirt-qemu"
    guest_dir = WORK / "guests" / GUEST
    assert (guest_dir / "session.qcow2").is_file() and (guest_dir / "persistent.qcow2").is_file()
    assert f"{GUEST}: guest agent answered" in out


def test_second_run_changes_nothing(lab):
    rc, out, recap = run(lab, [GUEST_ITEM])
    assert rc == 0, out[-4000:]
    assert recap["changed"] == 0, out[-4000:]


def test_new_definition_of_a_running_guest_waits_for_its_next_start(lab):
    """Another memory size for a running guest: the domain is defined again, the run says the
    change waits for the next start, and the guest keeps running on the old definition. (The
    note read ``.state`` from the domain's state string and failed the run.)"""
    pid = sh("pgrep", "-f", f"guest={GUEST},").stdout.split()[0]
    try:
        rc, out, _recap = run(lab, [dict(GUEST_ITEM, memory_mib=416)])
        assert rc == 0, out[-4000:]
        flat = " ".join(out.split())  # the YAML callback folds long messages
        assert f"{GUEST}: new domain definition; it takes effect at the guest" in flat, out[-4000:]
        assert (
            "<memory unit='KiB'>425984</memory>"
            in sh("virsh", "-c", URI, "dumpxml", "--inactive", GUEST).stdout
        )
        assert sh("pgrep", "-f", f"guest={GUEST},").stdout.split()[0] == pid
        assert agent(GUEST, {"execute": "guest-ping"}) == {}
    finally:
        rc, out, _recap = run(lab, [GUEST_ITEM])  # the definition the next tests expect
    assert rc == 0, out[-4000:]


def test_check_mode_changes_nothing(lab):
    before = sh("virsh", "-c", URI, "dumpxml", "--inactive", GUEST).stdout
    rc, out, recap = run(lab, [GUEST_ITEM], "--check")
    assert rc == 0, out[-4000:]
    assert recap["changed"] == 0, out[-4000:]
    assert sh("virsh", "-c", URI, "dumpxml", "--inactive", GUEST).stdout == before


def test_check_mode_reports_a_stop_without_stopping(lab):
    rc, out, recap = run(lab, [dict(GUEST_ITEM, state="stopped")], "--check")
    assert rc == 0, out[-4000:]
    assert recap["changed"] > 0
    assert sh("virsh", "-q", "-c", URI, "domstate", GUEST).stdout.strip() == "running"


# --- the guest_agent connection, on the running guest ----------------------------------------
# A user's own role run in the guest through mv6.transition.guest_agent (templates, files,
# lineinfile, a service with a handler), files both ways, become, bounds and an unreachable
# guest. The guest is reached through its hypervisor (localhost, connection local here; the
# fleet scenario runs the same connection through SSH to containerised hypervisors).
AGENT_ROLE = {
    "tasks/main.yml": """
- name: Install the demo configuration
  ansible.builtin.template:
    src: demo.conf.j2
    dest: /etc/mv6-demo.conf
    owner: root
    mode: "0644"
  notify: Restart the demo service
- name: Install the demo unit
  ansible.builtin.copy:
    src: mv6-demo.service
    dest: /etc/systemd/system/mv6-demo.service
    mode: "0644"
  notify: Restart the demo service
- name: Set the demo's mode
  ansible.builtin.lineinfile:
    path: /etc/default/mv6-demo
    regexp: "^MODE="
    line: "MODE=agent"
    create: true
    mode: "0644"
  notify: Restart the demo service
- name: Run the demo service
  ansible.builtin.systemd_service:
    name: mv6-demo.service
    state: started
    enabled: true
    daemon_reload: true
""",
    "handlers/main.yml": """
- name: Restart the demo service
  ansible.builtin.systemd_service:
    name: mv6-demo.service
    state: restarted
""",
    "templates/demo.conf.j2": (
        "guest={{ inventory_hostname }}\nhypervisor={{ mv6_guest_hypervisor }}\n"
    ),
    "files/mv6-demo.service": (
        "[Unit]\nDescription=mv6 demo\n[Service]\n"
        "ExecStart=/bin/sh -c 'cat /etc/mv6-demo.conf /etc/default/mv6-demo > /run/mv6-demo.seen;"
        " exec sleep infinity'\n"
        "[Install]\nWantedBy=multi-user.target\n"
    ),
}

AGENT_PLAY = (
    SITE
    + """
- name: A user's own work in the guest, over the guest_agent connection
  hosts: mv6_guests
  gather_facts: false
  tasks:
    - name: The connection the guest got
      ansible.builtin.assert:
        that: ansible_connection == 'mv6.transition.guest_agent'
    - name: Apply the demo role
      ansible.builtin.include_role:
        name: demo
    - name: Copy 1 MiB in
      ansible.builtin.copy:
        src: "{{ agent_blob }}"
        dest: /root/blob.bin
        mode: "0600"
    - name: Fetch it back
      ansible.builtin.fetch:
        src: /root/blob.bin
        dest: "{{ agent_fetched }}/"
        flat: true
    - name: Output far past one agent reply (libvirt refuses a reply over 10 MiB)
      ansible.builtin.shell: head -c 11000000 /dev/zero | tr '\\0' x
      register: agent_big
      changed_when: false
    - name: As another guest user, with runuser (pipelined)
      ansible.builtin.command: id -un
      become: true
      become_user: nobody
      register: agent_runuser
      changed_when: false
    - name: As another guest user, with su
      ansible.builtin.command: id -un
      become: true
      become_method: ansible.builtin.su
      become_user: nobody
      register: agent_su
      changed_when: false
    - name: Facts
      ansible.builtin.setup:
        gather_subset: [min]
    - name: A command past its bound is killed with its children
      ansible.builtin.shell: sleep 567 & sleep 568
      vars:
        mv6_guest_agent_exec_timeout: 3
      register: agent_slow
      ignore_errors: true
    - name: Report
      ansible.builtin.copy:
        dest: "{{ agent_report }}"
        content: "{{ {'big': agent_big.stdout | length, 'runuser': agent_runuser.stdout,
                      'su': agent_su.stdout, 'slow': agent_slow.msg | default(''),
                      'distribution': ansible_facts.distribution | default('')} | to_json }}"
        mode: "0644"
      delegate_to: localhost
      connection: local
      vars:
        ansible_python_interpreter: "{{ ansible_playbook_python }}"
"""
)


def agent_staging() -> str:
    """The guest directory of the connection's work files, from the helper itself."""
    path = TOP / "plugins" / "module_utils" / "_guest_agent.py"
    spec = importlib.util.spec_from_file_location("mv6_guest_agent_helper", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.STAGING


def agent_playbook(lab, tmp: Path, *args: str) -> tuple[int, str]:
    work = WORK / "agent"
    shutil.rmtree(work, ignore_errors=True)
    for rel, text in AGENT_ROLE.items():
        path = work / "roles" / "demo" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (work / "site.yml").write_text(AGENT_PLAY)
    blob = tmp / "blob.bin"
    if not blob.exists():
        blob.write_bytes(os.urandom(1 << 20))
    extra = dict(
        lab["base"],
        mv6_guests=[GUEST_ITEM],
        agent_blob=str(blob),
        agent_fetched=str(tmp / "fetched"),
        agent_report=str(tmp / "report.json"),
    )
    rc, out, _recap = playbook(work, extra, *args)
    return rc, out


def test_a_users_role_runs_in_the_guest_over_the_agent_connection(lab, tmp_path):
    rc, out = agent_playbook(lab, tmp_path)
    assert rc == 0, out[-6000:]
    recap = re.search(rf"^{GUEST}\s+:\s+(.*)$", out, re.M)
    assert recap and "failed=0" in recap.group(1) and "unreachable=0" in recap.group(1), out[-4000:]
    # What the role did, read back through the agent by another path (virsh, not Ansible).
    assert guest_exec(GUEST, "/bin/cat", "/etc/mv6-demo.conf") == (
        0,
        f"guest={GUEST}\nhypervisor=localhost\n",
    )
    code, state = guest_exec(GUEST, "/bin/systemctl", "is-active", "mv6-demo.service")
    assert (code, state.strip()) == (0, "active")
    # The handler ran once, after all three changes: the service saw the final file.
    assert guest_exec(GUEST, "/bin/cat", "/run/mv6-demo.seen")[1].endswith("MODE=agent\n")
    assert out.count("RUNNING HANDLER [demo : Restart the demo service]") == 1
    # Files both ways, whole.
    assert sha256(str(tmp_path / "fetched" / "blob.bin")) == sha256(str(tmp_path / "blob.bin"))
    code, digest = guest_exec(GUEST, "/usr/bin/sha256sum", "/root/blob.bin")
    assert digest.split()[0] == sha256(str(tmp_path / "blob.bin"))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["big"] == 11_000_000
    assert report["runuser"] == "nobody" and report["su"] == "nobody"
    assert report["distribution"] == "Debian"
    assert "ran longer than 3 s and was killed" in report["slow"], report
    assert "mv6_guest_agent_exec_timeout" in report["slow"]
    code, procs = guest_exec(
        GUEST,
        "/bin/sh",
        "-c",
        "for p in /proc/[0-9]*; do tr '\\0' ' ' <$p/cmdline; echo; done 2>/dev/null",
    )
    assert "sleep 567" not in procs and "sleep 568" not in procs, procs
    # Nothing left behind in the guest's work directory, and the agent still answers.
    assert guest_exec(GUEST, "/bin/ls", "-A", agent_staging()) == (0, "")
    assert agent(GUEST, {"execute": "guest-ping"}) == {}

    # (Idempotence over this connection is shown by every second run of roles/guest_network in
    # test_guest_network.py and the lab; a second run here cost 100 s of CI.)


def test_a_guest_whose_agent_cannot_answer_is_unreachable_and_named(lab, tmp_path):
    """A paused guest's agent cannot answer: the run reports the guest unreachable and names
    it, its hypervisor and its serial log."""
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(
        json.dumps(
            {
                "all": {
                    "hosts": {
                        "localhost": {
                            "ansible_connection": "local",
                            "ansible_python_interpreter": str(BIN / "python"),
                        },
                        GUEST: {
                            "ansible_connection": "mv6.transition.guest_agent",
                            "mv6_guest_hypervisor": "localhost",
                            "mv6_guest_agent_command_timeout": 5,
                        },
                    }
                }
            }
        )
    )
    env = dict(os.environ, ANSIBLE_CONFIG=str(TOP / "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    sh("virsh", "-c", URI, "suspend", GUEST)
    try:
        proc = subprocess.run(
            [str(BIN / "ansible"), "-i", str(inventory), GUEST, "-m", "ping"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )
    finally:
        sh("virsh", "-c", URI, "resume", GUEST)
    out = " ".join((proc.stdout + proc.stderr).split())
    assert proc.returncode == 4, out  # 4: a host was unreachable
    assert "UNREACHABLE" in out and f"guest {GUEST} on hypervisor localhost" in out, out
    assert str(WORK / "guests" / GUEST / "serial.log") in out, out
    assert agent(GUEST, {"execute": "guest-ping"}) == {}


def write_marker(name: str) -> None:
    code, _output = guest_exec(GUEST, "/bin/sh", "-c", f"echo mv6 > /root/{name} && sync")
    assert code == 0
    assert guest_exec(GUEST, "/bin/cat", f"/root/{name}") == (0, "mv6\n")


def test_restart_of_non_persistent_guest_discards_the_session(lab):
    write_marker("t-gst-discarded")
    rc, out, _recap = run(lab, [dict(GUEST_ITEM, state="stopped")])
    assert rc == 0, out[-4000:]
    assert sh("virsh", "-q", "-c", URI, "domstate", GUEST).stdout.strip() == "shut off"
    start = time.monotonic()
    rc, out, _recap = run(lab, [GUEST_ITEM])
    TIMINGS["restart_with_discard_to_agent"] = round(time.monotonic() - start, 1)
    assert rc == 0, out[-4000:]
    code, _output = guest_exec(GUEST, "/bin/ls", "/root/t-gst-discarded")
    assert code != 0, "the file written in the last session must be gone after a discard"


def test_restart_with_commit_keeps_the_session_on_its_own_golden_version(lab):
    """A commit at the stop keeps the session's write. The golden image is rebuilt meanwhile
    (version 2, same image name): guest_disk keeps the guest on version 1, and the domain's
    backing chain must say so. Before, the XML named version 2: the guest would have read its
    changes over another base. The committed write reads back after the start on v2's run."""
    versions = lab["versions"]
    write_marker("t-gst-committed")
    item = dict(GUEST_ITEM, session_action="commit")
    rc, out, _recap = run(lab, [dict(item, state="stopped")])
    assert rc == 0, out[-4000:]
    rc, out, _recap = run(lab, [item], mv6_guest_images={"debian12": versions["v2"]})
    assert rc == 0, out[-4000:]
    flat = " ".join(out.split())
    assert "stays on" in flat and "earlier version" in flat, out[-4000:]
    xml = sh("virsh", "-c", URI, "dumpxml", "--inactive", GUEST).stdout
    assert f"<source file='{versions['v1']['path']}'/>" in xml, xml
    assert versions["v2"]["path"] not in xml
    assert guest_exec(GUEST, "/bin/cat", "/root/t-gst-committed") == (0, "mv6\n")


def test_agent_wait_is_bounded_and_names_the_guest(lab, tmp_path):
    # A guest whose disk holds no system: the kernel boots, finds no root, never starts an agent.
    blank = WORK / "blank.qcow2"
    sh("qemu-img", "create", "-q", "-f", "qcow2", str(blank), "64M")
    blank.chmod(0o444)
    images = {"debian12": lab["versions"]["v1"], "blank": dict(lab["image"], path=str(blank))}
    start = time.monotonic()
    rc, out, _recap = run(
        lab,
        [GUEST_ITEM, {"name": "t-gst-dead", "image": "blank", "memory_mib": 256}],
        mv6_guest_images=images,
        mv6_guest_agent_timeout=15,
    )
    elapsed = time.monotonic() - start
    assert rc != 0
    assert "mv6_guest_agent_timeout: t-gst-dead did not answer guest-ping" in out
    assert "within 15 s" in out and str(WORK / "guests" / "t-gst-dead" / "serial.log") in out
    assert elapsed < 120
    rc, out, _recap = run(
        lab,
        [GUEST_ITEM, {"name": "t-gst-dead", "image": "blank", "state": "absent"}],
        mv6_guest_images=images,
    )
    assert rc == 0, out[-4000:]
    assert not (WORK / "guests" / "t-gst-dead").exists()


def test_absent_removes_the_guest_and_keeps_the_golden_image(lab):
    rc, out, _recap = run(lab, [dict(GUEST_ITEM, state="absent")])
    assert rc == 0, out[-4000:]
    assert GUEST not in sh("virsh", "-q", "-c", URI, "list", "--all", "--name").stdout.split()
    assert not (WORK / "guests" / GUEST).exists()
    assert sha256(lab["image"]["path"]) == lab["golden_sum"]
    assert oct(Path(lab["image"]["path"]).stat().st_mode & 0o777) == "0o444"
    rc, out, recap = run(lab, [dict(GUEST_ITEM, state="absent")])
    assert rc == 0 and recap["changed"] == 0, out[-4000:]


# Not MV6's, although its description carries MV6's metadata namespace as text: a text search
# (what the role did before) took it for an MV6 guest.
FOREIGN_XML = """<domain type='qemu'>
  <name>t-gst-foreign</name>
  <description>copied from a guest: xmlns:mv6=(https://mv6.invalid/transition)</description>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""


def test_a_domain_mv6_did_not_make_is_left_alone(lab):
    """A libvirt domain that has a planned guest's name but no <mv6:guest> metadata: before,
    `state: absent` destroyed and undefined it, and a running guest redefined it."""
    xml_file = WORK / "foreign.xml"
    xml_file.write_text(FOREIGN_XML)
    sh("virsh", "-q", "-c", URI, "define", str(xml_file))
    try:
        before = sh("virsh", "-c", URI, "dumpxml", "--inactive", "t-gst-foreign").stdout
        for item in ({"name": "t-gst-foreign", "state": "absent"}, {"name": "t-gst-foreign"}):
            rc, out, _recap = run(lab, [item])
            assert rc != 0
            flat = " ".join(out.split())
            assert (
                "libvirt domain(s) t-gst-foreign exist but were not made by mv6.transition" in flat
            )
            after = sh("virsh", "-c", URI, "dumpxml", "--inactive", "t-gst-foreign").stdout
            assert after == before, item
        assert not (WORK / "guests" / "t-gst-foreign").exists()
    finally:
        sh("virsh", "-q", "-c", URI, "undefine", "t-gst-foreign", check=False)


def test_other_tags_skip_the_role(tmp_path):
    """`site.yml --tags mv6_plan` (a run limited to another piece) skips roles/guest. Before
    the fix, two `always` tasks read __guest_list, which only preflight sets, and failed."""
    (tmp_path / "site.yml").write_text(SITE)
    extra = {
        "mv6_parallel": {"bridge": "t-gstbr9"},
        "mv6_guest_state_dir": str(tmp_path / "guests"),
        "mv6_guests": [{"name": "t-gst-tag"}],
        "mv6_plan": {"parallel_family": "ipv6", "hosts": {"localhost": {"guests": {}}}},
    }
    extra = with_site(extra)
    rc, out, recap = playbook(tmp_path, extra, "--tags", "mv6_plan", timeout=120)
    assert rc == 0, out[-3000:]
    assert recap.get("failed") == 0 and recap.get("changed") == 0, out[-3000:]
    assert not (tmp_path / "guests").exists()
