"""Disks scenario: discard, commit, backup/destroy/restore, golden image, sibling isolation.

The checks live in molecule/shared/mv6mol/disk_checks.py.
"""

from mv6mol.disk_checks import *  # noqa: F403
