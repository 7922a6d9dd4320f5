"""The HTTP endpoints: one table of operations, their handlers, and the document.

Rule: `ENDPOINTS` is the single list of routes. The app registers exactly these, the auth
middleware reads each one's role from it, and `/openapi.json` is generated from it, so
the document cannot drift from the routes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from protocol import (
    Announce,
    Heartbeat,
    HeartbeatAnswer,
    JobStatus,
    Leave,
    PeerId,
    PieceResults,
    PreheatRequest,
    Register,
    RegisterAnswer,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTaskBatch,
)

from ._errors import BadRequest
from ._http import no_content, read_message, reply, reply_struct
from ._keys import METRICS, OPENAPI, REPOSITORY, RESOLVER, SUPERNODE
from ._openapi import Operation, Param
from ._wire import Blacklist, BlacklistRequest, Health, JobId, SeedTaskLimit, SeedTasksQuery

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API = "/api/v1"


@dataclass(frozen=True)
class Endpoint:
    operation: Operation
    handler: Handler


# --- peer endpoints ---------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    msg = await read_message(request, Register)
    return reply(request, request.app[SUPERNODE].register(msg))


async def heartbeat(request: web.Request) -> web.Response:
    msg = await read_message(request, Heartbeat)
    answer = request.app[SUPERNODE].heartbeat(msg)
    request.app[METRICS].seed_tasks.inc(len(answer.seed_tasks))
    return reply(request, answer)


async def leave(request: web.Request) -> web.Response:
    request.app[SUPERNODE].leave(await read_message(request, Leave))
    return no_content()


async def announce(request: web.Request) -> web.Response:
    request.app[SUPERNODE].announce(await read_message(request, Announce))
    return no_content()


async def schedule(request: web.Request) -> web.Response:
    msg = await read_message(request, ScheduleRequest)
    answer = request.app[SUPERNODE].schedule(msg)
    request.app[METRICS].count_plans(answer.plans)
    return reply(request, answer)


async def piece_results(request: web.Request) -> web.Response:
    msg = await read_message(request, PieceResults)
    request.app[SUPERNODE].report(msg)
    request.app[METRICS].digest_mismatches.inc(sum(r.digest_mismatch for r in msg.results))
    return no_content()


def _seed_query(request: web.Request) -> SeedTasksQuery:
    try:
        return msgspec.convert(dict(request.query), SeedTasksQuery, strict=False)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"bad query: {exc}") from None


async def seed_tasks(request: web.Request) -> web.Response:
    query = _seed_query(request)
    batch = request.app[SUPERNODE].seed_tasks(query.peer_id, query.limit)
    request.app[METRICS].seed_tasks.inc(len(batch.tasks))
    return reply(request, batch)


# --- admin endpoints --------------------------------------------------------------------


async def preheat(request: web.Request) -> web.Response:
    msg = await read_message(request, PreheatRequest)
    node = request.app[SUPERNODE]
    if msg.image is None:
        return reply(request, node.new_job(blobs=msg.blobs), status=202)
    status = node.new_job(image=msg.image)
    request.app[RESOLVER].submit(status.job_id, msg.image)
    return reply(request, status, status=202)


async def job_status(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    return reply(request, request.app[SUPERNODE].job_status(job_id))


async def add_blacklist(request: web.Request) -> web.Response:
    request.app[SUPERNODE].blacklist(await read_message(request, BlacklistRequest))
    return no_content()


async def list_blacklist(request: web.Request) -> web.Response:
    return reply(request, request.app[SUPERNODE].blacklist_entries())


# --- public endpoints -------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    node = request.app[SUPERNODE]
    healthy = await request.app[REPOSITORY].ping()
    status = "ok" if healthy else "degraded"
    body = Health(status=status, peers=node.peer_count, blobs=node.blob_count)
    return reply_struct(body, status=200 if healthy else 503)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS].exposition()
    response = web.Response(body=body)
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json")


# --- the table --------------------------------------------------------------------------


def _schema(kind: Any) -> dict[str, Any]:
    return msgspec.json.schema(kind)


_SEED_PARAMS = (
    Param("peer_id", "query", _schema(PeerId), description="The polling seed"),
    Param(
        "limit", "query", _schema(SeedTaskLimit), required=False, description="Most tasks to take"
    ),
)
_JOB_PARAM = (Param("job_id", "path", _schema(JobId)),)


def _op(method: str, path: str, op_id: str, summary: str, role: str, **kw: Any) -> Operation:
    return Operation(method, path, op_id, summary, role, **kw)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        _op(
            "POST",
            f"{API}/peers/register",
            "register",
            "Register a peer or seed",
            "peer",
            request=Register,
            response=RegisterAnswer,
        ),
        register,
    ),
    Endpoint(
        _op(
            "POST",
            f"{API}/peers/heartbeat",
            "heartbeat",
            "Keep a peer alive; seeds receive tasks",
            "peer",
            request=Heartbeat,
            response=HeartbeatAnswer,
        ),
        heartbeat,
    ),
    Endpoint(
        _op("POST", f"{API}/peers/leave", "leave", "Leave the mesh", "peer", request=Leave), leave
    ),
    Endpoint(
        _op(
            "POST",
            f"{API}/announce",
            "announce",
            "Announce verified chunks held",
            "peer",
            request=Announce,
            errors=(404, 409),
        ),
        announce,
    ),
    Endpoint(
        _op(
            "POST",
            f"{API}/schedule",
            "schedule",
            "Where to fetch wanted chunks",
            "peer",
            request=ScheduleRequest,
            response=ScheduleAnswer,
            errors=(404, 409),
        ),
        schedule,
    ),
    Endpoint(
        _op(
            "POST",
            f"{API}/piece-results",
            "pieceResults",
            "Report how parents served",
            "peer",
            request=PieceResults,
            errors=(404,),
        ),
        piece_results,
    ),
    Endpoint(
        _op(
            "GET",
            f"{API}/seed-tasks",
            "seedTasks",
            "A seed takes its next tasks",
            "peer",
            response=SeedTaskBatch,
            params=_SEED_PARAMS,
            errors=(404, 409),
        ),
        seed_tasks,
    ),
    Endpoint(
        _op(
            "POST",
            f"{API}/admin/preheat",
            "preheat",
            "Seed an image or blobs before peers ask",
            "admin",
            request=PreheatRequest,
            response=JobStatus,
            status=202,
            errors=(409,),
        ),
        preheat,
    ),
    Endpoint(
        _op(
            "GET",
            f"{API}/admin/preheat/{{job_id}}",
            "preheatStatus",
            "Progress of a preheat job",
            "admin",
            response=JobStatus,
            params=_JOB_PARAM,
            errors=(404,),
        ),
        job_status,
    ),
    Endpoint(
        _op(
            "POST",
            f"{API}/admin/blacklist",
            "blacklist",
            "Bar a peer from serving a blob, or any blob",
            "admin",
            request=BlacklistRequest,
        ),
        add_blacklist,
    ),
    Endpoint(
        _op(
            "GET",
            f"{API}/admin/blacklist",
            "blacklistEntries",
            "Every blacklist entry",
            "admin",
            response=Blacklist,
        ),
        list_blacklist,
    ),
    Endpoint(
        _op("GET", "/healthz", "healthz", "Liveness and database check", "public", response=Health),
        healthz,
    ),
    Endpoint(
        _op(
            "GET",
            "/metrics",
            "metrics",
            "Prometheus metrics",
            "public",
            response_media="text/plain",
        ),
        metrics,
    ),
    Endpoint(
        _op(
            "GET",
            "/openapi.json",
            "openapi",
            "This document",
            "public",
            response_media="application/json",
        ),
        openapi,
    ),
)

ROLES: dict[str, str] = {e.operation.path: e.operation.role for e in ENDPOINTS}


def role_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return ROLES.get(resource.canonical, "public") if resource is not None else "public"
