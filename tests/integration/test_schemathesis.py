"""The OpenAPI spec against the app (issue 7; issue 20, item 6): schemathesis, in-process, bounded.

Every operation gets a fixed number of generated requests (valid and invalid, derandomized, so
every run sends the same ones) with the bootstrap token, and every answer is checked:

- ``not_a_server_error``: no 5xx, but the documented answers of what this test does not run
  (:data:`BY_DESIGN_5XX`);
- ``positive_data_acceptance``: a request the schema allows is not refused as invalid (400),
  but where the refusal cannot be in a schema (:func:`refused_by_design`);
- ``status_code_conformance``, ``content_type_conformance``, ``response_schema_conformance``:
  the answer is one the spec documents, in the documented media type and shape.

The app runs on its own database and subject prefix of this session's real NATS and FerretDB,
with the address policy of ``make up`` and the other tests (loopback allowed); rate limits are
off (the run is far past them by design) and deadlines short, the host-name lookups' included.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)
from support.infra import settings_env
from support.services import settings_from_env
from support.stack import HEADERS, TOKEN

from reelhouse.api.app import create_app
from reelhouse.api.settings import ApiSettings

MAX_EXAMPLES = {
    GenerationMode.POSITIVE: int(os.environ.get("REELHOUSE_SCHEMATHESIS_POSITIVE", "12")),
    GenerationMode.NEGATIVE: int(os.environ.get("REELHOUSE_SCHEMATHESIS_NEGATIVE", "4")),
}
"""Per operation and mode: about 120 operations make the whole run about 100 s on two cores
(the slowest runs are printed). The variables are for a longer run by hand (50 and 10, with
``--timeout=0``), never for ``make test``."""


@pytest.fixture(scope="module")
def api_schema(infra, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("schemathesis")
    env = {
        **settings_env(infra.nats_url, infra.mongodb_url, tmp, uuid.uuid4().hex[:12]),
        "REELHOUSE_ARCHIVE_ROOT": str(tmp / "archive"),
        "REELHOUSE_LOG_LEVEL": "warning",
    }
    app = create_app(
        settings_from_env(
            ApiSettings,
            env,
            bootstrap_token=TOKEN,
            rate_limit_enabled=False,
            stop_wait_s=1,
            probe_timeout_s=1,
            # Generated URLs name random hosts: on a machine whose resolver does not answer
            # (no network), each would wait the default 5 s. Still refused as unreachable.
            resolve_timeout_s=0.5,
        )
    )
    yield schemathesis.openapi.from_asgi("/openapi.json", app)
    asgi.shutdown_lifespans()  # the app's lifespan ran in schemathesis' portal thread


def _error(response) -> dict:
    try:
        error = response.json()["error"]
    except Exception:
        return {}
    return error if isinstance(error, dict) else {}


BY_DESIGN_5XX = {503: "UNAVAILABLE", 504: "UPSTREAM_TIMEOUT", 507: "INSUFFICIENT_STORAGE"}
"""The only 5xx allowed here, each documented for the operations that give it: the janitor and
the prober do not run in this test (``cleanup``, ``getStreamInfo``: 503 or 504), and a job that
writes to the storage is not activated while the disk is past its critical watermark (507: the
machine's disk, not the request, decides)."""


@schemathesis.check
def no_server_error(ctx, response, case):
    """schemathesis' ``not_a_server_error``, minus :data:`BY_DESIGN_5XX`."""
    if BY_DESIGN_5XX.get(response.status_code, "-") == _error(response).get("code"):
        return True
    return not_a_server_error(ctx, response, case)


CROSS_FIELD_RULES: dict[str, re.Pattern[str]] = {
    # What FFmpeg can run: codecs, containers and filters together (ffmpeg.capabilities
    # check_processing). The models say it in their descriptions; as JSON schema it would be a
    # copy of the whole capability table, kept in step by hand.
    # ... and a storage target a job names must exist (stored state; issue 24).
    "POST /api/recording/create": re.compile(
        r"^(transcoding|modify_audio|modify_video|overlay)\.|^schedule\.stop_at$|^input\.input_(module|stream)_id$|^(archive_)?storage_id$"
    ),
    "POST /api/recording/update": re.compile(
        r"^(transcoding|modify_audio|modify_video|overlay)\.|^schedule\.stop_at$|^input\.input_(module|stream)_id$|^(archive_)?storage_id$"
    ),
    # Both keys or neither (update keeps the stored ones when both are left out).
    "POST /api/storage-targets/update": re.compile(r"^(access_key_id|secret_access_key)$"),
    # The same, against every destination's container; two SRT outputs on one port. (And for
    # both: an ingest input's server and publisher row must exist: stored state.)
    "POST /api/restream/create": re.compile(
        r"^(transcoding|modify_audio|modify_video|overlay)\.|^output$|^schedule\.stop_at$|^input\.input_(module|stream)_id$"
    ),
    "POST /api/restream/update": re.compile(
        r"^(transcoding|modify_audio|modify_video|overlay)\.|^output$|^schedule\.stop_at$|^input\.input_(module|stream)_id$"
    ),
    # Unique track and channel ids, a channel count per layout: JSON schema compares no items
    # by one of their fields.
    # ... and the server a row sits on must exist (stored state).
    "POST /api/streams/create": re.compile(
        r"^audio_settings\.streams(\.\d+\.channels)?$|^entity_id$"
    ),
    "POST /api/streams/update": re.compile(
        r"^audio_settings\.streams(\.\d+\.channels)?$|^entity_id$"
    ),
    # A server's port must lie in the deployment's range (a setting) and not be the fan-out's.
    "POST /api/srt-servers/create": re.compile(r"^server_port$"),
    "POST /api/srt-servers/update": re.compile(r"^server_port$"),
    "POST /api/rtmp-servers/create": re.compile(r"^server_port$"),
    "POST /api/rtmp-servers/update": re.compile(r"^server_port$"),
    "POST /api/streams/setStreamInfo": re.compile(r"^audio_settings\.streams(\.\d+\.channels)?$"),
    # A channel's recording window: `stop_at` after `start_at`.
    "POST /api/channels": re.compile(r"^schedule\.stop_at$"),
    "PUT /api/channels/{channel_id}": re.compile(r"^schedule\.stop_at$"),
    # `to` after `from`.
    "POST /api/recording/getFiles": re.compile(r"^to$"),
    "POST /api/recording/getPlayback": re.compile(r"^to$"),
    # The longest range is a setting (REELHOUSE_PLAYBACK_MAX_RANGE_S); `precise` only with
    # mp4/ts is in the schema (PlaybackUrlBody.cross_field_schema), not here.
    "POST /api/recording/getPlaybackUrl": re.compile(r"^duration$"),
    # The id in the query or in the body: OpenAPI has no "one of these two places".
    "DELETE /api/streams/remove": re.compile(r"^id$"),
    # The warning watermark below the critical one, which may be the stored one.
    "POST /api/settings/update": re.compile(r"^disk_warning_pct$"),
}
"""Per operation, the fields of the rules a schema cannot state: comparisons between fields
or items (``stop_at`` after ``start_at``), or with stored state. A schema-valid request may be
refused (400) for these fields and no other."""


def refused_by_design(case, response) -> bool:
    """Whether a 400 to a schema-valid request is one the spec cannot prevent: an address the
    deployment's policy refuses (``reason: forbidden_address``, a setting, not a schema), or
    only fields of :data:`CROSS_FIELD_RULES`."""
    error = _error(response)
    if response.status_code != 400 or error.get("code") != "VALIDATION_ERROR":
        return False
    if error.get("reason") == "forbidden_address":
        return True
    rule = CROSS_FIELD_RULES.get(case.operation.label)
    fields = [d.get("field", "") for d in error.get("details") or [error]]
    return rule is not None and all(rule.search(str(f)) for f in fields)


@schemathesis.check
def accepts_valid_data(ctx, response, case):
    """schemathesis' ``positive_data_acceptance``, minus :func:`refused_by_design`."""
    if refused_by_design(case, response):
        return True
    return positive_data_acceptance(ctx, response, case)


CHECKS = [
    no_server_error,
    accepts_valid_data,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _describe(exc: BaseException, depth: int = 0) -> str:
    """``exc`` with the sub-exceptions of a group (hypothesis' "unreliable results" and
    schemathesis' several failures of one case are groups): each one's own text, the failing
    check's message and the request to reproduce it included."""
    text = f"{type(exc).__name__}: {exc}"
    for sub in getattr(exc, "exceptions", ()) if depth < 3 else ():
        text += "\n" + "  " * (depth + 1) + _describe(sub, depth + 1)
    return text


def _timed_out(exc: BaseException) -> bool:
    """Whether pytest-timeout's exception is in ``exc`` (it is raised inside whichever request
    runs when the time is up; hypothesis would report it as that operation's "unreliable
    results", since the replay passes; it wraps it, as it is no ``Exception``)."""
    if isinstance(exc, pytest.fail.Exception) and str(exc).startswith("Timeout"):
        return True
    inner = [*getattr(exc, "exceptions", ()), exc.__cause__]
    return any(_timed_out(sub) for sub in inner if sub is not None and sub is not exc)


TIMEOUT_S = 600
"""The run's own time limit: about two minutes alone, three beside the other xdist worker on two
cores; the suite's default (180 s, pyproject.toml) fired mid-run on a busy machine and showed up
as a flaky operation (``/api/auth/refresh``, ``session/login``, ``streams/create``)."""


@pytest.mark.timeout(TIMEOUT_S)
def test_api_answers_as_its_spec_says(api_schema):
    """One hypothesis run per operation and mode (schemathesis' pytest plugin does not load
    under pytest 9, so the operations are driven here); every failure is reported at the end,
    and the slowest runs are printed (``-s`` or ``-rP`` shows them)."""
    failures = []
    timings: list[tuple[float, str]] = []
    runs = [
        (result.ok(), mode)
        for result in api_schema.get_all_operations()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    ]
    for operation, mode in runs:

        @given(case=operation.as_strategy(mode))
        @settings(
            max_examples=MAX_EXAMPLES[mode],
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            case.call_and_validate(headers=HEADERS, checks=CHECKS)

        started = time.monotonic()
        try:
            run()
        except Unsatisfiable:  # nothing to break (no parameters, or a free-form body)
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:
            if _timed_out(exc):
                raise
            failures.append(f"{operation.label} ({mode.value}): {_describe(exc)[:6000]}")
        timings.append((time.monotonic() - started, f"{operation.label} ({mode.value})"))
    timings.sort(reverse=True)
    print(f"{len(timings)} runs in {sum(t for t, _ in timings):.0f} s; the slowest:")
    for elapsed, label in timings[:12]:
        print(f"  {elapsed:6.1f} s  {label}")
    assert not failures, f"{len(failures)} failing runs:\n\n" + "\n\n".join(failures)
