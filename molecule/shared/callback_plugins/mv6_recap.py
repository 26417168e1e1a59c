# Copyright (c) mv6.transition developers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Write each playbook run's recap to a JSON-lines file, for the scenario's verify step.

Molecule's ``check`` step runs converge.yml with ``--check`` but does not look at what
changed; the scenarios must prove that a check-mode run reports ``changed=0``. This callback
appends one line per run to ``$MV6_MOL_RECAP_FILE``: the playbook, whether it ran in check
mode, and the per-host stats. The verify tests read it.
"""

from __future__ import annotations

import json
import os
import time

from ansible import context
from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: mv6_recap
type: aggregate
short_description: Record every play recap to a JSON-lines file (Molecule scenarios only)
description:
  - Appends the per-host stats of each playbook run to the file named by the environment
    variable E(MV6_MOL_RECAP_FILE); does nothing when it is not set.
requirements:
  - enable in callbacks_enabled
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "mv6_recap"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._playbook = None

    def v2_playbook_on_start(self, playbook) -> None:
        self._playbook = os.path.basename(playbook._file_name)

    def v2_playbook_on_stats(self, stats) -> None:
        path = os.environ.get("MV6_MOL_RECAP_FILE")
        if not path:
            return
        hosts = {str(h): stats.summarize(h) for h in sorted(stats.processed)}
        record = {
            "time": time.time(),
            "playbook": self._playbook,
            "check": bool(context.CLIARGS.get("check", False)),
            "hosts": hosts,
        }
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")
