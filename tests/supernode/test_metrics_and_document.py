"""Prometheus metrics per app, and the OpenAPI document against the routes it describes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import msgspec

from protocol import decode
from supernode import openapi_document
from supernode._api import ENDPOINTS

from .conftest import PostgresCluster, RunningSupernode, start_supernode, supernode_config
from .test_api import BLOB, announce, register, schedule


def _sample(metrics: bytes, line_start: str) -> float:
    for line in metrics.decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start!r}")


async def test_metrics_count_decisions_per_app(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    one = await start_supernode(supernode_config(str(tmp_path / "one.db")), http)
    two = await start_supernode(supernode_config(str(tmp_path / "two.db")), http)
    try:
        for peer in ("p1", "p2"):
            await register(one, peer)
        await announce(one, "p1", [[0, 5]])
        await schedule(one, "p2")
        _, first = await one.get("/metrics", auth={})
        _, second = await two.get("/metrics", auth={})
    finally:
        await one.stop()
        await two.stop()
    assert _sample(first, "supernode_peers ") == 2
    assert _sample(first, "supernode_blobs ") == 1
    assert _sample(first, 'supernode_schedule_decisions_total{kind="parents"}') == 1
    assert _sample(first, 'supernode_schedule_decisions_total{kind="origin"}') == 1
    assert _sample(first, "supernode_back_to_source_total") == 1
    route = 'route="/api/v1/schedule"'
    assert _sample(first, f'supernode_http_request_seconds_count{{method="POST",{route}}}') == 1
    assert _sample(second, "supernode_peers ") == 0
    assert _sample(second, 'supernode_schedule_decisions_total{kind="parents"}') == 0


async def test_a_parent_suspended_for_failing_shows_in_the_gauge(
    supernode: RunningSupernode,
) -> None:
    for peer in ("p1", "p2"):
        await register(supernode, peer)
    await announce(supernode, "p1", [[0, 5]])
    _, before = await supernode.get("/metrics", auth={})
    failed = {"parent_id": "p1", "failure": "connect"}
    for _ in range(4):  # success 1.0 -> 0.24: below the 0.25 the default policy suspends at
        body = {"peer_id": "p2", "blob_id": BLOB, "results": [failed]}
        status, answer = await supernode.post("/api/v1/piece-results", body)
        assert status == 204, answer
    _, after = await supernode.get("/metrics", auth={})
    assert _sample(before, "supernode_parents_suspended ") == 0
    assert _sample(after, "supernode_parents_suspended ") == 1


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(_refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(_refs(v) for v in node))
    return set()


async def test_the_document_describes_exactly_the_routes(supernode: RunningSupernode) -> None:
    status, served = await supernode.get("/openapi.json", auth={})
    assert status == 200
    assert served == msgspec.json.decode(openapi_document())
    documented = {(m.upper(), path) for path, ops in served["paths"].items() for m in ops}
    routed = {
        (route.method, route.resource.canonical)
        for route in supernode.app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    assert documented == routed
    schemas = served["components"]["schemas"]
    assert {ref.rsplit("/", 1)[1] for ref in _refs(served)} <= set(schemas)
    for path, ops in served["paths"].items():
        for method, op in ops.items():
            secured = bool(op["security"])
            assert secured == path.startswith("/api/"), (method, path)
            assert ("401" in op["responses"]) == secured
            if "requestBody" in op:
                assert {"400", "413"} <= set(op["responses"])
                assert set(op["requestBody"]["content"]) == {
                    "application/json",
                    "application/msgpack",
                }


def test_every_documented_example_is_a_valid_request() -> None:
    operations = [e.operation for e in ENDPOINTS if e.operation.request is not None]
    assert all(op.example is not None for op in operations)
    for op in operations:
        assert op.request is not None
        decode(msgspec.json.encode(op.example), "json", op.request)


async def test_health_degrades_when_the_database_is_gone(
    postgres_cluster: PostgresCluster, http: aiohttp.ClientSession
) -> None:
    url = await postgres_cluster.create_database()
    node = await start_supernode(supernode_config(url), http)
    try:
        status, health = await node.get("/healthz", auth={})
        assert (status, health["status"]) == (200, "ok")
        name = url.rsplit("/", 1)[1]
        admin = await asyncpg.connect(postgres_cluster.admin_dsn())
        try:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        finally:
            await admin.close()
        status, health = await node.get("/healthz", auth={})
        assert (status, health["status"]) == (503, "degraded")
    finally:
        await node.stop()
