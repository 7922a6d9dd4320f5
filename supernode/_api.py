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
    SeedTaskFailed,
    Withdraw,
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


async def withdraw(request: web.Request) -> web.Response:
    request.app[SUPERNODE].withdraw(await read_message(request, Withdraw))
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


async def seed_task_failed(request: web.Request) -> web.Response:
    request.app[SUPERNODE].seed_task_failed(await read_message(request, SeedTaskFailed))
    request.app[METRICS].seed_failures.inc()
    return no_content()


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
    Param("peer_id", "query", _schema(PeerId), description="The polling seed", example="s1"),
    Param("limit", "query", _schema(SeedTaskLimit), False, "Most tasks to take", 16),
)
_JOB_PARAM = (Param("job_id", "path", _schema(JobId), example="job-0123456789abcdef"),)

# Request examples that work against a small mesh: peers p1..p3 and seed s1, with p1
# holding half of blob ab..ab. The documentation shows them; schemathesis sends them.
_BLOB = "ab" * 32
_EXAMPLES: dict[str, dict[str, Any]] = {
    "register": {"type": "register", "peer_id": "p2", "host_name": "host-2", "ip": "127.0.0.1",
                 "upload_port": 65002, "http_url": "http://127.0.0.1:65002",
                 "labels": {"zone": "zone-a"}},
    "heartbeat": {"type": "heartbeat", "peer_id": "p2", "current_uploads": 1},
    "leave": {"type": "leave", "peer_id": "p3"},
    "announce": {"type": "announce", "peer_id": "p1", "blob_id": _BLOB, "chunk_count": 64,
                 "ranges": [[0, 32]]},
    "withdraw": {"type": "withdraw", "peer_id": "p1", "blob_id": _BLOB, "chunk_count": 64,
                 "ranges": [[16, 24]]},
    "seedTaskFailed": {"type": "seed_task_failed", "peer_id": "s1", "task_id": "seed-1",
                       "blob_id": _BLOB, "error": "origin refused: HTTP 401"},
    "schedule": {"type": "schedule", "peer_id": "p2", "blob_id": _BLOB, "chunk_count": 64,
                 "origin_url": f"http://127.0.0.1:5000/v2/app/blobs/sha256:{_BLOB}"},
    "pieceResults": {"type": "piece_results", "peer_id": "p2", "blob_id": _BLOB,
                     "results": [{"parent_id": "p1", "chunks_ok": 32, "bytes": 131072,
                                  "duration_ms": 12}]},
    "preheat": {"type": "preheat", "blobs": [
        {"blob_id": "cd" * 32, "origin_url": "http://127.0.0.1:5000/v2/app/blobs/sha256:"
         + "cd" * 32, "chunk_count": 16}]},
    "blacklist": {"type": "blacklist", "peer_id": "p3", "blob_id": _BLOB,
                  "reason": "maintenance"},
}  # fmt: skip


def _endpoint(
    method: str, path: str, op_id: str, role: str, handler: Handler, summary: str, **kw: Any
) -> Endpoint:
    operation = Operation(method, path, op_id, summary, role, example=_EXAMPLES.get(op_id), **kw)
    return Endpoint(operation, handler)


ENDPOINTS: tuple[Endpoint, ...] = (
    _endpoint("POST", f"{API}/peers/register", "register", "peer", register,
              "Register a peer or seed", request=Register, response=RegisterAnswer),
    _endpoint("POST", f"{API}/peers/heartbeat", "heartbeat", "peer", heartbeat,
              "Keep a peer alive; seeds receive tasks", request=Heartbeat,
              response=HeartbeatAnswer),
    _endpoint("POST", f"{API}/peers/leave", "leave", "peer", leave, "Leave the mesh",
              request=Leave),
    _endpoint("POST", f"{API}/announce", "announce", "peer", announce,
              "Announce verified chunks held", request=Announce, errors=(404, 409)),
    _endpoint("POST", f"{API}/withdraw", "withdraw", "peer", withdraw,
              "Withdraw chunks no longer held", request=Withdraw, errors=(404, 409)),
    _endpoint("POST", f"{API}/schedule", "schedule", "peer", schedule,
              "Where to fetch wanted chunks", request=ScheduleRequest,
              response=ScheduleAnswer, errors=(404, 409)),
    _endpoint("POST", f"{API}/piece-results", "pieceResults", "peer", piece_results,
              "Report how parents served", request=PieceResults, errors=(404,)),
    _endpoint("GET", f"{API}/seed-tasks", "seedTasks", "peer", seed_tasks,
              "A seed takes its next tasks", response=SeedTaskBatch, params=_SEED_PARAMS,
              errors=(404, 409)),
    _endpoint("POST", f"{API}/seed-tasks/failed", "seedTaskFailed", "peer", seed_task_failed,
              "A seed reports a task it could not do", request=SeedTaskFailed,
              errors=(404,)),
    _endpoint("POST", f"{API}/admin/preheat", "preheat", "admin", preheat,
              "Seed an image or blobs before peers ask", request=PreheatRequest,
              response=JobStatus, status=202, errors=(409,)),
    _endpoint("GET", f"{API}/admin/preheat/{{job_id}}", "preheatStatus", "admin", job_status,
              "Progress of a preheat job", response=JobStatus, params=_JOB_PARAM,
              errors=(404,)),
    _endpoint("POST", f"{API}/admin/blacklist", "blacklist", "admin", add_blacklist,
              "Bar a peer from serving a blob, or any blob", request=BlacklistRequest),
    _endpoint("GET", f"{API}/admin/blacklist", "blacklistEntries", "admin", list_blacklist,
              "Every blacklist entry", response=Blacklist),
    _endpoint("GET", "/healthz", "healthz", "public", healthz,
              "Liveness and database check", response=Health, also=(503,)),
    _endpoint("GET", "/metrics", "metrics", "public", metrics, "Prometheus metrics",
              response_media="text/plain"),
    _endpoint("GET", "/openapi.json", "openapi", "public", openapi, "This document",
              response_media="application/json"),
)  # fmt: skip

ROLES: dict[str, str] = {e.operation.path: e.operation.role for e in ENDPOINTS}


def role_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return ROLES.get(resource.canonical, "public") if resource is not None else "public"
