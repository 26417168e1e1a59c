"""module_utils/_connection.py: the qemu+ssh:// URI to a hypervisor's libvirt, from the
hypervisor's inventory connection (exact results and exact error messages)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / ".collections"))

from ansible_collections.mv6.transition.plugins.module_utils import _connection

OK = [
    ("local", dict(connection="local", host="hv1"), "qemu:///system"),
    (
        "explicit",
        dict(connection="ssh", host="hv1", explicit="qemu+tls://hv1/system"),
        "qemu+tls://hv1/system",
    ),
    ("plain", dict(connection="ssh", host="hv1"), "qemu+ssh://hv1/system?no_tty=1"),
    (
        "user-port-key",
        dict(connection="ssh", host="203.0.113.2", user="root", port=2222, keyfile="/k/id ed25519"),
        "qemu+ssh://root@203.0.113.2:2222/system?keyfile=/k/id%20ed25519&no_tty=1",
    ),
    (
        "port-22-left-out",
        dict(connection="ssh", host="hv1", port="22"),
        "qemu+ssh://hv1/system?no_tty=1",
    ),
    (
        "ipv6",
        dict(connection="ssh", host="2001:db8:ff:4::2", user="root"),
        "qemu+ssh://root@[2001:db8:ff:4::2]/system?no_tty=1",
    ),
    (
        "ipv6-zone",
        dict(connection="ssh", host="fe80::1%mgmt0"),
        "qemu+ssh://[fe80::1%25mgmt0]/system?no_tty=1",
    ),
    (
        "ssh-executable",
        dict(connection="ssh", host="hv1", keyfile="/k/id", ssh_executable="/var/lib/f/bin/ssh"),
        "qemu+ssh://hv1/system?keyfile=/k/id&command=/var/lib/f/bin/ssh&no_tty=1",
    ),
    (
        "ssh-executable-plain-ssh-left-out",
        dict(connection="ssh", host="hv1", ssh_executable="ssh"),
        "qemu+ssh://hv1/system?no_tty=1",
    ),
    (
        "ssh-executable-name-escaped",
        dict(connection="ssh", host="hv1", ssh_executable="/opt/my ssh&x=1"),
        "qemu+ssh://hv1/system?command=/opt/my%20ssh%26x%3D1&no_tty=1",
    ),
    ("ssh-alias", dict(connection="ssh", host="hv_1"), "qemu+ssh://hv_1/system?no_tty=1"),
    (
        "fqdn-dot",
        dict(connection="ssh", host="hv1.example."),
        "qemu+ssh://hv1.example./system?no_tty=1",
    ),
]


@pytest.mark.parametrize(("kwargs", "uri"), [c[1:] for c in OK], ids=[c[0] for c in OK])
def test_uri(kwargs, uri):
    assert _connection.libvirt_uri(**kwargs) == uri


BAD = [
    (
        "host-with-slash",
        dict(connection="ssh", host="hv1/x"),
        "ansible_host: 'hv1/x' is not a host name or an IP address",
    ),
    (
        "host-empty",
        dict(connection="ssh", host=""),
        "ansible_host: empty; cannot build a qemu+ssh:// URI",
    ),
    (
        "user-with-at",
        dict(connection="ssh", host="hv1", user="a@b"),
        "ansible_user: 'a@b' is not a user name",
    ),
    (
        "port-word",
        dict(connection="ssh", host="hv1", port="ssh"),
        "ansible_port: 'ssh' is not a port number",
    ),
    (
        "port-range",
        dict(connection="ssh", host="hv1", port=70000),
        "ansible_port: 70000 is not a port number",
    ),
    (
        "ssh-executable-relative-path",
        dict(connection="ssh", host="hv1", ssh_executable="bin/ssh"),
        "ansible_ssh_executable: 'bin/ssh' is not a command name or an absolute path",
    ),
    (
        "ssh-executable-newline",
        dict(connection="ssh", host="hv1", ssh_executable="/bin/ssh\n-oProxyCommand=x"),
        "ansible_ssh_executable: '/bin/ssh\\n-oProxyCommand=x' is not a command name or an"
        " absolute path",
    ),
]


@pytest.mark.parametrize(("kwargs", "message"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_connection_names_the_variable(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        _connection.libvirt_uri(**kwargs)
