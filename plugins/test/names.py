# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

"""Jinja tests for the collection's name rules; thin wrappers of module_utils/_names.py
(documented in guest_name.yml, interface_name.yml, image_name.yml and kernel_cmdline.yml)."""

from __future__ import annotations

from ansible_collections.mv6.transition.plugins.module_utils import _names


class TestModule:
    def tests(self):
        return {
            "guest_name": _names.is_guest_name,
            "interface_name": _names.is_interface_name,
            "image_name": _names.is_image_name,
            "kernel_cmdline": _names.is_kernel_cmdline,
        }
