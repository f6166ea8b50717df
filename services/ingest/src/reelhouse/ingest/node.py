"""One ingest node: the data plane, the servers it opens, its verdicts, events and statistics.

- **Servers**: every active server of ``srt_servers`` and ``rtmp_servers`` whose ``node`` is
  empty or names this node, and whose port lies in the settings' range, is opened with
  ``listen``; the others are closed. Reloaded on the API's hints (``<p>.cmd.ingest.*``) and
  every ``REELHOUSE_INGEST_RECONCILE_S``; re-sent in full after a data plane restart.
- **Verdicts**: each ``connect`` is answered from the server's stream rows (cached for
  ``REELHOUSE_INGEST_ROWS_CACHE_S``, dropped on hints) by :func:`reelhouse.ingest.verdict.decide`.
- **Events**: ``refused`` becomes ``ingest_refused``; the publisher events and
  ``contribution_ended`` go out as they are (:class:`IngestEvent`, tenant of the server).
- **Live plane**: ``ingest.<server_id>.<token>`` per contribution (node, fan-out, publisher,
  readers), ``ingeststats.<server_id>`` per open server, both refreshed with every ``stats``
  and expiring by themselves if this node dies.
- **Relay server** (``REELHOUSE_INGEST_RELAY_PORT``): one internal SRT server,
  :data:`~reelhouse.common.ingest.RELAY_SERVER_ID`, on the fan-out's address, announced in the
  live key ``ingestrelay``. A publisher there is a restream's relay stage: allowed as
  contribution ``<job_id>`` with the passphrase of the live key ``relays.<job_id>`` (the
  restreamer's per-run secret); fan-out readers of it are that restream's destinations.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import socket
import time
from typing import Any

import nats.js.errors
from bson import ObjectId

from reelhouse.common.contracts.ingest import (
    COLLECTION_OF_PROTO,
    INGEST_EVENTS,
    ContributionStat,
    IngestStats,
    conn_stat,
)
from reelhouse.common.contracts.messages import JobCommand
from reelhouse.common.events import build_event
from reelhouse.common.ffmpeg.supervisor import SupervisorConfig
from reelhouse.common.ingest import RELAY_SERVER_ID
from reelhouse.common.live import decode
from reelhouse.common.logging import get_logger
from reelhouse.common.mongo import Collections
from reelhouse.common.service import ServiceContext
from reelhouse.ingest.dataplane import DataPlane
from reelhouse.ingest.settings import IngestSettings
from reelhouse.ingest.verdict import Verdict, decide, refuse

log = get_logger("reelhouse.ingest")

MODULE_OF_PROTO = {"srt": "MODULE_SRT_SERVERS", "rtmp": "MODULE_RTMP_SERVERS"}


def _seconds(value: float) -> str:
    """A Go duration flag value (``1.5s``)."""
    return f"{value:g}s"


def dataplane_argv(settings: IngestSettings) -> list[str]:
    """The data plane's command line (docs/INGEST.md "Process and pipes")."""
    return [
        settings.ingest_dataplane_path,
        "-fanout", f"{settings.ingest_fanout_host}:{settings.ingest_fanout_port}",
        "-stats-interval", _seconds(settings.ingest_stats_interval_s),
        "-gap-hold", _seconds(settings.ingest_gap_hold_s),
        "-takeover-idle", _seconds(settings.ingest_takeover_idle_s),
        "-verdict-timeout", _seconds(settings.ingest_verdict_timeout_s),
    ]  # fmt: skip


class IngestNode:
    """Everything one ingest service does, around one supervised data plane."""

    def __init__(self, ctx: ServiceContext[IngestSettings]) -> None:
        self.ctx = ctx
        self.settings = ctx.settings
        self.db = ctx.db
        self.bus = ctx.bus
        self.live = ctx.live
        self.hostname = socket.gethostname()
        # Desired: the servers this node serves, by id (their documents, with `proto`).
        self.servers: dict[str, dict[str, Any]] = {}
        # Every server's tenant once seen: a stopped or removed server's last events
        # (contribution_ended) still go out under it.
        self._tenants: dict[str, str] = {}
        # What the current data plane process was told: server id -> (proto, port, latency).
        self.opened: dict[str, tuple[str, int, int]] = {}
        self.status: dict[str, tuple[str, str]] = {}  # server id -> (state, error) last written
        self._rows: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self.contribs: dict[tuple[str, str], dict[str, Any]] = {}
        self.relay_listening = False  # the relay server is open in the current data plane
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        backoff = SupervisorConfig(
            backoff_initial_s=self.settings.ingest_retry_initial_s,
            backoff_max_s=max(self.settings.ingest_retry_max_s,
                              self.settings.ingest_retry_initial_s),
        )  # fmt: skip
        self.dp = DataPlane(
            dataplane_argv(self.settings),
            on_event=self._on_event,
            on_exit=self._on_crash,
            backoff=backoff,
        )

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the service is asked to stop; then stop the data plane."""
        ctx = self.ctx
        while not await self.bus.wait_connected(timeout=1.0):
            if ctx.stop.is_set():
                return
        sub = await self.bus.nc.subscribe(self.bus.subjects.commands("ingest"), cb=self._on_hint)
        self.dp.start()
        log.info(
            "ingest_ready",
            srt_ports=self.settings.ingest_srt_ports,
            rtmp_ports=self.settings.ingest_rtmp_ports,
            fanout_port=self.settings.ingest_fanout_port,
        )
        try:
            while not ctx.stop.is_set():
                self._wake.clear()
                try:
                    await self.reconcile()
                except Exception as exc:
                    log.warning("ingest_reconcile_failed", error=str(exc).splitlines()[0][:200])
                stop = asyncio.create_task(ctx.stop.wait())
                wake = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    {stop, wake},
                    timeout=self.settings.ingest_reconcile_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                stop.cancel()
                wake.cancel()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            await self._withdraw_relay()
            await self.dp.stop()
            for task in list(self._tasks):
                task.cancel()
            await self._forget_all("closed", publish=False)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def serves(self, doc: dict[str, Any]) -> bool:
        node = str(doc.get("node") or "")
        return node in ("", self.ctx.node_id, self.hostname)

    def in_range(self, proto: str, port: int) -> bool:
        low, high = self.settings.port_range(proto)
        return low <= port <= high

    async def load_servers(self) -> dict[str, dict[str, Any]]:
        """The active servers this node serves, from MongoDB (a handful of documents)."""
        found: dict[str, dict[str, Any]] = {}
        for proto, collection in COLLECTION_OF_PROTO.items():
            async for doc in self.db[collection].find({"active": True}):
                if not self.serves(doc):
                    continue
                port = int(doc.get("server_port") or 0)
                if not self.in_range(proto, port):
                    log.warning("ingest_port_out_of_range", server_id=str(doc["_id"]),
                                proto=proto, port=port)  # fmt: skip
                    continue
                found[str(doc["_id"])] = {**doc, "proto": proto}
        return found

    async def reconcile(self) -> None:
        """Open what should be open, close what should not (only once the data plane is up)."""
        self.servers = await self.load_servers()
        self._tenants.update({sid: str(doc.get("tenant", "")) for sid, doc in self.servers.items()})
        if not self.dp.ready.is_set():
            return
        await self._open_relay()
        for server_id in [s for s in self.opened if s not in self.servers and s != RELAY_SERVER_ID]:
            if await self.dp.send({"op": "close", "server_id": server_id}):
                self.opened.pop(server_id, None)
                log.info("ingest_server_closing", server_id=server_id)
                await self._write_status(server_id, None, "")
        for server_id, doc in self.servers.items():
            want = (doc["proto"], int(doc["server_port"]), int(doc.get("server_latency") or 120))
            if self.opened.get(server_id) == want:
                continue
            command: dict[str, Any] = {
                "op": "listen", "server_id": server_id, "proto": want[0],
                "host": self.settings.ingest_listen_host, "port": want[1],
            }  # fmt: skip
            if want[0] == "srt":
                command["latency_ms"] = want[2]
            if await self.dp.send(command):
                self.opened[server_id] = want
                log.info("ingest_server_opening", server_id=server_id, proto=want[0], port=want[1])

    async def _open_relay(self) -> None:
        """The internal relay server (docs/INGEST.md "The relay server"), once per data plane."""
        port = self.settings.ingest_relay_port
        want = ("srt", port, 120)
        if not port or self.opened.get(RELAY_SERVER_ID) == want:
            return
        command = {
            "op": "listen", "server_id": RELAY_SERVER_ID, "proto": "srt",
            "host": self.settings.ingest_fanout_host, "port": port, "latency_ms": 120,
        }  # fmt: skip
        if await self.dp.send(command):
            self.opened[RELAY_SERVER_ID] = want
            log.info("ingest_relay_opening", port=port)

    def relay_address(self) -> str:
        """Where relay stages reach the relay server (the fan-out's advertised host)."""
        host = self.fanout_address().rpartition(":")[0]
        return f"{host}:{self.settings.ingest_relay_port}"

    async def _announce_relay(self) -> None:
        if not self.relay_listening:
            return
        value = {"publish": self.relay_address(), "node": self.ctx.node_id, "latency_ms": 120}
        with contextlib.suppress(Exception):
            await self._put_live(self.bus.subjects.live_ingest_relay(), json.dumps(value).encode())

    async def _withdraw_relay(self) -> None:
        self.relay_listening = False
        if self.live.kv is None or not self.bus.connected:
            return
        with contextlib.suppress(Exception):
            await self.live.kv.delete(self.bus.subjects.live_ingest_relay())

    async def relay_verdict(self, event: dict[str, Any]) -> Verdict:
        """A connect on the relay server (a restream's relay stage publishing) or a fan-out
        read of one of its contributions (that restream's destinations)."""
        name = str(event.get("name") or "")
        if event.get("via") != "fanout" and event.get("role") != "publish":
            return refuse("unknown_stream")  # no reading on the relay port itself
        try:
            key = self.bus.subjects.live_relay(name)
        except ValueError:
            return refuse("unknown_stream")
        if self.live.kv is None:
            raise RuntimeError("the live plane is not reachable")
        try:
            got = await self.live.kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return refuse("unknown_stream")
        value = decode(got.value) or {}
        secret = str(value.get("secret") or "")
        if not secret:
            return refuse("unknown_stream")
        if event.get("via") == "fanout":
            return Verdict(allow=True, row_id=name)
        return Verdict(allow=True, passphrase=secret, row_id=name)

    # -- hints -----------------------------------------------------------------------------

    async def _on_hint(self, msg: Any) -> None:
        try:
            command = JobCommand.model_validate_json(msg.data)
        except ValueError:
            return
        if command.module == "stream":
            self._rows.clear()
            self._spawn(self._drop_unwanted())
        else:
            self._rows.pop(command.job_id, None)
        self._wake.set()

    async def _drop_unwanted(self) -> None:
        """After a stream row changed: end live contributions that no active row allows."""
        for (server_id, name), _ in list(self.contribs.items()):
            server = self.servers.get(server_id)
            if server is None:
                continue
            rows = await self.rows(server)
            probe = {"proto": server["proto"], "name": name, "role": "publish", "via": "fanout"}
            if not decide(probe, server, rows).allow:
                log.info("ingest_contribution_dropped", server_id=server_id, name=name)
                await self.dp.send({"op": "drop", "server_id": server_id, "name": name})

    # -- verdicts --------------------------------------------------------------------------

    async def rows(self, server: dict[str, Any]) -> list[dict[str, Any]]:
        """The server's stream rows (cached for ``ingest_rows_cache_s``)."""
        server_id = str(server["_id"])
        cached = self._rows.get(server_id)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.settings.ingest_rows_cache_s:
            return cached[1]
        query = {"tenant": server.get("tenant"), "entity_id": server_id,
                 "module_name": MODULE_OF_PROTO[server["proto"]]}  # fmt: skip
        found = await self.db[Collections.STREAMS].find(query).to_list(None)
        self._rows[server_id] = (now, found)
        return found

    async def _resolve(self, rows: list[dict[str, Any]]) -> dict[str, frozenset[str]]:
        """Addresses of host names that rows bind to (an address needs no lookup)."""
        out: dict[str, frozenset[str]] = {}
        loop = asyncio.get_running_loop()
        for host in {str(r.get("host") or "") for r in rows} - {""}:
            try:
                ipaddress.ip_address(host.strip("[]"))
                continue
            except ValueError:
                pass
            with contextlib.suppress(OSError, TimeoutError):
                infos = await asyncio.wait_for(loop.getaddrinfo(host, None), 1.0)
                out[host] = frozenset(str(i[4][0]) for i in infos)
        return out

    async def verdict(self, event: dict[str, Any]) -> Verdict:
        if str(event.get("server_id", "")) == RELAY_SERVER_ID:
            return await self.relay_verdict(event)
        server = self.servers.get(str(event.get("server_id", "")))
        if server is None:
            return refuse("unknown_stream")
        rows = await self.rows(server)
        return decide(event, server, rows, resolved=await self._resolve(rows))

    async def _answer(self, event: dict[str, Any]) -> None:
        req = str(event.get("req", ""))
        try:
            verdict = await self.verdict(event)
        except Exception as exc:  # MongoDB away: the data plane refuses on its timeout
            log.warning("ingest_verdict_failed", req=req, error=str(exc).splitlines()[0][:200])
            return
        await self.dp.send(verdict.command(req))

    # -- data plane events -------------------------------------------------------------------

    async def _on_event(self, event: dict[str, Any]) -> None:
        ev = event.get("ev")
        if ev == "connect":
            self._spawn(self._answer(event))
        elif ev == "stats":
            await self._on_stats(event)
        elif ev == "ready":
            self.opened.clear()
            self._wake.set()
        elif ev == "listening" and event.get("server_id") == RELAY_SERVER_ID:
            self.relay_listening = True
            await self._announce_relay()
        elif ev == "listen_failed" and event.get("server_id") == RELAY_SERVER_ID:
            log.warning("ingest_relay_listen_failed", port=event.get("port"),
                        error=str(event.get("error", ""))[:300])  # fmt: skip
            await self._withdraw_relay()
        elif ev == "listening":
            await self._write_status(str(event.get("server_id")), "listening", "")
        elif ev == "listen_failed":
            server_id = str(event.get("server_id"))
            error = str(event.get("error", ""))[:300]
            log.warning("ingest_listen_failed", server_id=server_id, port=event.get("port"),
                        error=error)  # fmt: skip
            await self._write_status(server_id, "failed", error)
        elif ev == "closed":
            self.opened.pop(str(event.get("server_id")), None)
        elif ev == "refused":
            await self._publish(event, "ingest_refused")
        elif ev in ("reader_up", "reader_gone"):
            self._count_reader(event, 1 if ev == "reader_up" else -1)
        elif ev in INGEST_EVENTS:
            await self._on_publisher_event(event)

    def _count_reader(self, event: dict[str, Any], delta: int) -> None:
        contrib = self.contribs.get((str(event.get("server_id")), str(event.get("name"))))
        if contrib is not None:
            contrib["readers"] = max(0, int(contrib.get("readers", 0)) + delta)

    async def _on_publisher_event(self, event: dict[str, Any]) -> None:
        ev = str(event["ev"])
        key = (str(event.get("server_id")), str(event.get("name")))
        if ev == "contribution_ended":
            self.contribs.pop(key, None)
            await self._delete_contribution(*key)
        else:
            contrib = self.contribs.setdefault(
                key,
                {"server_id": key[0], "name": key[1], "proto": event.get("proto", "srt"),
                 "since": event.get("at"), "readers": 0},
            )  # fmt: skip
            contrib["publisher"] = ev != "publisher_lost"
            await self._put_contribution(contrib)
        log.info(ev, server_id=key[0], name=key[1], remote=event.get("remote"),
                 reason=event.get("reason"))  # fmt: skip
        await self._publish(event, ev)

    async def _on_crash(self, code: int, tail: list[str]) -> None:
        """The data plane died: its connections and contributions are gone with it."""
        self.opened.clear()
        await self._withdraw_relay()
        await self._forget_all("crashed", publish=True)

    async def _forget_all(self, reason: str, *, publish: bool) -> None:
        for (server_id, name), contrib in list(self.contribs.items()):
            self.contribs.pop((server_id, name), None)
            await self._delete_contribution(server_id, name)
            if publish:
                event = {"ev": "contribution_ended", "server_id": server_id, "name": name,
                         "proto": contrib.get("proto"), "reason": reason}  # fmt: skip
                await self._publish(event, "contribution_ended")

    async def _publish(self, event: dict[str, Any], name: str) -> None:
        server_id = str(event.get("server_id") or "")
        tenant = self._tenants.get(server_id)
        if tenant is None:
            log.info(name, server_id=server_id or None, reason=event.get("reason"),
                     stream_id=event.get("stream_id"), remote=event.get("remote"))  # fmt: skip
            return
        if name == "ingest_refused":
            log.info("ingest_refused", server_id=server_id, reason=event.get("reason"),
                     stream_id=event.get("stream_id"), remote=event.get("remote"),
                     role=event.get("role"), via=event.get("via"))  # fmt: skip
        fields = {
            k: event.get(k)
            for k in ("proto", "name", "stream_id", "role", "via", "remote", "conn", "reason",
                      "gap_ms", "idle_ms", "old_remote")
        }  # fmt: skip
        try:
            message = build_event(
                name, job_id=server_id, tenant=tenant,
                node=self.ctx.node_id, **{k: v for k, v in fields.items() if v is not None},
            )  # fmt: skip
            await self.bus.publish(self.bus.subjects.event("ingest", server_id, name), message)
        except Exception as exc:
            log.warning("event_not_sent", server_id=server_id, event=name, error=str(exc))

    # -- statistics and the live plane ------------------------------------------------------

    def fanout_address(self) -> str:
        """Where jobs reach this node's fan-out listener (a wildcard bind → the public host)."""
        s = self.settings
        bound = self.dp.fanout or f"{s.ingest_fanout_host}:{s.ingest_fanout_port}"
        host, _, port = bound.rpartition(":")
        if s.ingest_fanout_advertise:
            host = s.ingest_fanout_advertise
        elif host.strip("[]") in ("0.0.0.0", "::", ""):
            host = self.settings.public_host()
        return f"{host}:{port}"

    async def _on_stats(self, event: dict[str, Any]) -> None:
        conns = [c for c in event.get("conns") or [] if isinstance(c, dict)]
        contributions = [c for c in event.get("contributions") or [] if isinstance(c, dict)]
        readers = {(str(c.get("server_id")), str(c.get("name"))): int(c.get("readers") or 0)
                   for c in contributions}  # fmt: skip
        by_name = {(str(c.get("server_id")), str(c.get("name"))): c for c in contributions}
        for (server_id, name), count in readers.items():
            contrib = self.contribs.get((server_id, name))
            if contrib is not None:
                contrib["readers"] = count
        for contrib in list(self.contribs.values()):
            await self._put_contribution(contrib)
        await self._announce_relay()
        for server_id in list(self.opened):
            server = self.servers.get(server_id)
            if server is None:
                continue
            try:
                stats = IngestStats(
                    server_id=server_id,
                    job_id=server_id,
                    tenant=str(server.get("tenant", "")),
                    node=self.ctx.node_id,
                    proto=server["proto"],
                    conns=[conn_stat(c, by_name.get((server_id, str(c.get("name")))))
                           for c in conns if c.get("server_id") == server_id],
                    contributions=[ContributionStat.model_validate(c) for c in contributions
                                   if c.get("server_id") == server_id],
                )  # fmt: skip
            except ValueError as exc:
                log.warning("ingest_stats_invalid", server_id=server_id, error=str(exc)[:200])
                continue
            payload = stats.model_dump_json().encode()
            with contextlib.suppress(Exception):
                await self.bus.nc.publish(self.bus.subjects.stats("ingest", server_id), payload)
                await self._put_live(self.bus.subjects.live_ingest_stats(server_id), payload)

    async def _put_live(self, key: str, payload: bytes) -> None:
        """A plain publish on the key's subject with a TTL (as job progress is written)."""
        if self.live.kv is None or not self.bus.connected:
            return
        subject = self.bus.subjects.live_key_subject(key)
        ttl = str(5 * self.live.ttl_s)
        await self.bus.nc.publish(subject, payload, headers={"Nats-TTL": ttl})

    async def _put_contribution(self, contrib: dict[str, Any]) -> None:
        value = {
            "server_id": contrib["server_id"],
            "name": contrib["name"],
            "proto": contrib.get("proto", "srt"),
            "node": self.ctx.node_id,
            "fanout": self.fanout_address(),
            "publisher": bool(contrib.get("publisher")),
            "since": contrib.get("since"),
            "readers": int(contrib.get("readers") or 0),
        }
        with contextlib.suppress(Exception):
            key = self.bus.subjects.live_ingest(contrib["server_id"], contrib["name"])
            await self._put_live(key, json.dumps(value).encode())

    async def _delete_contribution(self, server_id: str, name: str) -> None:
        if self.live.kv is None or not self.bus.connected:
            return
        with contextlib.suppress(Exception):
            await self.live.kv.delete(self.bus.subjects.live_ingest(server_id, name))

    async def _write_status(self, server_id: str, state: str | None, error: str) -> None:
        """The server's ``status`` (listening / failed, by which node), written on change."""
        if self.status.get(server_id) == (state, error):
            return
        server = self.servers.get(server_id)
        collection = COLLECTION_OF_PROTO.get(server["proto"]) if server else None
        if collection is None or not ObjectId.is_valid(server_id):
            return
        self.status[server_id] = (state or "", error)
        update: dict[str, Any]
        if state is None:
            update = {"$unset": {"status": ""}}
        else:
            status = {"state": state, "node": self.ctx.node_id, "error": error or None,
                      "since": time.time()}  # fmt: skip
            update = {"$set": {"status": status}}
        with contextlib.suppress(Exception):
            await self.db[collection].update_one({"_id": ObjectId(server_id)}, update)
