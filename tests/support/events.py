"""Every job event of a test's deployment, as received on NATS."""

from __future__ import annotations

import json
from typing import Any

import nats

from reelhouse.common.subjects import Subjects


class Events:
    """Every event of this test's deployment, as received."""

    def __init__(self, url: str, prefix: str) -> None:
        self.url, self.subject = url, Subjects(prefix).all_events()
        self.received: list[dict[str, Any]] = []

    async def __aenter__(self) -> Events:
        self.nc = await nats.connect(self.url)

        async def on_msg(msg: Any) -> None:
            self.received.append(json.loads(msg.data))

        await self.nc.subscribe(self.subject, cb=on_msg)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.nc.close()

    def types(self, job_id: str) -> list[str]:
        return [e["type"] for e in self.received if e.get("job_id") == job_id]
