"""Who may publish or read: the answer to one ``connect`` event, from the stream rows (a pure
function, so every rule is tested without sockets).

Rules (docs/INGEST.md, docs/DECISIONS.md "Ingest"):

- The server must be one this node serves and ``active`` (else ``unknown_stream`` for a server
  we do not know, ``inactive`` for a stopped one).
- A **publisher** needs a row on that server with ``role_name: publisher`` whose stream id names
  the contribution (``publisher/<name>``, or ``<name>`` itself). No row: ``unknown_stream``; only
  inactive rows: ``inactive``; a row with a ``host`` the caller's address does not match:
  ``forbidden_host``.
- A **reader on the server's port** needs a ``receiver`` row for the name (``receiver/<name>``),
  or else the publisher row of the name (readers of a contribution its publisher row allows);
  the same checks apply.
- A **reader on the fan-out listener** is one of the engine's jobs: it is allowed when the
  server is active and the contribution has an active publisher row (no host, no passphrase).
- SRT: the verdict carries the passphrase the connection must use: the row's own, else the
  server's (``""``: unencrypted); the data plane compares it (``bad_passphrase``,
  ``missing_passphrase``). RTMP: a publisher row with a ``passphrase`` wants it as ``?key=``;
  a missing or different key is ``bad_passphrase`` (compared in constant time).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass
from typing import Any

from reelhouse.common.ingest import stream_name


@dataclass(frozen=True)
class Verdict:
    allow: bool
    passphrase: str = ""
    reason: str = ""
    row_id: str = ""

    def command(self, req: str) -> dict[str, Any]:
        """The ``verdict`` command for request ``req``."""
        if self.allow:
            return {"op": "verdict", "req": req, "allow": True, "passphrase": self.passphrase}
        return {"op": "verdict", "req": req, "allow": False, "reason": self.reason}


def refuse(reason: str) -> Verdict:
    return Verdict(allow=False, reason=reason)


def remote_ip(remote: str) -> str:
    """The address part of ``ip:port`` / ``[v6]:port``."""
    if remote.startswith("["):
        return remote[1 : remote.find("]")]
    host, sep, port = remote.rpartition(":")
    if sep and port.isdigit() and host.count(":") == 0:
        return host
    return remote


def host_matches(host: str, remote: str, resolved: frozenset[str] = frozenset()) -> bool:
    """Whether a row's ``host`` binding admits a caller at ``remote`` (``ip:port``). ``host`` is
    an address, or a name whose addresses the caller resolved into ``resolved``."""
    if not host:
        return True
    ip = remote_ip(remote)
    try:
        caller = ipaddress.ip_address(ip)
    except ValueError:
        return False
    candidates = {host.strip("[]"), *resolved}
    for candidate in candidates:
        try:
            if _plain(ipaddress.ip_address(candidate)) == _plain(caller):
                return True
        except ValueError:
            continue
    return False


def _plain(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Any:
    """An IPv4-mapped IPv6 address as the IPv4 address it is."""
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _rows_named(rows: list[dict[str, Any]], proto: str, name: str, role: str) -> list[dict]:
    return [
        r
        for r in rows
        if r.get("role_name") == role and stream_name(proto, str(r.get("stream_id", ""))) == name
        and (proto != "srt" or _srt_role_fits(str(r.get("stream_id", "")), role))
    ]  # fmt: skip


def _srt_role_fits(stream_id: str, role: str) -> bool:
    # `receiver/x` on a publisher row would be a contradiction: do not match it.
    other = "receiver/" if role == "publisher" else "publisher/"
    return not stream_id.startswith(other)


def decide(
    event: dict[str, Any],
    server: dict[str, Any] | None,
    rows: list[dict[str, Any]],
    *,
    resolved: dict[str, frozenset[str]] | None = None,
) -> Verdict:
    """The verdict for ``event`` (a ``connect``) given its server document (None: not served
    here) and that server's stream rows. ``resolved`` maps host names of rows to addresses."""
    if server is None:
        return refuse("unknown_stream")
    if not server.get("active"):
        return refuse("inactive")
    proto = str(event.get("proto") or server.get("proto") or "srt")
    name = str(event.get("name") or "")
    if not name:
        return refuse("bad_stream_id")
    role = event.get("role")
    via = event.get("via", "server")
    publishers = _rows_named(rows, proto, name, "publisher")
    if via == "fanout":
        if not publishers:
            return refuse("unknown_stream")
        active = [r for r in publishers if r.get("active")]
        if not active:
            return refuse("inactive")
        return Verdict(allow=True, row_id=str(active[0].get("_id", "")))
    if role == "publish":
        candidates = publishers
    else:
        candidates = _rows_named(rows, proto, name, "receiver") or publishers
    if not candidates:
        return refuse("unknown_stream")
    active = [r for r in candidates if r.get("active")]
    if not active:
        return refuse("inactive")
    remote = str(event.get("remote", ""))
    resolved = resolved or {}
    fitting = [
        r for r in active
        if host_matches(str(r.get("host") or ""), remote,
                        resolved.get(str(r.get("host")), frozenset()))
    ]  # fmt: skip
    if not fitting:
        return refuse("forbidden_host")
    # A row bound to this host wins over an unbound one (it is the more specific rule).
    row = next((r for r in fitting if r.get("host")), fitting[0])
    row_id = str(row.get("_id", ""))
    own = str(row.get("passphrase") or "")
    if proto == "rtmp":
        if role == "publish" and own:
            key = str(event.get("key") or "")
            if not hmac.compare_digest(key.encode(), own.encode()):
                return refuse("bad_passphrase")
        return Verdict(allow=True, row_id=row_id)
    return Verdict(
        allow=True, passphrase=own or str(server.get("server_passphrase") or ""), row_id=row_id
    )
