"""Reading the live plane (docs/ARCHITECTURE.md §2) from a test, as an operator's tool would: a
node's heartbeat value from the ``<prefix>_live`` key-value bucket on the test's nats-server."""

from __future__ import annotations

import json
from typing import Any

import nats
import nats.js.errors

from reelhouse.common.subjects import Subjects


async def node_beat(nats_url: str, prefix: str, service: str, node: str) -> dict[str, Any] | None:
    """The node's last heartbeat (``at``, ``running_jobs``, ``capacity``, ...), or None."""
    subjects = Subjects(prefix)
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(subjects.live_bucket())
        entry = await kv.get(subjects.live_node(service, node))
    except (nats.js.errors.BucketNotFoundError, nats.js.errors.KeyNotFoundError):
        return None
    finally:
        await nc.close()
    return json.loads(entry.value) if entry.value else None
