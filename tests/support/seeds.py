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


@cache
def _requests(document: str) -> tuple[tuple[str, str], ...]:
    found = []
    for line in (SEEDS / document).read_text().splitlines():
        match = _CURL.search(line)
        if match:
            found.append((match["path"], match["data"]))
    return tuple(found)


def seed_payloads(document: str, path: str) -> list[dict[str, Any]]:
    """Every example body the document sends to ``path`` (fresh copies)."""
    return [copy.deepcopy(json.loads(data)) for p, data in _requests(document) if p == path]


def recording_payload(index: int = 0, **changes: Any) -> dict[str, Any]:
    """A seed ``/api/recording/create`` body (0: mp4 archive, 1: split, 2: HLS) with changes."""
    body = seed_payloads("recordings-api.txt", "/api/recording/create")[index]
    body.update(changes)
    return body
