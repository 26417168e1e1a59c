"""Scenario 2 (IPv6-native host, IPv4-only guests): the network isolation checks.

The checks are shared with v6_parallel; see molecule/shared/mv6mol/network_checks.py.
"""

from mv6mol.network_checks import *  # noqa: F403
