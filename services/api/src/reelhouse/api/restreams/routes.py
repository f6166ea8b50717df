"""``/api/restream/*``: the Restreams module, shaped exactly as ``seeds/restreams-api.txt``.

Like recordings (:mod:`reelhouse.api.jobs.service` holds what both share, the module's own
behaviour is in :mod:`reelhouse.api.restreams.service`): the API writes desired
state and hints the restreamers, which reconcile. Job objects carry ``input`` and ``output`` as
populated lists (``output`` in destination order), ``module_name: "MODULE_RESTREAM"`` and
``runtime``. ``/hls/{id}/{name}`` serves a job's HLS destination for monitoring.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path as FsPath
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import FileResponse, Response

from reelhouse.api import idempotency
from reelhouse.api.accounts.principal import tenant_of
from reelhouse.api.deps import IdempotencyKey, Operator, PlayerPrincipal, Principal, State
from reelhouse.api.errors import documented
from reelhouse.api.jobs import service as jobs
from reelhouse.api.restreams.service import (
    KIND,
    job_config,
    linked_docs,
    load_populated,
    populate,
)
from reelhouse.common.contracts.base import ObjectIdStr
from reelhouse.common.contracts.listing import IdBody
from reelhouse.common.contracts.restream import RestreamIn, RestreamListBody, RestreamUpdate
from reelhouse.common.errors import NotFound
from reelhouse.common.files import checked_path, is_under, restream_hls_dir
from reelhouse.common.logging import get_logger

router = APIRouter(prefix="/api/restream", tags=["restreams"])
log = get_logger("reelhouse.api.restreams")

HLS_MEDIA_TYPES = {
    ".m3u8": "application/vnd.apple.mpegurl",
    ".ts": "video/mp2t",
    ".m4s": "video/iso.segment",
    ".mp4": "video/mp4",
    ".aac": "audio/aac",
    ".vtt": "text/vtt",
}
"""What the HLS route serves, by extension (nothing else)."""

_HLS_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]*$")
HLS_NAME_PATTERN = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$"
"""A plain file name: letters, digits, '_' and '-', in parts joined by single dots."""
_PLAYLIST_URI_ATTR = re.compile(r'URI="([A-Za-z0-9_-][A-Za-z0-9._-]*)"')


@router.post(
    "/create",
    summary="Create a restream job",
    responses=documented(
        409,
        507,
        s409="CONFLICT: this Idempotency-Key was used with another body, or its first "
        "call is still running",
    ),
)
async def create(
    state: State,
    principal: Operator,
    body: RestreamIn,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict[str, Any]:
    tenant = tenant_of(principal)

    async def run() -> dict[str, Any]:
        full = await jobs.with_defaults(state.db, KIND.module, body)
        job_id = await jobs.create_job(state, KIND, tenant, job_config(full), linked_docs(full))
        return await load_populated(state.db, tenant, job_id, state.live)

    key = idempotency_key
    return await idempotency.once(state.db, principal, "restream", key, body, response, run)


@router.post("/getCount", summary="How many restream jobs there are")
async def get_count(
    state: State, principal: Principal, body: Annotated[RestreamListBody | None, Body()] = None
) -> dict[str, int]:
    query = body or RestreamListBody()
    return {"count": await jobs.count_jobs(state.db, KIND, tenant_of(principal), query)}


@router.post("/getAll", summary="Restream jobs, populated")
async def get_all(
    state: State, principal: Principal, body: Annotated[RestreamListBody | None, Body()] = None
) -> list[dict[str, Any]]:
    query = body or RestreamListBody()
    found = await jobs.find_jobs(state.db, KIND, tenant_of(principal), query)
    return await populate(state.db, found, state.live)


@router.post("/getById", summary="One restream job, populated")
async def get_by_id(state: State, principal: Principal, body: IdBody) -> dict[str, Any]:
    return await load_populated(state.db, tenant_of(principal), body.id, state.live)


@router.post(
    "/update",
    summary="Change a restream job; a running job restarts with it",
    responses=documented(507),
)
async def update(state: State, principal: Operator, body: RestreamUpdate) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await jobs.update_job(state, KIND, tenant, body.id, job_config(body), linked_docs(body))
    return await load_populated(state.db, tenant, body.id, state.live)


@router.post(
    "/start",
    summary="Mark active and (re)start the restream",
    responses=documented(507),
)
async def start(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await jobs.set_active(state, KIND, tenant, body.id, active=True)
    return await load_populated(state.db, tenant, body.id, state.live)


@router.post("/stop", summary="Mark inactive and stop the restream")
async def stop(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    await jobs.set_active(state, KIND, tenant, body.id, active=False)
    return await load_populated(state.db, tenant, body.id, state.live)


@router.delete("/remove", summary="Stop, then delete the job, its input and outputs, its HLS")
async def remove(state: State, principal: Operator, body: IdBody) -> dict[str, Any]:
    tenant = tenant_of(principal)
    loaded = await load_populated(state.db, tenant, body.id, state.live)
    await jobs.stop_and_wait(state, KIND, body.id)
    root = state.settings.storage_root
    folder = restream_hls_dir(root, body.id).parent  # <root>/restreams/<job_id>
    if folder.exists() and is_under(root, folder):
        shutil.rmtree(folder, ignore_errors=True)
    await jobs.delete_job(state.db, KIND, tenant, loaded)
    state.live_stats.forget(KIND.module, body.id)
    log.info("restream_removed", job_id=body.id, outputs=len(loaded["output"]))
    return loaded


@router.post("/getStat", summary="Live FFmpeg progress of running restreams, per destination")
async def get_stat(
    state: State, principal: Principal, _body: Annotated[dict[str, Any] | None, Body()] = None
) -> list[dict[str, Any]]:
    return jobs.stat_rows(state, KIND, tenant_of(principal))


def _playlist_with_token(text: str, token: str) -> str:
    """Carry ``?token=`` to the segments a playlist names (a player drops the query otherwise)."""
    query = "?token=" + quote(token, safe="")
    lines = []
    for line in text.splitlines():
        bare = line.strip()
        if bare.startswith("#"):
            line = _PLAYLIST_URI_ATTR.sub(lambda m: f'URI="{m.group(1)}{query}"', line)
        elif _HLS_NAME.match(bare) and ".." not in bare:
            line = bare + query
        lines.append(line)
    return "\n".join(lines) + "\n"


@router.get(
    "/hls/{id}/{name}",
    summary="A file of the job's HLS destination (monitoring)",
    response_class=Response,
    responses={
        200: {
            "description": "The playlist or a segment.",
            "content": {t: {} for t in sorted(set(HLS_MEDIA_TYPES.values()))},
        }
    },
)
async def hls_file(
    state: State,
    principal: PlayerPrincipal,
    request: Request,
    job_id: Annotated[ObjectIdStr, Path(alias="id")],
    name: Annotated[str, Path(max_length=128, pattern=HLS_NAME_PATTERN)],
) -> Response:
    media_type = HLS_MEDIA_TYPES.get(FsPath(name).suffix.lower())
    await jobs.load(state.db, KIND, tenant_of(principal), job_id)
    root = state.settings.storage_root
    path = checked_path(root, restream_hls_dir(root, job_id) / name)
    if media_type is None or not path.is_file():
        raise NotFound(f"no HLS file {name} for restream {job_id}", field="name")
    if media_type != HLS_MEDIA_TYPES[".m3u8"]:
        return FileResponse(path, media_type=media_type)
    text = path.read_text(errors="replace")
    token = request.query_params.get("token")
    if token and not request.headers.get("x-access-token"):
        text = _playlist_with_token(text, token)
    return Response(text, media_type=media_type, headers={"Cache-Control": "no-cache"})
