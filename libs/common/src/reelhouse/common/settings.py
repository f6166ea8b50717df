"""Settings: small pydantic-settings classes with the ``REELHOUSE_`` prefix.

Each service builds its settings class in ``main()`` through :func:`load_settings` and passes it
down; nothing reads the environment at import time. A bad value stops the process with a message
that names the environment variable, e.g.::

    reelhouse-recorder: invalid setting REELHOUSE_MAX_JOBS='many': Input should be a valid integer
"""

from __future__ import annotations

import socket
import sys
import uuid
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from reelhouse.common.netpolicy import NetPolicy, parse_networks
from reelhouse.common.storage import DiskState, disk_state

ENV_PREFIX = "REELHOUSE_"

LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["auto", "json", "console"]


class CommonSettings(BaseSettings):
    """Settings every service shares: NATS, MongoDB, storage, logging, node identity."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    nats_url: str = Field(
        "nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated."
    )
    mongodb_url: str = Field(
        "mongodb://127.0.0.1:27017/",
        description="MongoDB URL. `make up` starts a local FerretDB here unless this is set.",
    )
    mongodb_database: str = Field("reelhouse", description="Database name.")
    subject_prefix: str = Field(
        "reelhouse", description="First token of every NATS subject; lets deployments share NATS."
    )
    storage_root: Path = Field(Path("data/recordings"), description="Where recordings are written.")
    log_level: LogLevel = Field("info", description="Lowest log level written.")
    log_format: LogFormat = Field(
        "auto", description="`json`, `console`, or `auto` (console on a TTY, JSON otherwise)."
    )
    node_id: str = Field("", description="Node identity; default `<service>-<host>-<random>`.")
    node_heartbeat_s: float = Field(
        0.5, gt=0, description="Seconds between heartbeats into the live plane (`nodes.` keys)."
    )
    node_ttl_s: int = Field(
        2,
        ge=1,
        description="Seconds a node's heartbeat key lives without a heartbeat (whole seconds): "
        "a node silent this long is dead and its jobs are taken over.",
    )
    nats_reconnect_wait_s: float = Field(
        1.0, gt=0, description="Seconds between NATS reconnect attempts (forever)."
    )
    mongodb_timeout_ms: int = Field(
        3000, gt=0, description="Server selection timeout for MongoDB operations, milliseconds."
    )
    disk_warning_pct: float = Field(
        85.0,
        gt=0,
        le=100,
        description="Used share of the storage filesystem, %, at which a `disk_warning` event is "
        "published.",
    )
    disk_critical_pct: float = Field(
        95.0,
        gt=0,
        le=100,
        description="Used share of the storage filesystem, %, at which recordings are refused "
        "(507) and recorders stop claiming.",
    )

    bootstrap_token_file: Path = Field(
        Path("data/bootstrap-token"),
        description="Where a generated bootstrap token is kept (mode 0600); the generated JWT, "
        "download and secret keys are kept in the same directory.",
    )
    secret_key: SecretStr | None = Field(
        None,
        description="Key that encrypts platform credentials at rest (Fernet): a key from "
        "`Fernet.generate_key()`, or any passphrase of 32+ characters. Unset: one is generated "
        "and kept in `secret-key` next to REELHOUSE_BOOTSTRAP_TOKEN_FILE (mode 0600), or in "
        "REELHOUSE_SECRET_KEY_FILE. The API, prober and recorders need the same key.",
    )
    secret_key_file: Path | None = Field(
        None,
        description="Where the generated REELHOUSE_SECRET_KEY is kept (mode 0600). Unset: "
        "`secret-key` next to REELHOUSE_BOOTSTRAP_TOKEN_FILE, beside the JWT secret.",
    )

    probe_allow_networks: str = Field(
        "",
        description="Networks (CIDR, comma-separated) that requests made on a user's behalf "
        "(probes, inputs, destinations, webhooks) may reach although they are loopback, "
        "link-local or private, e.g. `127.0.0.0/8,::1/128` (what `make up` sets). Empty: public "
        "addresses only. Cloud metadata addresses are never reached.",
    )

    resolve_timeout_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How long the URL policy waits for a host name's addresses, seconds; a name "
        "that does not resolve in time is refused as unreachable, and answered so for 30 s "
        "without a new lookup.",
    )

    @field_validator("probe_allow_networks")
    @classmethod
    def _networks(cls, v: str) -> str:
        return ",".join(str(n) for n in parse_networks(v))

    def net_policy(self) -> NetPolicy:
        """The policy of every URL fetched on a user's behalf (``reelhouse.common.netpolicy``)."""
        return NetPolicy(
            allow=parse_networks(self.probe_allow_networks),
            resolve_timeout_s=self.resolve_timeout_s,
        )

    def disk_state(self) -> DiskState:
        """The storage root's disk against this deployment's watermarks."""
        return disk_state(
            self.storage_root,
            warning_pct=self.disk_warning_pct,
            critical_pct=self.disk_critical_pct,
        )

    @field_validator("subject_prefix")
    @classmethod
    def _prefix_is_one_token(cls, v: str) -> str:
        if not v or not all(c.isalnum() or c in "-_" for c in v):
            raise ValueError("must be one NATS token: letters, digits, '-' or '_'")
        return v

    @field_validator("mongodb_database")
    @classmethod
    def _database_name(cls, v: str) -> str:
        if not v or any(c in v for c in '/\\. "$') or len(v) > 63:
            raise ValueError('must be a MongoDB database name without / \\ . space " or $')
        return v

    def resolved_node_id(self, service: str) -> str:
        """The node id: the configured one, or a fresh ``<service>-<host>-<6 hex>``."""
        if self.node_id:
            return self.node_id
        return f"{service}-{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


def parse_port_range(value: str) -> tuple[int, int]:
    """``"10000-10099"`` (or one port, ``"1935"``) as ``(first, last)``, both within 1-65535."""
    first, sep, last = value.strip().partition("-")
    try:
        low, high = int(first), int(last) if sep else int(first)
    except ValueError:
        raise ValueError(f"must be a port range like 10000-10099, got {value!r}") from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"must be a port range within 1-65535, low to high, got {value!r}")
    return low, high


class IngestCommonSettings(CommonSettings):
    """What the API and the ingest service both need to know of ingest (docs/INGEST.md): the
    port ranges servers may use and the address encoders and readers reach."""

    ingest_srt_ports: str = Field(
        "10000-10099",
        description="UDP ports SRT servers may use (`first-last`); the compose file publishes "
        "the same range.",
    )
    ingest_rtmp_ports: str = Field(
        "1935-1945",
        description="TCP ports RTMP servers may use (`first-last`); the compose file publishes "
        "the same range.",
    )
    ingest_public_host: str = Field(
        "",
        description="Host name or address of the ingest node that encoders reach, used in the "
        "`publish_url`/`read_url` of stream rows. Empty: this machine's address (`make up` sets "
        "`127.0.0.1`).",
    )
    ingest_fanout_port: int = Field(
        6000,
        ge=1,
        le=65535,
        description="UDP port of the ingest node's fan-out SRT listener, where jobs (and the "
        "`read_url` of RTMP rows) read every contribution as `read/<server_id>/<name>`.",
    )

    @field_validator("ingest_srt_ports", "ingest_rtmp_ports")
    @classmethod
    def _port_range(cls, v: str) -> str:
        low, high = parse_port_range(v)
        return f"{low}-{high}"

    def port_range(self, proto: str) -> tuple[int, int]:
        """``(first, last)`` port of ``srt`` or ``rtmp`` servers."""
        return parse_port_range(self.ingest_srt_ports if proto == "srt" else self.ingest_rtmp_ports)

    def public_host(self) -> str:
        """The host name in URLs given to encoders: the setting, else this machine's address."""
        if self.ingest_public_host:
            return self.ingest_public_host
        try:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.connect(("192.0.2.1", 9))  # no packet is sent: it picks the route's source
                return str(probe.getsockname()[0])
            finally:
                probe.close()
        except OSError:
            return "127.0.0.1"


class WorkerSettings(CommonSettings):
    """Settings of the services that run supervised FFmpeg jobs by lease (recorder, restreamer)."""

    ingest_poll_s: float = Field(
        0.25, gt=0, description="How often a job fed by an ingest server looks for its publisher "
        "while it waits (a live-plane read)."
    )  # fmt: skip
    ingest_probe_ms: int = Field(
        200, ge=50, le=10_000, description="How long FFmpeg probes an ingest-fed job's input, "
        "milliseconds: the fan-out starts every reader at a keyframe, after PAT and PMT (a "
        "source that needs more makes the next start probe fully, as for any input)."
    )  # fmt: skip
    ingest_gap_hold_s: float = Field(
        30.0, gt=0, description="How long the ingest fan-out holds readers through a publisher "
        "gap (the ingest service's setting of the same name); FFmpeg's read timeout and the "
        "stall watchdog of an ingest-fed job are above it."
    )  # fmt: skip

    max_jobs: int = Field(40, ge=1, description="Most jobs this node runs at once.")
    lease_s: float = Field(
        15.0,
        gt=0,
        description="Seconds a file-reprocessing claim (MongoDB) lasts without renewal; job "
        "ownership has no lease (live plane).",
    )
    reconcile_s: float = Field(
        30.0,
        gt=0,
        description="Seconds between reconcile passes against MongoDB, which repair what a lost "
        "NATS hint missed (hints and the live plane act at once).",
    )
    handover_wait_s: float = Field(
        10.0,
        ge=0,
        description="Draining (SIGTERM): how long a job whose source admits two readers keeps "
        "recording here while a peer starts it (make-before-break), seconds.",
    )
    schedule_grace_s: float = Field(
        15.0,
        gt=0,
        description="Seconds a schedule window may be open with no node running its job before "
        "`schedule_skip` reports it.",
    )
    claim_delay_s: float = Field(
        0.5,
        ge=0,
        description="Extra wait before claiming on a hint at full load, seconds (scaled by load, "
        "so the least loaded node claims first).",
    )
    retry_initial_s: float = Field(
        1.0, gt=0, description="Seconds before the first restart after a failure (source drop)."
    )
    retry_max_s: float = Field(
        10.0, gt=0, description="Cap of the restart backoff (exponential, with jitter), seconds."
    )
    stale_timeout_s: float = Field(
        20.0, gt=0, description="Seconds without FFmpeg progress before it is restarted."
    )
    stop_grace_s: float = Field(
        10.0, gt=0, description="Seconds FFmpeg gets to finish (trailer, flush) before SIGKILL."
    )
    progress_period_s: float = Field(
        1.0,
        gt=0,
        description="Seconds between FFmpeg progress reports (the stats rate; each is parsed).",
    )
    disk_full_retry_s: float = Field(
        60.0,
        gt=0,
        description="Seconds before a job whose disk filled up tries again (no restart storm).",
    )
    ffmpeg_path: str = Field("ffmpeg", description="The ffmpeg binary (path or name on PATH).")
    probe_ms: int = Field(
        2000,
        ge=100,
        le=10_000,
        description="How much of a live input FFmpeg analyses before it writes (ms). A run whose "
        "probe was too short for its source (no keyframe seen) retries at once with at least "
        "2000 ms. Shorter starts faster; see docs/DECISIONS.md 'Probe length'.",
    )


S = TypeVar("S", bound=BaseSettings)


def env_name(settings_cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``settings_cls``."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    return f"{prefix}{field}".upper()


def env_names(settings_cls: type[BaseSettings]) -> set[str]:
    """Every environment variable ``settings_cls`` reads."""
    return {env_name(settings_cls, f) for f in settings_cls.model_fields}


def load_settings(settings_cls: type[S], *, program: str) -> S:
    """Build ``settings_cls`` from the environment, or exit 2 naming each bad variable."""
    try:
        return settings_cls()
    except ValidationError as exc:
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            value = err.get("input")
            print(
                f"{program}: invalid setting {env_name(settings_cls, field)}={value!r}: "
                f"{err['msg']}",
                file=sys.stderr,
            )
        raise SystemExit(2) from None
