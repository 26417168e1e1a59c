# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: guest_agent
short_description: Run tasks in MV6 guests over the QEMU guest agent, through their hypervisor
version_added: 1.0.0
author:
  - mv6.transition developers (@mv6-transition)
description:
  - Reaches a guest that the controller has no network path to (an IPv6-only guest of an
    IPv4 site, say) over its QEMU guest agent, B(through its hypervisor's own inventory
    connection). Each exec, file upload or file download is one command over that connection
    (SSH, or C(local) when the hypervisor is the controller). On the hypervisor a small helper,
    sent with the command, talks to the guest agent through libvirt and does the whole
    operation there.
  - No libvirt-python on the controller and no second set of SSH host keys. The hypervisor
    needs C(python3) and libvirt, with python3-libvirt or C(virsh); roles/hypervisor installs
    both.
  - Modules are pipelined. The module is the exec's standard input, run by the guest's Python
    in one exec.
  - Files are copied in chunks of 1 MiB, in segments of 16 MiB per command, and compared by
    SHA-256 with the guest's C(sha256sum) afterwards.
  - The agent runs as root. Use C(become_method=mv6.transition.runuser), which roles/guest
    sets for the guests it adds, or C(su) to run a task as another guest user. Guests carry
    no sudo.
  - A guest whose agent does not answer is reported B(unreachable). The message names the
    guest, its hypervisor and the guest's serial log on that hypervisor.
  - The hypervisor's connection comes from the hypervisor's inventory variables
    (C(ansible_connection), C(ansible_host), C(ansible_user), C(ansible_port), SSH keys and
    arguments, C(ansible_become)), the command line and C(ansible.cfg). Play keywords of
    the hypervisor's play, such as C(remote_user), are not seen.
notes:
  - docs/guest_agent.md in the collection explains the design and the measured cost.
options:
  remote_addr:
    description: The guest's libvirt domain name.
    type: str
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
  hypervisor:
    description:
      - The inventory name of the guest's hypervisor. Its connection carries every command.
    type: str
    required: true
    vars:
      - name: mv6_guest_hypervisor
  hypervisor_connection:
    description:
      - The connection plugin that reaches the hypervisor. When unset, the hypervisor's
        C(ansible_connection) from the inventory, else the command line's or C(ansible.cfg)'s
        (C(ssh)).
      - roles/guest sets it to the connection its own play used for the hypervisor, so that a
        play's own C(ansible_connection=local) reaches the guests too.
    type: str
    vars:
      - name: mv6_guest_agent_hypervisor_connection
  libvirt_uri:
    description: The libvirt URI on the hypervisor, as seen from the hypervisor itself.
    type: str
    default: qemu:///system
    vars:
      - name: mv6_guest_agent_libvirt_uri
  hypervisor_python:
    description:
      - The Python on the hypervisor that runs the helper.
      - When unset, the hypervisor's C(ansible_python_interpreter) if it names a program,
        else C(/usr/bin/python3).
    type: str
    vars:
      - name: mv6_guest_agent_hypervisor_python
  agent_timeout:
    description:
      - Seconds one guest agent command may take (libvirt's agent timeout).
      - A guest that misses it for the first command of an exec is unreachable.
    type: int
    default: 30
    vars:
      - name: mv6_guest_agent_command_timeout
  exec_timeout:
    description:
      - Seconds one command may run in the guest. Past it the command's whole process group
        is killed and the task fails with a message that says so.
    type: int
    default: 3600
    vars:
      - name: mv6_guest_agent_exec_timeout
  serial_log:
    description:
      - The guest's serial log on the hypervisor, named when the agent does not answer.
      - When unset, the log files of the domain's serial ports are read from libvirt.
    type: str
    default: ""
    vars:
      - name: mv6_guest_serial_log
  module_cache:
    description:
      - Keep the compiled code of pipelined modules' sources in the guest (in
        C(/var/cache/mv6-agent), root only), so its Python does not compile every
        C(module_utils) file from source at every task. That compile is most of a module
        task's time in a TCG guest.
      - The cache is keyed by each source's SHA-256. Under C(become) to another user it is
        not readable, and modules compile as usual.
    type: bool
    default: true
    vars:
      - name: mv6_guest_agent_module_cache
  pipelining:
    description:
      - Send modules as the exec's input instead of as a file.
      - Unlike the SSH connection this is on by default, since a file costs an agent
        round trip of its own.
    type: bool
    default: true
    vars:
      - name: ansible_pipelining
      - name: mv6_guest_agent_pipelining
"""

EXAMPLES = r"""
# roles/guest adds the running guests with this connection. Written by hand:
# inventory.yml
#   mv6_guests:
#     hosts:
#       web6:
#         ansible_connection: mv6.transition.guest_agent
#         mv6_guest_hypervisor: hv1
#         ansible_become_method: mv6.transition.runuser
#   hypervisors:
#     hosts:
#       hv1:
#         ansible_host: 198.51.100.10
#         ansible_user: root

- name: Deploy an application into the IPv6-only guests
  hosts: mv6_guests
  tasks:
    - name: Install the configuration
      ansible.builtin.template:
        src: app.conf.j2
        dest: /etc/app.conf
        mode: "0644"
    - name: Run as the application's user
      ansible.builtin.command: /usr/bin/id -un
      become: true
      become_user: app
      changed_when: false
"""

import copy  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible import constants as C  # noqa: E402
from ansible import context  # noqa: E402
from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound  # noqa: E402
from ansible.module_utils.common.text.converters import to_bytes, to_text  # noqa: E402
from ansible.module_utils.parsing.convert_bool import boolean  # noqa: E402
from ansible.plugins.connection import ConnectionBase  # noqa: E402
from ansible.plugins.loader import become_loader, connection_loader  # noqa: E402
from ansible.utils.display import Display  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils import _guest_agent as helper  # noqa: E402

display = Display()

_SELF = ("guest_agent", "mv6.transition.guest_agent")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@functools.lru_cache(maxsize=1)
def _helper_source() -> bytes:
    """The helper sent with every call: read once per controller process, not per task."""
    return Path(helper.__file__).read_bytes()


class Connection(ConnectionBase):
    """Commands and files in a guest, over its agent, through its hypervisor's connection."""

    transport = "mv6.transition.guest_agent"
    has_pipelining = True
    has_tty = False
    default_user = "root"
    module_implementation_preferences = (".py", "")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._hv_name = None
        self._hv_vars = None
        self._via = None
        self._hv_become = None

    # --- the hypervisor's connection -------------------------------------------------------
    def _resolve_option_variables(self, variables, templar):
        """The guest's own options, and (kept aside) the hypervisor's connection variables,
        read from hostvars where the inventory put them: nothing is copied into the guest."""
        options = super()._resolve_option_variables(variables, templar)
        name = options.get("mv6_guest_hypervisor")
        if name:
            hostvars = variables.get("hostvars") or {}
            # Ansible's HostVars answers any name (an undefined marker that fails later with
            # "A required TemplateContext context is not active"): ask first.
            if name not in hostvars:
                raise AnsibleError(
                    f"mv6_guest_hypervisor: {name!r} of guest"
                    f" {variables.get('inventory_hostname')!r} is not a host of the inventory"
                )
            self._hv_vars = hostvars[name]
            self._hv_name = name
        return options

    def _hv_get(self, key, default=None):
        try:
            return self._hv_vars[key] if self._hv_vars is not None else default
        except KeyError:
            return default

    def _hv_connection_name(self) -> str:
        name = self.get_option("hypervisor_connection") or self._hv_get("ansible_connection")
        if not name:
            name = context.CLIARGS.get("connection") or C.DEFAULT_TRANSPORT
        name = str(name)
        if name == "smart":
            name = "ssh"
        if name in _SELF:
            raise AnsibleError(
                f"the hypervisor {self._hv_name!r} of guest {self._guest()!r} is itself"
                f" reached with {name}: a hypervisor needs its own connection"
            )
        return name

    def _plugin_vars(self, kind: str, plugin) -> dict:
        names = C.config.get_plugin_vars(kind, plugin._load_name)
        found = {"_extras": {}, "inventory_hostname": self._hv_name}
        for key in names:
            value = self._hv_get(key)
            if value is not None:
                found[key] = value
        return found

    def _connect(self):
        if self._connected:
            return self
        if not self._hv_name:
            self._hv_name = self.get_option("hypervisor")
        if self._hv_vars is None:
            raise AnsibleError(
                f"guest {self._guest()!r}: no inventory variables for its hypervisor"
                f" {self._hv_name!r} (mv6_guest_hypervisor)"
            )
        kind = self._hv_connection_name()
        # A copy: the local plugin writes its user into the play context it is given.
        play_context = copy.copy(self._play_context)
        play_context.remote_addr = self._hv_name
        via = connection_loader.get(kind, play_context)
        if via is None:
            raise AnsibleError(f"the hypervisor {self._hv_name!r}: no connection plugin {kind!r}")
        # The play's connection password (-k, an AWX machine credential) reaches the SSH
        # plugin through the play context, unless the hypervisor has one of its own.
        via.set_options(
            task_keys={"timeout": self._play_context.timeout},
            var_options=self._plugin_vars("connection", via),
        )
        if boolean(self._hv_get("ansible_become", False), strict=False):
            method = self._hv_get("ansible_become_method") or C.DEFAULT_BECOME_METHOD
            become = become_loader.get(method)
            if become is None:
                raise AnsibleError(f"the hypervisor {self._hv_name!r}: no become plugin {method!r}")
            become_keys = {}
            if self._play_context.become_pass:
                become_keys["become_pass"] = self._play_context.become_pass
            become.set_options(
                task_keys=become_keys, var_options=self._plugin_vars("become", become)
            )
            via.set_become_plugin(become)
            self._hv_become = become
        self._via = via
        self._connected = True
        display.vvv(
            f"GUEST_AGENT {self._guest()} through {self._hv_name} ({kind})", host=self._guest()
        )
        return self

    def _hv_python(self) -> str:
        python = self.get_option("hypervisor_python")
        if not python:
            python = str(self._hv_get("ansible_python_interpreter") or "")
            if not python.startswith("/"):
                python = "/usr/bin/python3"
        return python

    def _guest(self) -> str:
        return str(self.get_option("remote_addr"))

    def _call(self, request: dict, payload: bytes = b"") -> tuple[dict, bytes]:
        """One operation: the helper and the request to the hypervisor, its reply back."""
        self._connect()
        source = _helper_source()
        request = dict(
            request,
            domain=self._guest(),
            uri=self.get_option("libvirt_uri"),
            agent_timeout=self.get_option("agent_timeout"),
        )
        stdin = b"%d\n" % len(source) + source + helper.frame(request, payload)
        cmd = f"{shlex.quote(self._hv_python())} -c {shlex.quote(helper.BOOTSTRAP)}"
        if self._hv_become is not None:
            cmd = self._hv_become.build_become_command(cmd, self._via._shell)
        start = time.monotonic()
        rc, out, err = self._via.exec_command(cmd, in_data=stdin, sudoable=True)
        display.vvvv(
            f"GUEST_AGENT {request['op']} through {self._hv_name}:"
            f" {time.monotonic() - start:.3f} s",
            host=self._guest(),
        )
        try:
            reply, data = helper.unframe(out)
        except helper.FrameError as e:
            text = to_text(err, errors="surrogate_or_replace").strip()[-2000:]
            raise AnsibleConnectionFailure(
                f"guest {self._guest()}: the guest agent helper on hypervisor {self._hv_name}"
                f" gave no reply ({e}; exit code {rc}): {text or 'no error output'}"
            ) from None
        if "error" in reply:
            self._fail(reply)
        return reply, data

    def _fail(self, reply: dict):
        where = f"guest {self._guest()} on hypervisor {self._hv_name}"
        if reply.get("unreachable"):
            logs = [self.get_option("serial_log")] if self.get_option("serial_log") else []
            logs += [p for p in reply.get("serial_logs") or [] if p not in logs]
            hint = (
                f"its serial log on {self._hv_name}: {', '.join(logs)}"
                if logs
                else "libvirt names no serial log file for it"
            )
            raise AnsibleConnectionFailure(
                f"{where}: the QEMU guest agent does not answer ({reply['error']}). Is the guest"
                f" running and booted? See {hint}"
            )
        if reply.get("timed_out"):
            raise AnsibleError(
                f"{where}: {reply['error']} (exec_timeout, mv6_guest_agent_exec_timeout:"
                f" {self.get_option('exec_timeout')})"
            )
        raise AnsibleError(f"{where}: {reply['error']}")

    # --- the connection interface ----------------------------------------------------------
    def exec_command(self, cmd, in_data=None, sudoable=True):
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        display.vvv(f"GUEST_AGENT EXEC {cmd}", host=self._guest())
        request = {
            "op": "exec",
            "argv": ["/bin/sh", "-c", to_text(cmd, errors="surrogate_or_strict")],
            "timeout": self.get_option("exec_timeout"),
        }
        stdin = to_bytes(in_data or b"")
        if stdin and self.get_option("module_cache"):
            stdin = helper.with_module_cache(stdin)
        reply, data = self._call(request, stdin)
        return reply["rc"], data[: reply["out"]], data[reply["out"] :]

    def put_file(self, in_path, out_path):
        super().put_file(in_path, out_path)
        display.vvv(f"GUEST_AGENT PUT {in_path} TO {out_path}", host=self._guest())
        if not os.path.isfile(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        digest = hashlib.sha256()
        offset = 0
        with open(in_path, "rb") as f:
            before = os.fstat(f.fileno())
            while True:
                segment = f.read(helper.SEGMENT)
                digest.update(segment)
                # The size it had, or a short read, ends the copy: a file that shrinks
                # meanwhile cannot loop.
                final = len(segment) < helper.SEGMENT or offset + len(segment) >= before.st_size
                reply = self._call(
                    {"op": "put", "path": out_path, "offset": offset, "final": final}, segment
                )[0]
                offset += len(segment)
                if final:
                    break
            after = os.fstat(f.fileno())
        if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
            raise AnsibleError(
                f"guest {self._guest()}: {in_path} changed while it was copied to {out_path};"
                " copy it again"
            )
        if reply.get("sha256") != digest.hexdigest():
            raise AnsibleError(
                f"guest {self._guest()}: {out_path} does not match {in_path} after the copy"
                f" (sha256 {reply.get('sha256')} in the guest, {digest.hexdigest()} here)"
            )

    def fetch_file(self, in_path, out_path):
        super().fetch_file(in_path, out_path)
        display.vvv(f"GUEST_AGENT FETCH {in_path} TO {out_path}", host=self._guest())
        digest = hashlib.sha256()
        offset = 0
        dest = to_bytes(out_path, errors="surrogate_or_strict")
        # A file of its own beside the destination: no fixed name to plant a link at, no two
        # forks writing one file.
        fd, partial = tempfile.mkstemp(
            dir=os.path.dirname(dest) or b".", prefix=b".mv6-fetch-", suffix=b".partial"
        )
        try:
            with os.fdopen(fd, "wb") as f:
                while True:
                    reply, data = self._call(
                        {"op": "fetch", "path": in_path, "offset": offset, "limit": helper.SEGMENT}
                    )
                    f.write(data)
                    digest.update(data)
                    offset += len(data)
                    if reply.get("eof"):
                        break
                    if not data:
                        raise AnsibleError(
                            f"guest {self._guest()}: {in_path} gave no data before its end"
                        )
            if reply.get("sha256") != digest.hexdigest():
                raise AnsibleError(
                    f"guest {self._guest()}: {in_path} changed while it was fetched or was"
                    f" damaged (sha256 {reply.get('sha256')} in the guest,"
                    f" {digest.hexdigest()} here)"
                )
            os.chmod(partial, 0o666 & ~_umask())
            os.replace(partial, dest)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)

    def reset(self):
        self.close()

    def close(self):
        if self._via is not None:
            self._via.close()
        self._via = None
        self._connected = False
