# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""The collection's name rules, written once: the planner (_plan), the disk core (_disk), the
roles (through the ``mv6.transition.guest_name`` and ``interface_name`` tests) and the
modules all use these. There were four guest-name rules that disagreed (``Web6`` was refused
by the planner and accepted by the guest role and guest_disk) and two interface-name rules.

PRIVATE to the collection: no compatibility promise. No Ansible imports.
"""

from __future__ import annotations

import re

# A guest name is its host name (one DNS label, RFC 1123, lowercase), its libvirt domain name
# and its directory under the guests directory: nothing in it can climb out of a path.
GUEST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
GUEST_NAME_RULE = "1 to 63 lowercase letters, digits or '-', not starting or ending with '-'"

# An interface name the kernel accepts for a new link (at most 15 bytes; no '/', ':' or
# white space) that is also no option for ip(8) and no hidden or relative path: it starts
# with a letter, a digit or '_'.
INTERFACE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
INTERFACE_NAME_RULE = (
    "1 to 15 letters, digits or '_', '.', '-', starting with a letter, a digit or '_'"
)


# An nftables table name: an identifier nft(8) parses without quoting, short enough that the
# unit, helper and file names made from it stay within their limits.
NFT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,31}")
NFT_NAME_RULE = "1 to 32 letters, digits or '_', starting with a letter"


# A golden image's name: its file name prefix in the images directory, a key of
# mv6_golden_images and the <mv6:image> of a guest's domain XML.
IMAGE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")
IMAGE_NAME_RULE = "1 to 40 lowercase letters, digits, '_' or '-', starting with a letter or digit"

# One word of a guest kernel's command line (it reaches the domain XML and the kernel): no
# white space, quotes, '<', '>', '&', ';' or control characters, so a word can neither add
# XML nor split into several parameters.
KERNEL_WORD = re.compile(r"[A-Za-z0-9_.,:=/+@%-]{1,255}")
KERNEL_WORD_RULE = "words of letters, digits and _ . , : = / + @ % - separated by single spaces"


def is_guest_name(value: object) -> bool:
    return isinstance(value, str) and GUEST_NAME.fullmatch(value) is not None


def is_interface_name(value: object) -> bool:
    return isinstance(value, str) and INTERFACE_NAME.fullmatch(value) is not None


def is_nft_name(value: object) -> bool:
    return isinstance(value, str) and NFT_NAME.fullmatch(value) is not None


def is_image_name(value: object) -> bool:
    return isinstance(value, str) and IMAGE_NAME.fullmatch(value) is not None


def is_kernel_cmdline(value: object) -> bool:
    """True for words of :data:`KERNEL_WORD` separated by single spaces (or nothing)."""
    if not isinstance(value, str):
        return False
    return value == "" or all(KERNEL_WORD.fullmatch(w) for w in value.split(" "))
