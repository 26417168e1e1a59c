"""Helpers shared by the mv6.transition Molecule scenarios.

The scenarios run on the hypervisor itself (this machine). Everything here talks to real
things: network namespaces and veth pairs (``site``), tcpdump captures (``capture``), the
nftables counters (``nft``), and the guests through the QEMU guest agent (``agent``).
Nothing here is imported by the collection; it is test code only.
"""
