"""Offline stand-in for the get-pip.py script that ansible-test downloads.

ansible-test bootstraps pip in every venv it makes with a script fetched from a host that is
not reachable here. This stand-in does the same job with the standard library: ensurepip
installs pip, then pip installs what ansible-test asked for.
"""

from __future__ import annotations

import ensurepip
import os
import subprocess
import sys

_DROPPED = {"--no-setuptools", "--no-wheel"}


def main() -> None:
    saved = dict(os.environ)
    ensurepip.bootstrap(upgrade=True)
    # ensurepip points PIP_CONFIG_FILE at /dev/null, which drops the machine's pip settings.
    os.environ.clear()
    os.environ.update(saved)
    args = [a for a in sys.argv[1:] if a not in _DROPPED]
    if args:
        subprocess.run([sys.executable, "-m", "pip", "install", *args], check=True)


if __name__ == "__main__":
    main()
