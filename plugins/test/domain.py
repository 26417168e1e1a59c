# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Jinja test mv6_domain (documented in mv6_domain.yml): a thin wrapper of
module_utils/_isolation.is_mv6_domain, the same check as the isolation audit's."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ansible_collections.mv6.transition.plugins.module_utils import _isolation


def mv6_domain(xml_text) -> bool:
    """Whether a libvirt domain's XML carries the MV6 metadata element; XML that cannot be
    parsed is not an MV6 domain (it is then left alone)."""
    if not isinstance(xml_text, str):
        return False
    try:
        return _isolation.is_mv6_domain(xml_text)
    except ET.ParseError:
        return False


class TestModule:
    def tests(self):
        return {"mv6_domain": mv6_domain}
