"""The seeds' example payloads (``shared/seeds/*.txt``), read from the documents themselves."""

from __future__ import annotations

import copy
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

# Copies of ../shared/seeds (the contract), so a clone alone can run the suite.
SEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "seeds"
_CURL = re.compile(r"--url http://localhost(?P<path>/api/\S+).*?--data '(?P<data>.*?)'\s*$")
# The same curl written over several lines (streams-api.txt): the JSON ends with "}'" at a
# line end, and no other --url comes in between.
_CURL_MULTILINE = re.compile(
    r"--url http://localhost(?P<path>/api/[^\s\\]+)(?:(?!--url).)*?"
    r"--data '(?P<data>\{.*?\})'[ \t]*$",
    re.S | re.M,
)


@cache
def _requests(document: str) -> tuple[tuple[str, str], ...]:
    found = []
    text = (SEEDS / document).read_text()
    for line in text.splitlines():
        match = _CURL.search(line)
        if match:
            found.append((match["path"], match["data"]))
    if not found:
        found = [(m["path"], m["data"]) for m in _CURL_MULTILINE.finditer(text)]
    return tuple(found)


def seed_payloads(document: str, path: str) -> list[dict[str, Any]]:
    """Every example body the document sends to ``path`` (fresh copies)."""
    return [copy.deepcopy(json.loads(data)) for p, data in _requests(document) if p == path]


def recording_payload(index: int = 0, **changes: Any) -> dict[str, Any]:
    """A seed ``/api/recording/create`` body (0: mp4 archive, 1: split, 2: HLS) with changes."""
    body = seed_payloads("recordings-api.txt", "/api/recording/create")[index]
    body.update(changes)
    return body


def restream_payload(index: int = 0, **changes: Any) -> dict[str, Any]:
    """A seed ``/api/restream/create`` body (0: SRT→RTMP, 1: SRT→SRT, 2: HLS→DEV_NULL)."""
    bodies = seed_payloads("restreams-api.txt", "/api/restream/create")
    body = bodies[index]
    body.update(changes)
    return body


DROP = object()
"""With :func:`changed`: remove the key."""


def changed(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """``body`` with nested changes: ``input__input_stream_url="..."`` sets
    ``body["input"]["input_stream_url"]``; a value of :data:`DROP` removes the key."""
    for path, value in changes.items():
        target = body
        keys = path.split("__")
        for key in keys[:-1]:
            target = target[key]
        if value is DROP:
            del target[keys[-1]]
        else:
            target[keys[-1]] = copy.deepcopy(value)
    return body


SEED_SERVERS = {
    "srt_servers": {"_id": "680400000000000000000001", "server_name": "Seed SRT server",
                    "server_port": 10001, "server_latency": 120, "server_passphrase": ""},
    "rtmp_servers": {"_id": "680500000000000000000001", "server_name": "Seed RTMP server",
                     "server_port": 1936},
}  # fmt: skip
"""The servers the Streams seed's rows sit on (``entity_id`` 6804…01 and 6805…01): stream rows
must name an existing server, and the seed's payloads are used as they are."""


async def seed_servers(db: Any, tenant: str = "default") -> None:
    """Store :data:`SEED_SERVERS` (inactive, so no ingest node opens them) unless present."""
    from bson import ObjectId

    from reelhouse.common.contracts.base import utcnow

    now = utcnow()
    for collection, server in SEED_SERVERS.items():
        doc = {**server, "_id": ObjectId(server["_id"]), "tenant": tenant, "active": False,
               "node": "", "generation": 0, "created": now, "modified": now}  # fmt: skip
        await db[collection].update_one({"_id": doc["_id"]}, {"$setOnInsert": doc}, upsert=True)
