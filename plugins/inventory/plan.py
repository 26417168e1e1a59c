# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: plan
short_description: The guests of the MV6 address plan as inventory hosts
version_added: 1.1.0
author:
  - mv6.transition developers (@mv6-transition)
description:
  - Reads the plan files that M(mv6.transition.address_plan) writes (the site file and the host
    files in its C(.d) directory) and yields every guest of the plan as a host of group
    O(group), with its hypervisor (C(mv6_guest_hypervisor)) and the variables of the guest
    agent connection (P(mv6.transition.guest_agent#connection)), the same variables roles/guest and
    C(verify.yml) give the guests they add during a run.
  - Each guest also joins the group C(<group>_of_<hypervisor>) (the hypervisor's name with
    every character that is not a letter, digit or C(_) replaced by C(_)), a child of
    O(group).
  - Released guests are left out unless O(include_released). A released hypervisor of the
    plan and its guests likewise.
  - A hypervisor of the plan that is not a host of the inventory yet is added to
    O(hypervisor_group), with a warning. It gets no variables from here; its connection
    variables (C(ansible_host), C(ansible_user), ...) must come from another inventory source.
    The guests' connection goes through the hypervisor's own connection.
  - The plan is read from a file on the controller, or with O(keeper) from the plan keeper
    over that host's own inventory connection (SSH, C(local), ...), the path the planner
    uses. There one command streams the plan's files as a tar archive (C(tar -cf -)), under
    a shared lock on C(<plan_file>.lock) when that file exists and C(flock) is installed.
    The archive is unpacked into a private temporary directory on the controller (regular
    files with the plan's names only, at most 256 MiB) and read there. Nothing is written on
    the keeper.
  - The plan's values are not templates (the plugin does not mark them trusted).
  - The configuration file's name must end in C(mv6.yml) or C(mv6.yaml), for example
    C(guests.mv6.yml).
notes:
  - docs/inventory.md in the collection has examples, for C(ansible-inventory) and AWX.
  - The keeper must be a host of the inventory before this source is read. List its source
    first (C(-i hosts.yml -i guests.mv6.yml)), or put both files in one directory that is the
    inventory source, the hosts file sorting first. Its variables are its own and its groups'
    from the sources read so far, with the extra vars over them; C(host_vars/) and
    C(group_vars/) directories count only with O(use_vars_plugins).
  - A version 1 plan is refused; run the planner once to migrate it.
  - C(ansible-inventory) and C(ansible-playbook) only warn when a source fails, and go on
    without its hosts. Set C(any_unparsed_is_failed) (section C([inventory]) of
    C(ansible.cfg), or E(ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED)) to make a plan that
    cannot be read fail the run.
extends_documentation_fragment:
  - constructed
  - inventory_cache
options:
  plugin:
    description: The name of this plugin.
    type: str
    required: true
    choices:
      - mv6.transition.plan
  plan_file:
    description:
      - The plan's site file (C(mv6_plan_file)). Its host files are in the C(.d) directory
        beside it (C(mv6_plan.yml) -> C(mv6_plan.d/)).
      - Without O(keeper), a path on the controller, relative to the directory of this
        configuration file when it is relative (a leading C(~) is the user's home directory).
      - With O(keeper), an absolute path on the keeper. The keeper's default is
        C(/var/lib/mv6-plan/mv6_plan.yml).
    type: str
    required: true
  keeper:
    description:
      - The inventory name of the plan keeper, the managed host that holds the plan
        (C(mv6_plan_keeper)). When set, O(plan_file) is read there, over the keeper's
        own inventory connection.
    type: str
  group:
    description: The group every guest joins.
    type: str
    default: mv6_guests
  hypervisor_group:
    description: The group a hypervisor of the plan joins when the inventory does not have it yet.
    type: str
    default: mv6_hypervisors
  include_released:
    description: Yield the released guests too (their C(mv6_guest_plan.released) is true).
    type: bool
    default: false
  connection:
    description: The guests' C(ansible_connection).
    type: str
    default: mv6.transition.guest_agent
  python_interpreter:
    description: The guests' C(ansible_python_interpreter).
    type: str
    default: /usr/bin/python3
  become_method:
    description: The guests' C(ansible_become_method). The guests carry no sudo.
    type: str
    default: mv6.transition.runuser
  libvirt_uri:
    description:
      - The guests' C(mv6_guest_agent_libvirt_uri), the libvirt URI on the hypervisor as the
        hypervisor itself sees it.
    type: str
    default: qemu:///system
  lock_timeout:
    description:
      - Seconds to wait for a planner run that holds C(<plan_file>.lock) (on the controller,
        or on the keeper).
    type: int
    default: 120
  use_vars_plugins:
    description:
      - Also read the variables of the vars plugins (C(host_vars/) and C(group_vars/) beside
        the inventory sources) for the keeper's connection and for O(compose), O(groups) and
        O(keyed_groups).
    type: bool
    default: false
"""

EXAMPLES = r"""
# guests.mv6.yml with the plan beside it on the controller:
#   plugin: mv6.transition.plan
#   plan_file: mv6_plan.yml

# guests.mv6.yml with the plan on the keeper (an earlier source names the host planhost):
#   ansible-inventory -i hosts.yml -i guests.mv6.yml --graph
plugin: mv6.transition.plan
keeper: planhost
plan_file: /var/lib/mv6-plan/mv6_plan.yml
keyed_groups:
  - key: mv6_parallel_family
    prefix: family
compose:
  guest_address: mv6_guest_plan.address
groups:
  routers: mv6_guest_plan.router
"""

import contextlib  # noqa: E402
import fcntl  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ansible import constants as C  # noqa: E402
from ansible import context  # noqa: E402
from ansible.errors import AnsibleError, AnsibleParserError  # noqa: E402
from ansible.inventory.group import to_safe_group_name  # noqa: E402
from ansible.inventory.helpers import get_group_vars  # noqa: E402
from ansible.module_utils.common.text.converters import to_text  # noqa: E402
from ansible.module_utils.parsing.convert_bool import boolean  # noqa: E402
from ansible.playbook.play_context import PlayContext  # noqa: E402
from ansible.plugins.inventory import BaseInventoryPlugin, Cacheable, Constructable  # noqa: E402
from ansible.plugins.loader import become_loader, connection_loader  # noqa: E402
from ansible.utils.vars import combine_vars  # noqa: E402
from ansible.vars.plugins import get_vars_from_inventory_sources  # noqa: E402
from ansible_collections.mv6.transition.plugins.module_utils import _plan  # noqa: E402

# The largest archive taken from a keeper: about a million guests (docs/planner.md measured
# 152 MB for 640,000). The connection plugin holds the whole output in memory.
MAX_ARCHIVE = 256 * 1024 * 1024
# Exit codes of the keeper's command (anything else is tar's or the shell's).
_RC_NO_DIR = 3
_RC_NO_PLAN = 4
_RC_LOCKED = 75
_SELF = ("guest_agent", "mv6.transition.guest_agent")


def keeper_command(plan_file: str, lock_timeout: int) -> str:
    """The one command run on the keeper: the site file and its .d directory (those of them
    that exist) as a tar archive on standard output, under a shared lock on the planner's
    lock file when there is one. Reads only; a missing lock file is not created."""
    directory, name = os.path.split(plan_file)
    hosts = os.path.basename(_plan.hosts_dir(plan_file))
    n, d, lock = shlex.quote(name), shlex.quote(hosts), shlex.quote(name + ".lock")
    script = (
        f"cd -- {shlex.quote(directory or '/')} || exit {_RC_NO_DIR}\n"
        "set --\n"
        f"if [ -e {n} ] || [ -L {n} ]; then set -- {n}; fi\n"
        f'if [ -d {d} ]; then set -- "$@" {d}; fi\n'
        f'[ "$#" -gt 0 ] || exit {_RC_NO_PLAN}\n'
        f"if [ -r {lock} ] && command -v flock >/dev/null 2>&1; then\n"
        f'  exec flock -s -w {int(lock_timeout)} -E {_RC_LOCKED} {lock} tar -cf - -- "$@"\n'
        "fi\n"
        'exec tar -cf - -- "$@"\n'
    )
    return f"/bin/sh -c {shlex.quote(script)}"


def extract_plan(archive: bytes, dest: str, plan_file: str) -> str:
    """Unpack the keeper's archive into the private directory dest: the site file and the
    host files (NAME.d/*.json) as regular files, nothing else. Returns the copy's site file.
    ValueError (without the option's name) on anything unexpected."""
    name = os.path.basename(plan_file)
    hosts = os.path.basename(_plan.hosts_dir(plan_file))
    if len(archive) > MAX_ARCHIVE:
        raise ValueError(f"the archive is larger than {MAX_ARCHIVE >> 20} MiB")
    os.mkdir(os.path.join(dest, hosts), 0o700)
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as tar:
            for member in tar:
                path = member.name
                if path == hosts and member.isdir():
                    continue
                head, _sep, rest = path.partition("/")
                wanted = path == name or (
                    head == hosts and rest.endswith(".json") and "/" not in rest
                )
                if not wanted:
                    if head == hosts and rest:
                        continue  # not a host file: a planner's temporary file, say
                    raise ValueError(f"unexpected entry {path!r}")
                if not member.isreg():
                    raise ValueError(f"{path} is not a regular file")
                total += member.size
                if total > MAX_ARCHIVE:
                    raise ValueError(f"the plan's files are larger than {MAX_ARCHIVE >> 20} MiB")
                tar.extract(member, dest, set_attrs=False, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise ValueError(f"not a tar archive of the plan ({e})") from None
    return os.path.join(dest, name)


@contextlib.contextmanager
def _shared_lock(path: str, timeout: int):
    """A shared flock on the planner's lock file, when it exists and can be read: a reader
    waits for a planner run that is writing the files."""
    lock = path + ".lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ValueError(
                        f"another run has held {lock} for more than {timeout} s (lock_timeout)"
                    ) from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)


def guest_site(plan: dict, hypervisor: str) -> dict:
    """A guest's mv6_guest_site, as roles/guest builds it (tasks/preflight.yml,
    __guest_network): its hypervisor's subnet, gateway, DNS and pool, and the router guest
    (the hypervisor's own, or in the shared layout the fleet's one)."""
    hosts = plan["hosts"]
    entry = hosts[hypervisor]
    layout = plan["site"].get("layout", "per_host")
    router = None
    for name, other in hosts.items():
        if other.get("router") and (name == hypervisor or layout == "shared"):
            guest = other.get("guests", {}).get(other["router"]) or {}
            router = {"name": other["router"], "address": guest.get("address")}
            break
    return {
        "subnet": entry.get("subnet"),
        "gateway": entry.get("gateway"),
        "dns": entry.get("dns", []),
        "router": router,
        "layout": layout,
        "dhcp4_pool": entry.get("dhcp4_pool"),
    }


class InventoryModule(BaseInventoryPlugin, Constructable, Cacheable):
    """The plan's guests, with their hypervisor and the guest agent connection."""

    NAME = "mv6.transition.plan"

    def verify_file(self, path):
        return super().verify_file(path) and str(path).endswith(("mv6.yml", "mv6.yaml"))

    def parse(self, inventory, loader, path, cache=True):
        super().parse(inventory, loader, path, cache=cache)
        config = self._read_config_data(path)
        # Ansible ignores unknown keys and reads "maybe" as false: a typo would go unseen.
        unknown = sorted(str(k) for k in config if k not in self._options)
        if unknown:
            raise AnsibleParserError(
                f"{unknown[0]}: not an option of mv6.transition.plan"
                " (ansible-doc -t inventory mv6.transition.plan)"
            )
        for option in ("include_released", "use_vars_plugins", "strict", "cache"):
            if option in config and not isinstance(config[option], bool):
                raise AnsibleParserError(f"{option}: must be true or false, got {config[option]!r}")
        self._config_dir = os.path.dirname(os.path.abspath(path))
        group, hv_group = self.get_option("group"), self.get_option("hypervisor_group")
        if group == hv_group:
            raise AnsibleParserError(
                f"group and hypervisor_group: both are {group!r}; guests and hypervisors need"
                " groups of their own"
            )

        key = self.get_cache_key(path)
        use_cache = self.get_option("cache") and cache
        update_cache = self.get_option("cache") and not cache
        plan = None
        if use_cache:
            try:
                plan = self._cache[key]
            except KeyError:
                update_cache = True
        if plan is None:
            plan = self._read()
        if update_cache:
            self._cache[key] = plan
        self._populate(plan)

    # --- reading the plan ------------------------------------------------------------------
    def _read(self) -> dict:
        keeper = self.get_option("keeper")
        plan_file = str(self.get_option("plan_file"))
        if keeper:
            return self._read_from_keeper(str(keeper), plan_file)
        path = os.path.join(self._config_dir, os.path.expanduser(plan_file))
        try:
            with _shared_lock(path, self.get_option("lock_timeout")):
                plan = _plan.read_plan(path)[0]
        except ValueError as e:
            raise AnsibleParserError(_option_message(str(e))) from None
        return self._checked(plan, path)

    def _checked(self, plan: dict | None, where: str) -> dict:
        if plan is None:
            raise AnsibleParserError(f"plan_file: {where} does not exist or is empty")
        if plan.get("version") != _plan.PLAN_VERSION:
            raise AnsibleParserError(
                f"plan_file: {where} is a version 1 plan; run the planner once to migrate it"
            )
        return plan

    def _read_from_keeper(self, keeper: str, plan_file: str) -> dict:
        if not os.path.isabs(plan_file):
            raise AnsibleParserError(
                f"plan_file: {plan_file!r} must be an absolute path on the keeper {keeper!r}"
            )
        host = self.inventory.get_host(keeper)
        if host is None:
            raise AnsibleParserError(
                f"keeper: {keeper!r} is not a host of the inventory read so far; list the source"
                " that defines it (a static hosts file) before this one"
                " (-i hosts.yml -i guests.mv6.yml), or in a directory source give this file a"
                " name that sorts after the hosts file's"
            )
        where = f"{keeper}:{plan_file}"
        variables = self._keeper_vars(host)
        via, become, kind = self._keeper_connection(keeper, variables)
        hint = (
            ""
            if self.get_option("use_vars_plugins")
            else " (its variables come from the sources read before this one; host_vars/ and"
            " group_vars/ only with use_vars_plugins)"
        )
        cmd = keeper_command(plan_file, self.get_option("lock_timeout"))
        if become is not None:
            cmd = become.build_become_command(cmd, via._shell)
        try:
            rc, out, err = via.exec_command(cmd, in_data=None, sudoable=True)
        except AnsibleError as e:
            raise AnsibleParserError(
                f"keeper: cannot reach {keeper!r} over its connection {kind}{hint}:"
                f" {_cut(e.message)}"
            ) from None
        finally:
            via.close()
        err = _cut(to_text(err, errors="surrogate_or_replace")) or "no error output"
        if rc == _RC_NO_DIR:
            raise AnsibleParserError(
                f"plan_file: {os.path.dirname(plan_file)} cannot be entered on the keeper"
                f" {keeper!r}: {err}"
            )
        if rc == _RC_NO_PLAN:
            raise AnsibleParserError(f"plan_file: {where} does not exist")
        if rc == _RC_LOCKED:
            raise AnsibleParserError(
                f"plan_file: another run has held {where}.lock for more than"
                f" {self.get_option('lock_timeout')} s (lock_timeout)"
            )
        if rc != 0:
            raise AnsibleParserError(
                f"keeper: reading {where} over {kind} failed (exit code {rc}){hint}: {err}"
            )
        with tempfile.TemporaryDirectory(prefix="mv6-plan-") as tmp:
            try:
                plan = _plan.read_plan(extract_plan(out, tmp, plan_file))[0]
            except ValueError as e:
                # Name the keeper's files, not the copy's.
                message = str(e).replace(os.path.join(tmp, os.path.basename(plan_file)), where)
                message = message.replace(tmp, f"{keeper}:{os.path.dirname(plan_file)}")
                if not message.startswith("mv6_plan_file: "):
                    message = f"plan_file: {where} from the keeper: {message}"
                raise AnsibleParserError(_option_message(message)) from None
        return self._checked(plan, where)

    def _host_vars(self, host) -> dict:
        """A host's variables as far as the inventory knows them: its groups', then its own
        (which win), with the vars plugins' when asked."""
        sources = getattr(self.inventory, "processed_sources", [])
        plugins = self.get_option("use_vars_plugins")
        variables = get_group_vars(host.get_groups())
        if plugins:
            variables = combine_vars(
                variables,
                get_vars_from_inventory_sources(self.loader, sources, host.get_groups(), "all"),
            )
        variables = combine_vars(variables, host.get_vars())
        if plugins:
            variables = combine_vars(
                variables, get_vars_from_inventory_sources(self.loader, sources, [host], "all")
            )
        return variables

    def _keeper_vars(self, host) -> dict:
        # The extra vars are over everything, as they are for a task.
        return combine_vars(
            combine_vars(self._host_vars(host), {"inventory_hostname": host.name}), self._vars
        )

    def _keeper_get(self, keeper: str, variables: dict, key: str):
        value = variables.get(key)
        if value is None:
            return None
        self.templar.available_variables = variables
        try:
            return self.templar.template(value)
        except AnsibleError as e:
            raise AnsibleParserError(
                f"keeper: {key} of {keeper!r} cannot be templated: {_cut(e.message)}"
            ) from None

    def _keeper_connection(self, keeper: str, variables: dict):
        """The keeper's own connection plugin with its options from its variables, as
        plugins/connection/guest_agent.py builds a guest's hypervisor's (become included)."""
        kind = self._keeper_get(keeper, variables, "ansible_connection")
        if not kind:
            kind = context.CLIARGS.get("connection") or C.DEFAULT_TRANSPORT
        kind = str(kind)
        if kind == "smart":
            kind = "ssh"
        if kind in _SELF:
            raise AnsibleParserError(
                f"keeper: {keeper!r} is reached with {kind}; the keeper needs a connection of"
                " its own (ssh, local, ...)"
            )
        play_context = PlayContext()
        play_context.remote_addr = keeper
        via = connection_loader.get(kind, play_context)
        if via is None:
            raise AnsibleParserError(f"keeper: {keeper!r} has no connection plugin {kind!r}")
        via.set_options(var_options=self._plugin_vars(keeper, variables, "connection", via))
        # The plan comes back as a tar archive on standard output: no terminal (the ssh
        # plugin's -tt for sudoable commands), or tar refuses to write it ("Refusing to write
        # archive contents to terminal", exit 2) and a terminal would mangle the bytes.
        if "use_tty" in (
            C.config.get_configuration_definitions("connection", via._load_name) or {}
        ):
            via.set_option("use_tty", False)
        become = None
        if boolean(self._keeper_get(keeper, variables, "ansible_become") or False, strict=False):
            method = (
                self._keeper_get(keeper, variables, "ansible_become_method")
                or C.DEFAULT_BECOME_METHOD
            )
            become = become_loader.get(str(method))
            if become is None:
                raise AnsibleParserError(f"keeper: {keeper!r} has no become plugin {method!r}")
            become.set_options(var_options=self._plugin_vars(keeper, variables, "become", become))
            via.set_become_plugin(become)
        return via, become, kind

    def _plugin_vars(self, keeper: str, variables: dict, kind: str, plugin) -> dict:
        found = {"_extras": {}, "inventory_hostname": keeper}
        for key in C.config.get_plugin_vars(kind, plugin._load_name):
            value = self._keeper_get(keeper, variables, key)
            if value is not None:
                found[key] = value
        return found

    # --- the inventory ---------------------------------------------------------------------
    def _populate(self, plan: dict) -> None:
        group = self.get_option("group")
        hv_group = self.get_option("hypervisor_group")
        released_too = self.get_option("include_released")
        strict = self.get_option("strict")
        family = plan["site"]["parallel_family"]
        hosts = {
            name: entry
            for name, entry in plan["hosts"].items()
            if released_too or not entry.get("released")
        }
        not_guests = set(plan["hosts"]) | {self.get_option("keeper")}
        self.inventory.add_group(group)
        for hv in sorted(hosts):
            if self.inventory.get_host(hv) is None:
                self.display.warning(
                    f"mv6.transition.plan: hypervisor {hv} of the plan is not a host of the"
                    f" inventory; added to group {hv_group} without connection variables, which"
                    f" must come from another inventory source"
                )
                self.inventory.add_group(hv_group)
                self.inventory.add_host(hv, group=hv_group)
            hv_guests = to_safe_group_name(f"{group}_of_{hv}", force=True, silent=True)
            for name, entry in sorted(hosts[hv].get("guests", {}).items()):
                if entry.get("released") and not released_too:
                    continue
                if name in not_guests:
                    raise AnsibleParserError(
                        f"plan_file: guest {name} of hypervisor {hv} has the name of a"
                        f" hypervisor of the plan or of the keeper"
                    )
                known = self.inventory.get_host(name)
                if known is not None and group not in [g.name for g in known.get_groups()]:
                    # Merged into it, the guest's connection would take that host's over: its
                    # tasks would run in a virtual machine.
                    raise AnsibleParserError(
                        f"plan_file: guest {name} of hypervisor {hv} has the name of host"
                        f" {name} of another inventory source; rename the guest or the host"
                    )
                self.inventory.add_group(hv_guests)
                self.inventory.add_child(group, hv_guests)
                self.inventory.add_host(name, group=group)
                self.inventory.add_host(name, group=hv_guests)
                for var, value in self._guest_vars(plan, hv, name, entry, family).items():
                    self.inventory.set_variable(name, var, value)
                variables = self._host_vars(self.inventory.get_host(name))
                self._set_composite_vars(self.get_option("compose"), variables, name, strict)
                self._add_host_to_composed_groups(
                    self.get_option("groups"), variables, name, strict
                )
                self._add_host_to_keyed_groups(
                    self.get_option("keyed_groups"), variables, name, strict
                )

    def _guest_vars(self, plan: dict, hv: str, name: str, entry: dict, family: str) -> dict:
        return {
            "ansible_connection": self.get_option("connection"),
            "ansible_host": name,
            "ansible_python_interpreter": self.get_option("python_interpreter"),
            "ansible_become_method": self.get_option("become_method"),
            "mv6_guest_hypervisor": hv,
            "mv6_guest_agent_libvirt_uri": self.get_option("libvirt_uri"),
            "mv6_guest_plan": entry,
            "mv6_guest_site": guest_site(plan, hv),
            "mv6_parallel_family": family,
        }


def _option_message(message: str) -> str:
    """The planner core names its variable (mv6_plan_file); here the option is plan_file."""
    prefix = "mv6_plan_file: "
    return "plan_file: " + message[len(prefix) :] if message.startswith(prefix) else message


def _cut(text: str, limit: int = 1000) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else "..." + text[-limit:]
