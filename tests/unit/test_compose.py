"""docker-compose.yml, Dockerfile and .dockerignore checked against the code.

There is no Docker engine in the test environment, so nothing here runs a container. Instead the
files are parsed and compared with what the code defines: entry points, settings classes and
their environment variables, workspace members. Names are derived from the code, never listed.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic_settings import BaseSettings

from reelhouse.common.settings import CommonSettings, env_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# Compose service -> the settings class its process builds in main().
SETTINGS = {
    "api": "reelhouse.api.settings:ApiSettings",
    "recorder": "reelhouse.recorder.settings:RecorderSettings",
    "restreamer": "reelhouse.restreamer.settings:RestreamerSettings",
    "prober": "reelhouse.prober.settings:ProberSettings",
    "janitor": "reelhouse.janitor.settings:JanitorSettings",
    "ingest": "reelhouse.ingest.settings:IngestSettings",
}
SERVICES = tuple(SETTINGS)
WORKERS = tuple(s for s in SERVICES if s not in ("api", "ingest"))  # ingest: one per host
SHARE_RECORDINGS = ("api", "recorder", "restreamer", "janitor")
LONG_STOPPERS = ("recorder", "restreamer")  # FFmpeg needs time to write trailers


# --- helpers (each one small enough to trust, and the risky ones shown to fail below) ---------


def settings_class(service: str) -> type[BaseSettings]:
    module, _, name = SETTINGS[service].partition(":")
    return getattr(importlib.import_module(module), name)


def unknown_env(env: Mapping[str, Any], settings_cls: type[BaseSettings]) -> set[str]:
    """The ``REELHOUSE_*`` names in ``env`` that ``settings_cls`` does not read."""
    known = env_names(settings_cls)
    return {name for name in env if name.startswith("REELHOUSE_") and name not in known}


def entry_point_exists(service: str) -> bool:
    """Whether ``python -m reelhouse.<service>`` can start."""
    try:
        return importlib.util.find_spec(f"reelhouse.{service}.__main__") is not None
    except ModuleNotFoundError:  # the parent package itself is missing
        return False


def as_mapping(value: Any) -> dict[str, Any]:
    """Compose allows ``environment`` and ``build.args`` as a mapping or a ``KEY=value`` list."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    return dict(item.partition("=")[::2] for item in value)


def as_argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> named volume (or host path), from short or long volume syntax."""
    out: dict[str, str] = {}
    for v in service.get("volumes", []):
        if isinstance(v, str):
            source, _, rest = v.partition(":")
            out[rest.split(":")[0]] = source
        else:
            out[v["target"]] = v.get("source", "")
    return out


def seconds(duration: str | int | float) -> float:
    """Compose durations such as ``30s``, ``1m30s`` or ``1500ms``, in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, args = line.strip().partition(" ")
            out.append((keyword.upper(), " ".join(args.split())))
    return out


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())  # SafeLoader resolves `<<:` merge keys


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


# --- the helpers can fail -------------------------------------------------------------------


def test_unknown_env_reports_a_wrong_name() -> None:
    from reelhouse.recorder.settings import RecorderSettings

    env = {
        "REELHOUSE_NATS_URL": "nats://nats:4222",  # common: fine
        "REELHOUSE_MAX_JOBS": "3",  # the recorder's own: fine
        "REELHOUSE_MAX_JOB": "3",  # typo
        "REELHOUSE_API_PORT": "8080",  # real, but the API's, not the recorder's
        "TZ": "UTC",  # not ours: ignored
    }
    assert unknown_env(env, RecorderSettings) == {"REELHOUSE_MAX_JOB", "REELHOUSE_API_PORT"}


def test_entry_point_check_rejects_a_missing_service() -> None:
    assert entry_point_exists("recorder")
    assert not entry_point_exists("no_such_service")
    assert not entry_point_exists("common")  # a library, never run


def test_seconds_parses_compose_durations() -> None:
    assert seconds("30s") == 30
    assert seconds("1m30s") == 90
    assert seconds("1500ms") == 1.5


# --- docker-compose.yml ---------------------------------------------------------------------


def test_every_service_of_the_workspace_is_in_compose(services: dict[str, Any]) -> None:
    members = {p.parent.name for p in ROOT.glob("services/*/pyproject.toml")}
    assert members == set(SERVICES), "update SETTINGS here and docker-compose.yml"
    assert {*SERVICES, "mongo", "nats"} <= services.keys()


@pytest.mark.parametrize("name", SERVICES)
def test_build_arg_names_an_entry_point(services: dict[str, Any], name: str) -> None:
    svc = services[name]
    assert "command" not in svc, "the image's CMD runs the SERVICE entry point"
    build = svc["build"]
    assert build["context"] == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    arg = as_mapping(build.get("args"))["SERVICE"]
    assert arg == name
    assert entry_point_exists(arg), f"python -m reelhouse.{arg} has no __main__"


@pytest.mark.parametrize("name", SERVICES)
def test_environment_names_real_settings_of_that_service(
    services: dict[str, Any], name: str
) -> None:
    env = as_mapping(services[name].get("environment"))
    assert env, f"{name} has no environment"
    assert unknown_env(env, settings_class(name)) == set()


@pytest.mark.parametrize("name", SERVICES)
def test_common_settings_point_at_the_compose_infrastructure(
    services: dict[str, Any], name: str
) -> None:
    env = as_mapping(services[name]["environment"])
    nats = urlsplit(env["REELHOUSE_NATS_URL"])
    mongo = urlsplit(env["REELHOUSE_MONGODB_URL"])
    assert (nats.scheme, nats.hostname, nats.port) == ("nats", "nats", 4222)
    assert (mongo.scheme, mongo.hostname, mongo.port) == ("mongodb", "mongo", 27017)
    assert env["REELHOUSE_STORAGE_ROOT"] == "/data/recordings"
    assert env["REELHOUSE_LOG_FORMAT"] == "json"
    # every value must be one the settings class accepts
    settings_class(name).model_validate(
        {k.removeprefix("REELHOUSE_").lower(): v for k, v in env.items()}
    )


@pytest.mark.parametrize("name", SERVICES)
def test_service_restarts_and_waits_for_healthy_infrastructure(
    services: dict[str, Any], name: str
) -> None:
    svc = services[name]
    # on-failure: a crash comes back; the graceful shutdown's exit 0 stays down (issue 22)
    assert svc["restart"] == "on-failure"
    depends = svc["depends_on"]
    for dep in ("mongo", "nats"):
        assert depends[dep]["condition"] == "service_healthy"
        assert services[dep]["healthcheck"]["test"], f"{dep} must have a healthcheck"


@pytest.mark.parametrize("name", WORKERS)
def test_workers_can_scale(services: dict[str, Any], name: str) -> None:
    svc = services[name]
    assert "container_name" not in svc
    assert "ports" not in svc


def test_api_listens_on_all_interfaces_and_is_published(services: dict[str, Any]) -> None:
    from reelhouse.api.settings import ApiSettings

    api = services["api"]
    env = as_mapping(api["environment"])
    assert env["REELHOUSE_API_HOST"] == "0.0.0.0"
    port = int(env.get("REELHOUSE_API_PORT", ApiSettings.model_fields["api_port"].default))
    published = [str(p).rsplit(":", 1)[-1] for p in api["ports"]]
    assert str(port) in published
    assert "container_name" not in api


def test_ingest_publishes_the_port_ranges_it_serves(services: dict[str, Any]) -> None:
    """The UDP range of SRT servers and the TCP range of RTMP servers are published as set."""
    from reelhouse.common.settings import parse_port_range
    from reelhouse.ingest.settings import IngestSettings

    ingest = services["ingest"]
    env = as_mapping(ingest["environment"])
    published = {str(p) for p in ingest["ports"]}
    for var, proto in (
        ("REELHOUSE_INGEST_SRT_PORTS", "udp"),
        ("REELHOUSE_INGEST_RTMP_PORTS", "tcp"),
    ):
        field = var.removeprefix("REELHOUSE_").lower()
        low, high = parse_port_range(env.get(var, IngestSettings.model_fields[field].default))
        assert f"{low}-{high}:{low}-{high}/{proto}" in published, var
    assert "container_name" not in ingest
    # The data plane binary the image builds is the one the service starts.
    assert env["REELHOUSE_INGEST_DATAPLANE_PATH"] == "/usr/local/bin/reelhouse-ingest"
    assert "reelhouse-ingest" in DOCKERFILE.read_text()


def test_api_healthcheck_calls_health_endpoint(services: dict[str, Any]) -> None:
    test = " ".join(as_argv(services["api"]["healthcheck"]["test"]))
    assert "/api/health" in test
    assert "urllib" in test  # the image has no curl or wget


def test_mongo_is_mongodb_7_with_a_ping_healthcheck(services: dict[str, Any]) -> None:
    mongo = services["mongo"]
    assert mongo["image"] == "mongo:7"
    assert "/data/db" in mounts(mongo)
    test = " ".join(as_argv(mongo["healthcheck"]["test"]))
    assert "mongosh" in test
    assert "ping" in test


def test_nats_runs_jetstream_with_monitoring_healthcheck(services: dict[str, Any]) -> None:
    nats = services["nats"]
    # The same minor version as the pinned build (tools/nats-server/go.mod), 2.11 or newer.
    gomod = (ROOT / "tools/nats-server/go.mod").read_text()
    pinned = re.search(r"github.com/nats-io/nats-server/v2 v(\d+)\.(\d+)\.\d+", gomod)
    assert pinned is not None
    major, minor = int(pinned[1]), int(pinned[2])
    assert (major, minor) >= (2, 11)
    assert nats["image"].startswith(f"nats:{major}.{minor}-")
    # the scratch image cannot run a healthcheck: it has no wget
    assert "alpine" in nats["image"]
    argv = as_argv(nats["command"])
    assert "-js" in argv or "--jetstream" in argv
    store = argv[argv.index("-sd") + 1]
    assert store in mounts(nats), "the JetStream store must be on a volume"
    monitor_port = argv[argv.index("-m") + 1]
    test = " ".join(as_argv(nats["healthcheck"]["test"]))
    assert f":{monitor_port}/healthz" in test


def test_recordings_volume_is_shared_at_the_storage_root(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    assert "recordings" in compose["volumes"]
    for name in SHARE_RECORDINGS:
        root = as_mapping(services[name]["environment"])["REELHOUSE_STORAGE_ROOT"]
        assert mounts(services[name]).get(root) == "recordings", name


def test_every_named_volume_is_declared(compose: dict[str, Any], services: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, svc in services.items():
        for source in mounts(svc).values():
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"


@pytest.mark.parametrize("name", LONG_STOPPERS)
def test_ffmpeg_workers_get_time_to_stop(services: dict[str, Any], name: str) -> None:
    assert seconds(services[name]["stop_grace_period"]) >= 30


# --- Dockerfile and .dockerignore -----------------------------------------------------------


def test_dockerfile_base_and_entry_point(dockerfile: list[tuple[str, str]]) -> None:
    froms = [args for kw, args in dockerfile if kw == "FROM"]
    assert froms
    # The Python stages share one base (the venv's interpreter path); the ingest data plane is
    # built in a Go stage of its own and only its static binary is copied.
    python = [f for f in froms if not f.startswith("golang:")]
    assert all(f.split()[0] == "python:3.11-slim-bookworm" for f in python)
    assert [f.split()[-1] for f in froms if f.startswith("golang:")] in ([], ["dataplane"])
    assert ("ARG", "SERVICE") in dockerfile
    assert ("STOPSIGNAL", "SIGTERM") in dockerfile
    cmd = [args for kw, args in dockerfile if kw == "CMD"][-1]
    assert "reelhouse.${SERVICE" in cmd
    assert "exec python -m" in cmd


def test_dockerfile_installs_ffmpeg_lean(dockerfile: list[tuple[str, str]]) -> None:
    runs = [args for kw, args in dockerfile if kw == "RUN"]
    apt = [r for r in runs if "apt-get install" in r]
    assert apt
    assert any(
        "ffmpeg" in r.split() and "--no-install-recommends" in r and "/var/lib/apt/lists" in r
        for r in apt
    )


def test_dockerfile_syncs_locked_workspace_without_dev(dockerfile: list[tuple[str, str]]) -> None:
    syncs = [args for kw, args in dockerfile if kw == "RUN" and "uv sync" in args]
    assert syncs
    for sync in syncs:
        for flag in ("--locked", "--no-dev", "--all-packages"):
            assert flag in sync.split(), f"{flag} missing from: {sync}"
    # uv itself is pinned (an ARG default counts), so a rebuild does not change the installer
    defaults = dict(a.partition("=")[::2] for kw, a in dockerfile if kw == "ARG" and "=" in a)
    runs = [
        re.sub(r"\$\{(\w+)\}", lambda m: defaults.get(m[1], m[0]), a)
        for kw, a in dockerfile
        if kw == "RUN"
    ]
    assert any(re.search(r"pip install .*\buv==\d+\.\d+\.\d+", r) for r in runs)


def test_dockerfile_copies_every_member_before_first_sync(
    dockerfile: list[tuple[str, str]],
) -> None:
    first_sync = next(
        i for i, (kw, args) in enumerate(dockerfile) if kw == "RUN" and "uv sync" in args
    )
    copied = " ".join(args for kw, args in dockerfile[:first_sync] if kw == "COPY")
    members = ["pyproject.toml", "uv.lock"] + [
        p.relative_to(ROOT).as_posix()
        for pattern in ("libs/*/pyproject.toml", "services/*/pyproject.toml")
        for p in ROOT.glob(pattern)
    ]
    for path in members:
        assert path in copied.split(), f"COPY {path} before the first `uv sync`"


def test_dockerfile_runs_as_non_root_with_storage_root(dockerfile: list[tuple[str, str]]) -> None:
    users = [args for kw, args in dockerfile if kw == "USER"]
    assert users
    assert users[-1] not in {"root", "0", "0:0"}
    env = " ".join(args for kw, args in dockerfile if kw == "ENV")
    assert "REELHOUSE_STORAGE_ROOT=/data/recordings" in env
    # every REELHOUSE_ variable baked into the image is read by all services
    names = set(re.findall(r"\b(REELHOUSE_[A-Z0-9_]+)=", env))
    assert unknown_env(dict.fromkeys(names, ""), CommonSettings) == set()


def test_dockerignore_lets_through_what_the_dockerfile_copies(
    dockerfile: list[tuple[str, str]],
) -> None:
    patterns = [
        ln.strip()
        for ln in DOCKERIGNORE.read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert patterns[0] == "*", "allow-list: nothing enters the context unless named"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    for kw, args in dockerfile:
        if kw != "COPY" or args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            top = source.split("/")[0]
            assert top in allowed, f"COPY {source} but .dockerignore excludes it"
