# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""How the controller reaches a hypervisor's libvirt: one rule, used by roles/guest and
playbooks/verify.yml (it was written twice in Jinja and knew neither port nor key).

PRIVATE to the collection: no compatibility promise. No Ansible imports.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote

_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
# The SSH client libvirt runs without a shell: a bare name looked up in PATH, or an absolute
# path (no control characters).
_EXECUTABLE = re.compile(r"^(/[^\x00-\x1f]*[^/\x00-\x1f]|[A-Za-z0-9_.+-]+)$")
# A DNS name, an FQDN with its trailing dot, or an ssh_config alias (underscores allowed):
# whatever ssh accepts, as long as it cannot end the URI's authority part.
_HOSTNAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_.])?$")


def _host_part(host: str) -> str:
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            # A zone (fe80::1%eth0) is written %25 inside a URI (RFC 6874).
            return "[" + host.replace("%", "%25") + "]"
        return host
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise ValueError(f"ansible_host: {host!r} is not a host name or an IP address")
    return host


def libvirt_uri(
    connection: str,
    host: str,
    user: str | None = None,
    port: int | str | None = None,
    keyfile: str | None = None,
    explicit: str = "",
    ssh_executable: str | None = None,
) -> str:
    """The libvirt URI through which the controller reaches the guests of a hypervisor.

    *explicit* (mv6_guest_libvirt_uri) wins. A hypervisor managed with connection ``local``
    is the controller itself: ``qemu:///system``. Otherwise ``qemu+ssh://`` with the
    inventory's user, address, port and private key, the inventory's SSH client
    (``ansible_ssh_executable``, libvirt's ``command=``) when it is not plain ``ssh``, and
    ``no_tty=1`` so that a missing key fails at once instead of asking for a password (AWX
    has no terminal).
    """
    if explicit:
        return explicit
    if connection == "local":
        return "qemu:///system"
    if not host:
        raise ValueError("ansible_host: empty; cannot build a qemu+ssh:// URI")
    authority = _host_part(str(host))
    if user:
        if not _USER.match(str(user)):
            raise ValueError(f"ansible_user: {user!r} is not a user name")
        authority = f"{user}@{authority}"
    if port not in (None, "", 22, "22"):
        try:
            number = int(port)
        except (TypeError, ValueError):
            raise ValueError(f"ansible_port: {port!r} is not a port number") from None
        if not 0 < number < 65536:
            raise ValueError(f"ansible_port: {port!r} is not a port number")
        authority = f"{authority}:{number}"
    query = []
    if keyfile:
        query.append("keyfile=" + quote(str(keyfile), safe="/._-~"))
    if ssh_executable and str(ssh_executable) != "ssh":
        if not _EXECUTABLE.match(str(ssh_executable)):
            raise ValueError(
                f"ansible_ssh_executable: {ssh_executable!r} is not a command name or an"
                " absolute path"
            )
        query.append("command=" + quote(str(ssh_executable), safe="/._-~"))
    query.append("no_tty=1")
    return f"qemu+ssh://{authority}/system?" + "&".join(query)
