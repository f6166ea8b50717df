"""Settings of the ingest service (`REELHOUSE_` prefix)."""

from pydantic import Field

from reelhouse.common.settings import IngestCommonSettings


class IngestSettings(IngestCommonSettings):
    """Ingest: runs the data plane, opens the servers this node serves, decides who connects."""

    ingest_dataplane_path: str = Field(
        "reelhouse-ingest",
        description="The data plane binary (path or name on PATH; `make up` points at "
        "`.cache/bin/reelhouse-ingest`).",
    )
    ingest_listen_host: str = Field(
        "0.0.0.0", description="Address the SRT and RTMP servers' ports are opened on."
    )
    ingest_fanout_host: str = Field(
        "127.0.0.1",
        description="Address the fan-out SRT listener binds (jobs on other hosts need a "
        "reachable one).",
    )
    ingest_fanout_advertise: str = Field(
        "",
        description="Host name jobs use to reach the fan-out listener (e.g. `ingest` in "
        "compose). Empty: the bound address, or the public host when it binds a wildcard.",
    )
    ingest_relay_port: int = Field(
        6001,
        ge=0,
        le=65535,
        description="UDP port of the internal relay SRT server, on the fan-out's address: a "
        "multi-destination restream's relay stage publishes its one copy of the stream there "
        "and each destination reads it back from the fan-out. 0: no relay (such restreams then "
        "use one FFmpeg with tee).",
    )
    ingest_gap_hold_s: float = Field(
        30.0,
        gt=0,
        description="Seconds readers are held, with no data, while a contribution has no "
        "publisher; a longer gap ends the contribution.",
    )
    ingest_takeover_idle_s: float = Field(
        1.0,
        gt=0,
        description="A second publisher replaces a first one that has sent nothing for this "
        "long, seconds; a busier one is refused (`duplicate`).",
    )
    ingest_verdict_timeout_s: float = Field(
        3.0, gt=0, description="Seconds a connection waits for the service's verdict."
    )
    ingest_stats_interval_s: float = Field(
        1.0, gt=0, description="Seconds between statistics of each server."
    )
    ingest_rows_cache_s: float = Field(
        5.0,
        ge=0,
        description="Seconds the stream rows of a server are reused to answer connections "
        "(hints from the API drop them at once).",
    )
    ingest_reconcile_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between reconcile passes over the servers (hints act at once).",
    )
    ingest_retry_initial_s: float = Field(
        0.5, gt=0, description="Seconds before the data plane is restarted after a crash."
    )
    ingest_retry_max_s: float = Field(
        10.0, gt=0, description="Cap of the data plane's restart backoff (exponential, jitter)."
    )
