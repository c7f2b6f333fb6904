"""Which network addresses a URL a job or a reference names may reach: the one rule, for the cache's downloads and
the worker's image and upload URLs alike."""

from __future__ import annotations

import ipaddress


def is_public_address(address: str) -> bool:
    """Whether an IP address is on the public internet. An IPv4-mapped IPv6 address is judged as the IPv4 it
    maps."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
