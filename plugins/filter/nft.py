# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Filters that render values for nftables rules.

The documentation of each filter is in the sidecar file of the same name (ipv6_hex.yml).
"""

from __future__ import annotations

import ipaddress

from ansible.errors import AnsibleFilterError


def ipv6_hex(address):
    """``2001:db8::1`` -> ``0x20010db8000000000000000000000001`` (a raw 128-bit nft value)."""
    try:
        packed = ipaddress.IPv6Address(str(address).split("/", maxsplit=1)[0]).packed
    except ValueError as e:
        raise AnsibleFilterError(f"ipv6_hex: {address!r} is not an IPv6 address: {e}") from e
    return "0x" + packed.hex()


class FilterModule:
    def filters(self):
        return {"ipv6_hex": ipv6_hex}
