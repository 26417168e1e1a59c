# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""How the controller reaches a hypervisor's libvirt; a thin wrapper of
module_utils/_connection.py (documented in libvirt_uri.yml)."""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.mv6.transition.plugins.module_utils import _connection


def libvirt_uri(target, explicit=""):
    try:
        return _connection.libvirt_uri(
            connection=str(target.get("connection") or "ssh"),
            host=str(target.get("host") or ""),
            user=target.get("user") or None,
            port=target.get("port") or None,
            keyfile=target.get("keyfile") or None,
            ssh_executable=target.get("ssh_executable") or None,
            explicit=str(explicit or ""),
        )
    except ValueError as e:
        raise AnsibleFilterError(str(e)) from e


class FilterModule:
    def filters(self):
        return {"libvirt_uri": libvirt_uri}
