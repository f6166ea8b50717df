"""Which network addresses the engine may reach on a user's behalf (server-side requests).

Every URL a user gives that the engine fetches or connects to (``getStreamInfo`` and stream
monitoring, recording and restream inputs, restream destinations that call out, IMAGE overlays,
webhooks) goes through one :class:`NetPolicy`. URLs the engine builds itself (an SRT listener on
its own port, the HLS folder, thumbnails) are not checked.

The check applies to the **resolved** addresses: a host name is resolved first and refused if
*any* of its addresses is refused (a name with one public and one private address could be
connected either way). Refused by default, whatever the caller's role:

- loopback (``127.0.0.0/8``, ``::1``), link-local (``169.254.0.0/16``, ``fe80::/10``),
  unspecified (``0.0.0.0``, ``::``), private (RFC 1918, ``fc00::/7``), shared (``100.64.0.0/10``)
  and the other non-global ranges Python's :mod:`ipaddress` knows; IPv4 inside IPv6
  (``::ffff:a.b.c.d``, 6to4, NAT64 ``64:ff9b::/96``) is judged by its IPv4 address;
- the cloud metadata services (:data:`METADATA_ADDRESSES`, :data:`METADATA_NAMES`): always, even
  when an allowed network covers them (no media source lives there).

``REELHOUSE_PROBE_ALLOW_NETWORKS`` (CIDR list, empty by default) opens networks again: ``make
up`` allows loopback because a one-machine stack reads local sources. Multicast groups are global
addresses and stay allowed (a UDP/RTP multicast input joins a group; it calls no host).

How FFmpeg is kept to the checked address (it resolves names and follows redirects itself) is
:mod:`reelhouse.common.netproxy` and :func:`pin_url`: HTTP and every TLS connection go through a
filtering proxy that checks each connection (redirects, HLS segments and DNS rebinding included);
the other protocols get the checked address in place of the name.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "BIND_ONLY",
    "METADATA_ADDRESSES",
    "METADATA_NAMES",
    "PROXIED_SCHEMES",
    "AddressRefused",
    "ErrorClass",
    "IPAddress",
    "IPNetwork",
    "NetPolicy",
    "Unresolvable",
    "parse_networks",
    "pin_url",
    "url_target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ErrorClass = Literal["unreachable", "refused", "timeout", "not_media", "forbidden_address"]
"""What a failed server-side request reports instead of the upstream's own text."""

METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, Oracle
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "169.254.170.2",  # AWS ECS task metadata
        "100.100.100.200",  # Alibaba Cloud
    )
)
"""Cloud metadata services: refused even when an allowed network covers them."""

METADATA_NAMES: Final[frozenset[str]] = frozenset(
    {"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
     "instance-data.ec2.internal"}
)  # fmt: skip
"""Names of metadata services, refused before any lookup."""

PROXIED_SCHEMES: Final[frozenset[str]] = frozenset({"http", "https", "rtmps", "rtsps"})
"""Schemes FFmpeg carries over HTTP or TLS, i.e. through the filtering proxy (``http_proxy``)."""

BIND_ONLY: Final = "bind-only"
"""What :func:`url_target` answers for a URL that only listens or receives (nothing to check)."""

_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")

RESOLVE_TIMEOUT_S: Final = 5.0

UNRESOLVABLE_TTL_S: Final = 30.0
"""How long a name that did not resolve is answered :class:`Unresolvable` without a new lookup
(a negative cache, as DNS has: a resolver that does not answer costs each name one
``resolve_timeout_s``, not one per request or per retry)."""

_UNRESOLVABLE: dict[str, float] = {}
"""Name → monotonic time until which it is known not to resolve (at most 1024 names)."""

_RESOLVER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="netpolicy-resolve")
"""The lookups' own threads: ``getaddrinfo`` cannot be cancelled, so one waiting on a resolver
that does not answer holds its thread past ``resolve_timeout_s``; here it holds one of these,
never one of the event loop's default executor (``asyncio.to_thread``: object storage, files)."""


def _known_unresolvable(name: str) -> bool:
    until = _UNRESOLVABLE.get(name)
    if until is None:
        return False
    if until > time.monotonic():
        return True
    _UNRESOLVABLE.pop(name, None)
    return False


def _remember_unresolvable(name: str) -> None:
    if len(_UNRESOLVABLE) >= 1024:
        now = time.monotonic()
        for stale in [n for n, until in _UNRESOLVABLE.items() if until <= now] or [
            next(iter(_UNRESOLVABLE))
        ]:
            _UNRESOLVABLE.pop(stale, None)
    _UNRESOLVABLE[name] = time.monotonic() + UNRESOLVABLE_TTL_S


class AddressRefused(ValueError):
    """A host resolves to an address the policy refuses (class ``forbidden_address``)."""

    error_class: Final = "forbidden_address"

    def __init__(self, host: str, address: str, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        shown = host if host == address else f"{host} ({address})"
        super().__init__(
            f"{shown} is a {reason} address, which the engine does not reach on a user's behalf "
            "(REELHOUSE_PROBE_ALLOW_NETWORKS)"
        )


class Unresolvable(OSError):
    """A host name has no address (class ``unreachable``)."""

    error_class: Final = "unreachable"


def parse_networks(value: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """``"127.0.0.0/8, ::1/128"`` (or a list) as networks; a bare address is its /32 or /128.

    Raises ``ValueError`` naming the first entry that is not a network.
    """
    items = value.replace(";", ",").split(",") if isinstance(value, str) else list(value)
    networks: list[IPNetwork] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network like 127.0.0.0/8 or ::1/128") from None
    return tuple(networks)


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv4Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _category(address: IPAddress) -> str | None:
    """Why ``address`` is refused by default, or None if it is a global address."""
    if address in METADATA_ADDRESSES:
        return "cloud metadata"
    if address.is_multicast:
        return None
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if address.is_unspecified:
        return "unspecified"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


@dataclass(frozen=True)
class NetPolicy:
    """The allow-list and the checks. ``NetPolicy()`` is the default: global addresses only."""

    allow: tuple[IPNetwork, ...] = field(default=())
    resolve_timeout_s: float = RESOLVE_TIMEOUT_S

    @classmethod
    def from_setting(cls, value: str) -> NetPolicy:
        """The policy of ``REELHOUSE_PROBE_ALLOW_NETWORKS``."""
        return cls(allow=parse_networks(value))

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached (``"loopback"``, ...), or None if it may."""
        inner = _embedded_ipv4(address)
        if inner is not None:
            reason = self.refusal(inner)
            if reason is not None:
                return reason
        if address in METADATA_ADDRESSES:
            return "cloud metadata"
        if any(address.version == net.version and address in net for net in self.allow):
            return None
        return _category(address)

    def check_address(self, host: str, address: str | IPAddress) -> IPAddress:
        """``address`` (of ``host``) if allowed; :class:`AddressRefused` otherwise."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        reason = self.refusal(ip)
        if reason is not None:
            raise AddressRefused(host, str(ip), reason)
        return ip

    async def resolve(self, host: str, port: int | None = None) -> list[IPAddress]:
        """Every address of ``host``, each checked; the allowed ones in the resolver's order.

        Raises :class:`AddressRefused` if any address is refused, :class:`Unresolvable` if there
        is none (unknown name, no DNS within ``resolve_timeout_s``; a name that failed so is
        answered so again for :data:`UNRESOLVABLE_TTL_S` without a lookup).
        """
        name = host.strip("[]").rstrip(".").lower()
        if not name:
            raise AddressRefused(host or "(no host)", "0.0.0.0", "unspecified")
        if name in METADATA_NAMES:
            raise AddressRefused(host, name, "cloud metadata")
        try:
            literal = ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            literal = None
        if literal is not None:
            return [self.check_address(host, literal)]
        if _known_unresolvable(name):
            raise Unresolvable(f"{host} could not be resolved (recently)")
        loop = asyncio.get_running_loop()
        lookup = functools.partial(socket.getaddrinfo, name, port, type=socket.SOCK_STREAM)
        try:
            infos = await asyncio.wait_for(
                loop.run_in_executor(_RESOLVER, lookup), self.resolve_timeout_s
            )
        except (OSError, UnicodeError, TimeoutError) as exc:
            _remember_unresolvable(name)
            raise Unresolvable(f"{host} could not be resolved") from exc
        found: list[IPAddress] = []
        for family, *_, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            if ip not in found:
                found.append(ip)
        if not found:
            _remember_unresolvable(name)
            raise Unresolvable(f"{host} has no address")
        for ip in found:
            self.check_address(host, ip)
        return found


def url_target(url: str, *, role: Literal["input", "output"]) -> tuple[str, int | None] | str:
    """The ``(host, port)`` that ``url`` makes FFmpeg call, or :data:`BIND_ONLY`.

    Bind-only URLs call nobody: a UDP input (FFmpeg receives; the host is the group or the bind
    address), an SRT ``mode=listener``, and an SRT, RTP or RIST input whose host is empty, ``@``
    or unspecified (listen on this node). Anything else is a target: ``rtsp://0.0.0.0`` or an
    output to ``0.0.0.0`` connects to this host, and is refused as ``unspecified``.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        port = None
    query = parse_qs(parts.query)
    if scheme == "srt" and "listener" in query.get("mode", []):
        return BIND_ONLY
    if role == "input":
        if scheme == "udp":
            return BIND_ONLY
        if scheme in ("srt", "rtp", "rist") and host in ("", "@", "0.0.0.0", "::"):
            return BIND_ONLY
    return host, port


def pin_url(url: str, address: IPAddress) -> str:
    """``url`` with its host replaced by ``address`` (user info, port, path, query and an SRT
    ``#!::`` stream id kept as written)."""
    parts = urlsplit(url)
    start = url.index("//") + 2
    netloc = url[start : start + len(parts.netloc)]
    userinfo, at, _hostport = netloc.rpartition("@")
    host = f"[{address}]" if address.version == 6 else str(address)
    try:
        port = parts.port
    except ValueError:
        port = None
    hostport = f"{host}:{port}" if port is not None else host
    return f"{url[:start]}{userinfo}{at}{hostport}{url[start + len(netloc) :]}"


Role = Literal["input", "output"]


async def checked_target(policy: NetPolicy, url: str, *, role: Role) -> str:
    """The URL to hand FFmpeg for ``url``, once its target's addresses passed ``policy``.

    Bind-only URLs come back unchanged (nothing is called). Schemes FFmpeg carries over HTTP or
    TLS (:data:`PROXIED_SCHEMES`) come back unchanged too: the filtering proxy checks each of
    their connections again, and TLS needs the name. Every other URL comes back with the checked
    address in place of the name, so FFmpeg cannot resolve it to something else.
    Raises :class:`AddressRefused` or :class:`Unresolvable`.
    """
    target = url_target(url, role=role)
    if target == BIND_ONLY:
        return url
    host, port = target
    addresses = await policy.resolve(host, port)
    if urlsplit(url).scheme.lower() in PROXIED_SCHEMES:
        return url
    return pin_url(url, addresses[0])


async def validate_url(
    policy: NetPolicy, url: str, *, role: Role, field: str, must_resolve: bool = False
) -> None:
    """Refuse ``url`` (a request field) whose target the policy refuses: a 400 naming ``field``
    with reason ``forbidden_address``. A name that does not resolve now passes unless
    ``must_resolve`` (a stored job retries and is checked again when it runs); with it, a 502
    with reason ``unreachable``.
    """
    from reelhouse.common.errors import UpstreamError, ValidationFailed

    try:
        await checked_target(policy, url, role=role)
    except AddressRefused as exc:
        raise ValidationFailed(
            f"{field}: {exc}", field=field, reason=AddressRefused.error_class
        ) from None
    except Unresolvable as exc:
        if must_resolve:
            raise UpstreamError(
                f"{field}: {exc} (unreachable)", field=field, reason=Unresolvable.error_class
            ) from None
