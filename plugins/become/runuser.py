# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
name: runuser
short_description: Run a task as another user with util-linux runuser, from root
version_added: 1.0.0
author:
  - mv6.transition developers (@mv6-transition)
description:
  - Runs the task's command as O(become_user) with C(runuser -u USER --), from util-linux.
  - For hosts that are reached as root and have no sudo, such as MV6 guests over the
    P(mv6.transition.guest_agent#connection) connection. runuser never asks for a
    password and works only from root.
  - Unlike C(su), it keeps module pipelining, so a task still costs one exec.
options:
  become_user:
    description: The user to run the task as.
    type: str
    default: root
    ini:
      - section: privilege_escalation
        key: become_user
    vars:
      - name: ansible_become_user
      - name: ansible_runuser_user
    keyword:
      - name: become_user
  become_exe:
    description: The runuser program.
    type: str
    default: runuser
    vars:
      - name: ansible_become_exe
      - name: ansible_runuser_exe
  become_flags:
    description: Options given to runuser before C(-u), for example C(-g GROUP).
    type: str
    default: ""
    vars:
      - name: ansible_become_flags
      - name: ansible_runuser_flags
    keyword:
      - name: become_flags
"""

EXAMPLES = r"""
- name: Run as the application's user in a guest
  ansible.builtin.command: /usr/bin/id -un
  become: true
  become_method: mv6.transition.runuser
  become_user: app
  changed_when: false
"""

import shlex  # noqa: E402

from ansible.plugins.become import BecomeBase  # noqa: E402


class BecomeModule(BecomeBase):
    name = "mv6.transition.runuser"
    # runuser asks nothing: nothing to answer, and the module can still be the exec's input.
    pipelining = True

    def build_become_command(self, cmd, shell):
        super().build_become_command(cmd, shell)
        if not cmd:
            return cmd
        exe = self.get_option("become_exe") or "runuser"
        flags = self.get_option("become_flags") or ""
        user = self.get_option("become_user") or "root"
        parts = [shlex.quote(exe)]
        if flags:
            parts.append(flags)
        parts += ["-u", shlex.quote(user), "--", self._build_success_command(cmd, shell)]
        return " ".join(parts)
