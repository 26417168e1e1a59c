"""Scenario 1 (IPv4-native host, IPv6-only guests): the network isolation checks.

The checks are shared with v4_parallel; see molecule/shared/mv6mol/network_checks.py.
"""

from mv6mol.network_checks import *  # noqa: F403
