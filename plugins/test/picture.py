# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Jinja test plan_picture_file (documented in plan_picture_file.yml): a thin wrapper of
module_utils/_diagram.drawn_here."""

from __future__ import annotations

from ansible_collections.mv6.transition.plugins.module_utils import _diagram


def plan_picture_file(text) -> bool:
    return isinstance(text, str) and _diagram.drawn_here(text)


class TestModule:
    def tests(self):
        return {"plan_picture_file": plan_picture_file}
