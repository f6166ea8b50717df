"""What went wrong with a destination, read from FFmpeg's own messages.

FFmpeg reports a failed output on stderr in a few recognisable shapes (as printed by FFmpeg 5.1):

* ``[tcp @ 0x..] Connection to tcp://host:1935?tcp_nodelay=0 failed: Connection refused``
* ``[fifo @ 0x..] Error opening rtmp://host/app/key: Connection refused`` (tee slave behind a FIFO)
* ``[fifo @ 0x..] Recovery failed: Connection refused`` / ``[fifo @ 0x..] Recovery successful``
* ``[rtmp @ 0x..] Server error: Authentication failed`` (the server's own description)
* ``[srt @ 0x..] Connection setup failure: connection rejected`` (SRT passphrase/streamid refused)
* ``[srt @ 0x..] Connection setup failure: connection timed out``
* ``...processAsyncConnectRequest: REJECT reported from HS processing: Password required or
  unexpected`` (libsrt's own log line when the passphrase does not match)
* ``[hls @ 0x..] ... No space left on device`` / ``av_interleaved_write_frame(): No space left on
  device`` (ENOSPC: the storage is full; ``disk_full``, checked before ``protocol_error``)

:func:`classify` maps one line (or several) to a :data:`FailureKind`. Stream-key and
authentication rejections are told apart because retrying them at the usual pace only hammers the
destination; the restreamer retries those slowly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from reelhouse.common.contracts.messages import FailureKind
from reelhouse.common.netpolicy import ErrorClass

__all__ = ["FIFO_LINE", "classify", "classify_lines", "mask_secret", "request_error_class"]

_RULES: tuple[tuple[FailureKind, re.Pattern[str]], ...] = (
    (
        "auth_rejected",
        re.compile(
            r"authenticat|unauthori[sz]ed|forbidden|\b40[13]\b|badname|bad name|"
            r"publish\.(?:badname|denied|rejected)|connect\.rejected|not allowed|"
            r"invalid (?:stream )?key|stream key|connection rejected|passphrase|"
            r"access denied|permission denied|password|\breject",
            re.I,
        ),
    ),
    ("connection_refused", re.compile(r"connection refused|econnrefused", re.I)),
    (
        "timeout",
        re.compile(r"timed out|timeout|no route to host|network is unreachable", re.I),
    ),
    ("not_found", re.compile(r"\b404\b|not found|no such stream|unknown stream", re.I)),
    ("disk_full", re.compile(r"no space left on device|enospc|disk quota exceeded", re.I)),
    (
        "protocol_error",
        re.compile(
            r"broken pipe|connection reset|end of file|invalid data|protocol|"
            r"input/output error|server error|error writing|error opening|failed to",
            re.I,
        ),
    ),
)

FIFO_LINE = re.compile(r"^\[fifo @ (?P<ctx>0x[0-9a-f]+)\] (?P<message>.*)$")
"""A line of one tee slave's FIFO (the context address tells the slaves apart)."""


def classify(line: str) -> FailureKind | None:
    """The kind of failure ``line`` reports, or None if it reports none."""
    for kind, pattern in _RULES:
        if pattern.search(line):
            return kind
    return None


def classify_lines(lines: Iterable[str]) -> FailureKind:
    """The most specific failure among ``lines`` (FFmpeg's stderr tail); ``unknown`` if none."""
    found = {kind for kind in map(classify, lines) if kind is not None}
    for kind, _ in _RULES:  # in order of specificity
        if kind in found:
            return kind
    return "unknown"


_REQUEST_RULES: tuple[tuple[ErrorClass, re.Pattern[str]], ...] = (
    (
        "unreachable",
        re.compile(
            r"no route to host|network is unreachable|host is unreachable|"
            r"name or service not known|failed to resolve|could not resolve|"
            r"name does not resolve|temporary failure in name resolution|"
            r"cannot assign requested address",
            re.I,
        ),
    ),
    ("timeout", re.compile(r"timed out|timeout", re.I)),
    (
        "refused",
        re.compile(
            r"connection refused|econnrefused|connection rejected|\breject|"
            r"server returned|forbidden|unauthori[sz]ed|\b40[134]\b|not found|"
            r"authenticat|connection reset|broken pipe",
            re.I,
        ),
    ),
)


def request_error_class(lines: Iterable[str]) -> ErrorClass:
    """The class of a failed probe or fetch read from FFmpeg's stderr: ``unreachable``,
    ``timeout``, ``refused``, or ``not_media`` (it answered, with nothing readable as media)."""
    text = "\n".join(lines)
    for kind, pattern in _REQUEST_RULES:
        if pattern.search(text):
            return kind
    return "not_media"


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.I)
_SECRET_QUERY = re.compile(r"(?P<key>passphrase|streamid|key|token|auth|pass)=[^&\s]*", re.I)


def mask_secret(url: str, *, secret_path_segment: bool = False) -> str:
    """``url`` safe to show: credentials, passphrases and (RTMP) the stream key masked."""
    url = _USERINFO.sub(r"\g<scheme>****@", url)
    url = _SECRET_QUERY.sub(r"\g<key>=****", url)
    if secret_path_segment:
        head, sep, _key = url.rpartition("/")
        if sep and head.count("/") >= 3:  # scheme://host/app/<key>
            url = f"{head}/****"
    return url
