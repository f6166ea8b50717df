"""The local server's indexes (tools/ferretdb-lite/prepare.go, ``indexed``) against the code.

FerretDB v1 uses an index only for a top-level equality, and only one the helper made itself, so
its list must name every collection of the engine and the fields its hot queries compare by
equality. The Go source is parsed; nothing is built or run here.
"""

from __future__ import annotations

import re
from pathlib import Path

from reelhouse.api.accounts.service import Collections as AccountCollections
from reelhouse.api.events.webhook_worker import DELIVERIES, WEBHOOKS
from reelhouse.common.logging import LOGS_COLLECTION
from reelhouse.common.mongo import Collections
from reelhouse.common.runtime import SETTINGS_COLLECTION

PREPARE = Path(__file__).resolve().parents[2] / "tools/ferretdb-lite/prepare.go"


def indexed() -> dict[str, set[str]]:
    source = PREPARE.read_text()
    block = source[source.index("var indexed = map[string][]string{") :]
    block = block[: block.index("\n}\n")]
    rows = re.findall(r'^\s*"([a-z_]+)":\s*\{([^}]*)\},', block, re.M)
    return {name: set(re.findall(r'"([a-z_]+)"', fields)) for name, fields in rows}


def names(holder: type) -> set[str]:
    return {v for k, v in vars(holder).items() if k.isupper() and isinstance(v, str)}


def test_every_collection_of_the_engine_is_prepared():
    expected = names(Collections) | names(AccountCollections)
    expected |= {WEBHOOKS, DELIVERIES, LOGS_COLLECTION, SETTINGS_COLLECTION}
    assert expected - set(indexed()) == set()


def test_the_hot_equality_fields_are_indexed():
    have = indexed()
    for jobs in (Collections.RECORDINGS, Collections.RESTREAMS):
        assert {"tenant", "active"} <= have[jobs]
    for linked in (Collections.INPUTS, Collections.OUTPUTS):  # jobs.fetch_linked
        assert "entity_id" in have[linked]
    assert {"tenant", "entity_id", "status"} <= have[Collections.FILES]  # getFiles, retention
    assert {"tenant", "entity_id"} <= have[Collections.STREAMS]  # + ingest verdicts
    for servers in (Collections.SRT_SERVERS, Collections.RTMP_SERVERS):  # ingest reconcile
        assert {"tenant", "active"} <= have[servers]
    assert {"tenant", "username"} <= have[AccountCollections.USERS]
    assert {"tenant", "key_hash"} <= have[AccountCollections.API_KEYS]
