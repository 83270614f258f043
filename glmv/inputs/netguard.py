"""SSRF guard: which hosts a media URL may name, and resolving a host once to an address that is then checked.

The fetcher connects to the very address returned here (never re-resolving the name), so a DNS answer that
changes between the check and the connection (DNS rebinding) cannot steer a download to an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

from glmv.inputs.errors import InvalidInputError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance-metadata services that a public-looking address can also reach (Azure's wireserver is a public IP).
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
    "169.254.170.2",  # AWS ECS task metadata
    "100.100.100.200",  # Alibaba Cloud
    "168.63.129.16",  # Azure wireserver
    "fd00:ec2::254",  # AWS IPv6
))


def normalize_host(host: str) -> str:
    return host.strip().lower().rstrip(".").strip("[]")


def host_is_listed(host: str, allowed: tuple[str, ...]) -> bool:
    """`host` equals an entry of --allowed-media-domains, or falls under a `*.example.com` entry."""
    host = normalize_host(host)
    for entry in allowed:
        entry = normalize_host(entry)
        if entry.startswith("*."):
            if host.endswith(entry[1:]) and len(host) > len(entry) - 1:
                return True
        elif host == entry:
            return True
    return False


def address_refusal(ip: IPAddress) -> str | None:
    """Why a media download must not connect to `ip`, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        for embedded in (ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None):
            if embedded is not None:
                reason = address_refusal(embedded)
                if reason:
                    return reason
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_reserved:
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "an address that is not publicly routable"
    return None


async def resolve_checked(host: str, port: int, allowed_domains: tuple[str, ...], where: str) -> str:
    """Resolve `host` and return the one address to connect to, or refuse (400) by the rules above.

    With --allowed-media-domains set, only hosts on that list are reachable (as in vLLM), and those may be private
    (the operator vouched for them); an entry `*` keeps every other host reachable too, on public addresses only.
    Without the flag, any host is reachable whose every address is public.
    """
    host = normalize_host(host)
    listed = host_is_listed(host, tuple(d for d in allowed_domains if d != "*"))
    if allowed_domains and not listed and "*" not in allowed_domains:
        raise InvalidInputError(
            f"{where}: the host '{host}' is not in --allowed-media-domains ({', '.join(allowed_domains)}).",
            param=where, code="media_host_not_allowed")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = await _resolve(host, port, where)
    if not listed:
        for ip in addresses:
            reason = address_refusal(ip)
            if reason:
                raise InvalidInputError(
                    f"{where}: refusing to fetch from '{host}': it resolves to {ip}, {reason}. An operator can allow "
                    "such a host by naming it in --allowed-media-domains.",
                    param=where, code="media_host_not_allowed")
    return str(addresses[0])


async def _resolve(host: str, port: int, where: str) -> list[IPAddress]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidInputError(f"{where}: cannot resolve the host '{host}' ({exc}).", param=where,
                                code="media_fetch_failed") from None
    seen: list[IPAddress] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in seen:
            seen.append(ip)
    if not seen:
        raise InvalidInputError(f"{where}: the host '{host}' has no address.", param=where, code="media_fetch_failed")
    return seen
