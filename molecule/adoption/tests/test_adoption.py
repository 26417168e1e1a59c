"""Adoption scenario: native state and service untouched; teardown restores the host.

The checks live in molecule/shared/mv6mol/adoption_checks.py.
"""

from mv6mol.adoption_checks import *  # noqa: F403
