"""Functional tests of the supernode HTTP API against a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest

from supernode import PolicyConfig
from supernode._keys import SUPERNODE

from .conftest import (
    ADMIN_AUTH,
    PEER_AUTH,
    RunningSupernode,
    start_supernode,
    supernode_config,
)

BLOB = "ab" * 32
OTHER_BLOB = "cd" * 32


def register_body(peer_id: str, host: str | None = None, **extra: Any) -> dict[str, Any]:
    """A register message without its `type` tag (`RunningSupernode.post` adds that)."""
    port = 9000 + int(peer_id.strip("abcdefghijklmnopqrstuvwxyz-") or 0)
    body = {
        "peer_id": peer_id,
        "host_name": host or f"host-{peer_id}",
        "ip": "127.0.0.1",
        "upload_port": port,
        "http_url": f"http://127.0.0.1:{port}",
    }
    body.update(extra)
    return body


async def register(node: RunningSupernode, peer_id: str, **extra: Any) -> None:
    status, answer = await node.post("/api/v1/peers/register", register_body(peer_id, **extra))
    assert status == 200, answer
    assert answer["type"] == "register_answer"


async def announce(
    node: RunningSupernode,
    peer_id: str,
    ranges: list[list[int]],
    blob: str = BLOB,
    chunks: int = 10,
) -> None:
    body = {"peer_id": peer_id, "blob_id": blob, "chunk_count": chunks, "ranges": ranges}
    status, answer = await node.post("/api/v1/announce", body)
    assert status == 204, answer


async def schedule(
    node: RunningSupernode, peer_id: str, blob: str = BLOB, chunks: int = 10, **extra: Any
) -> list[dict[str, Any]]:
    body = {"peer_id": peer_id, "blob_id": blob, "chunk_count": chunks, **extra}
    status, answer = await node.post("/api/v1/schedule", body)
    assert status == 200, answer
    return sorted(answer["plans"], key=lambda plan: plan["start"])


def parents(plan: dict[str, Any]) -> list[str]:
    return [p["peer_id"] for p in plan.get("parents", [])]


# --- authentication ---------------------------------------------------------------------

PEER_CALLS = [
    ("POST", "/api/v1/peers/register", register_body("p1")),
    ("POST", "/api/v1/peers/heartbeat", {"peer_id": "p1"}),
    ("POST", "/api/v1/peers/leave", {"peer_id": "p1"}),
    (
        "POST",
        "/api/v1/announce",
        {"peer_id": "p1", "blob_id": BLOB, "chunk_count": 4, "ranges": [[0, 4]]},
    ),
    ("POST", "/api/v1/schedule", {"peer_id": "p1", "blob_id": BLOB, "chunk_count": 4}),
    ("POST", "/api/v1/piece-results", {"peer_id": "p1", "blob_id": BLOB, "results": []}),
    ("GET", "/api/v1/seed-tasks?peer_id=p1", None),
]
ADMIN_CALLS = [
    (
        "POST",
        "/api/v1/admin/preheat",
        {"blobs": [{"blob_id": BLOB, "origin_url": "http://127.0.0.1:1/b"}]},
    ),
    ("GET", "/api/v1/admin/preheat/job-1", None),
    ("POST", "/api/v1/admin/blacklist", {"peer_id": "p1"}),
    ("GET", "/api/v1/admin/blacklist", None),
]
BAD_AUTH = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": "Basic Y2x1c3Rlci1zZWNyZXQ="},
    {"Authorization": "Bearer"},
]


async def _call(
    node: RunningSupernode, method: str, path: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    async with node.http.request(method, node.url + path, **kwargs) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(("method", "path", "body"), PEER_CALLS + ADMIN_CALLS)
async def test_without_a_valid_token_nothing_happens(
    supernode: RunningSupernode, method: str, path: str, body: Any
) -> None:
    wrong_role = ADMIN_AUTH if "/admin/" not in path else PEER_AUTH
    for headers in [*BAD_AUTH, wrong_role]:
        status, error = await _call(supernode, method, path, body, headers)
        assert status == 401, (headers, error)
        assert error["error"] == "unauthorized" and error["detail"]
    node = supernode.app[SUPERNODE]
    assert (node.peer_count, node.blob_count) == (0, 0)
    assert node.blacklist_entries().entries == ()


async def test_admin_endpoints_are_closed_without_an_admin_token(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    node = await start_supernode(supernode_config(str(tmp_path / "db"), admin_token=None), http)
    try:
        status, error = await node.get("/api/v1/admin/blacklist", auth=ADMIN_AUTH)
        assert status == 401 and "no admin token" in error["detail"]
    finally:
        await node.stop()


async def test_without_a_cluster_token_peer_endpoints_are_open(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    node = await start_supernode(supernode_config(str(tmp_path / "db"), token=None), http)
    try:
        status, _ = await node.post("/api/v1/peers/register", register_body("p1"), auth={})
        assert status == 200
    finally:
        await node.stop()


async def test_public_endpoints_need_no_token(supernode: RunningSupernode) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json"):
        status, _ = await supernode.get(path, auth={})
        assert status == 200, path


# --- the peer flow ----------------------------------------------------------------------


async def test_register_announce_schedule(supernode: RunningSupernode) -> None:
    for peer in ("p1", "p2", "p3"):
        await register(supernode, peer)
    await announce(supernode, "p1", [[0, 6]])
    await announce(supernode, "p2", [[4, 8]])
    plans = await schedule(supernode, "p3")
    assert [(p["action"], p["start"], p["end"]) for p in plans] == [
        ("parents", 0, 4),
        ("parents", 4, 6),
        ("parents", 6, 8),
        ("origin", 8, 10),
    ]
    assert parents(plans[0]) == ["p1"]
    assert sorted(parents(plans[1])) == ["p1", "p2"]
    assert parents(plans[2]) == ["p2"]
    assert plans[0]["parents"][0]["http_url"] == "http://127.0.0.1:9001"


async def test_a_peer_is_never_its_own_parent_nor_one_on_its_host(
    supernode: RunningSupernode,
) -> None:
    await register(supernode, "p1", host="shared")
    await register(supernode, "p2", host="shared")
    await announce(supernode, "p1", [[0, 10]])
    assert {plan["action"] for plan in await schedule(supernode, "p1")} == {"origin"}
    assert {plan["action"] for plan in await schedule(supernode, "p2")} == {"origin"}


async def test_heartbeat_and_leave(supernode: RunningSupernode) -> None:
    await register(supernode, "p1")
    await register(supernode, "p2")
    await announce(supernode, "p1", [[0, 10]])
    status, answer = await supernode.post("/api/v1/peers/heartbeat", {"peer_id": "p1"})
    assert (status, answer["known"]) == (200, True)
    status, _ = await supernode.post("/api/v1/peers/leave", {"peer_id": "p1"})
    assert status == 204
    status, answer = await supernode.post("/api/v1/peers/heartbeat", {"peer_id": "p1"})
    assert (status, answer["known"]) == (200, False)
    assert {plan["action"] for plan in await schedule(supernode, "p2")} == {"origin"}
    status, _ = await supernode.post("/api/v1/peers/leave", {"peer_id": "p1"})
    assert status == 204  # leaving twice is fine


async def test_silent_peers_expire(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    config = supernode_config(str(tmp_path / "db"), policy=PolicyConfig(peer_ttl=0.3))
    node = await start_supernode(config, http)
    try:
        await register(node, "p1")
        await announce(node, "p1", [[0, 10]])
        for _ in range(50):
            _, health = await node.get("/healthz", auth={})
            if health["peers"] == 0:
                break
            await asyncio.sleep(0.05)
        assert health["peers"] == 0
        _, answer = await node.post("/api/v1/peers/heartbeat", {"peer_id": "p1"})
        assert answer["known"] is False
    finally:
        await node.stop()


async def test_msgpack_in_msgpack_out(supernode: RunningSupernode) -> None:
    body = msgspec.msgpack.encode({"type": "register", **register_body("p1")})
    headers = {**PEER_AUTH, "Content-Type": "application/msgpack"}
    url = supernode.url + "/api/v1/peers/register"
    async with supernode.http.post(url, data=body, headers=headers) as response:
        assert response.status == 200
        assert response.content_type == "application/msgpack"
        answer = msgspec.msgpack.decode(await response.read())
    assert answer["peer_id"] == "p1"
    headers = {**PEER_AUTH, "Accept": "application/msgpack"}
    url = supernode.url + "/api/v1/seed-tasks?peer_id=p1"
    async with supernode.http.get(url, headers=headers) as response:
        assert response.status == 409  # errors stay JSON whatever was asked
        assert (await response.json())["error"] == "not_a_seed"


# --- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "status", "error", "where"),
    [
        ("/api/v1/peers/register", b"{", 400, "bad_request", "$"),
        ("/api/v1/peers/register", b"[]", 400, "bad_request", "$"),
        (
            "/api/v1/peers/register",
            b'{"type": "register", "peer_id": "p1"}',
            400,
            "bad_request",
            "$",
        ),
        (
            "/api/v1/peers/register",
            msgspec.json.encode(register_body("p1")),
            400,
            "bad_request",
            "$",
        ),
        (
            "/api/v1/peers/register",
            msgspec.json.encode({**register_body("p1"), "type": "heartbeat"}),
            400,
            "bad_request",
            "$.type",
        ),
        (
            "/api/v1/peers/register",
            msgspec.json.encode({"type": "register", **register_body("p1", ip="nope")}),
            400,
            "bad_request",
            "$.ip",
        ),
        (
            "/api/v1/peers/register",
            msgspec.json.encode({"type": "register", **register_body("p1", version=9)}),
            400,
            "bad_request",
            None,
        ),
        (
            "/api/v1/announce",
            msgspec.json.encode(
                {
                    "type": "announce",
                    "peer_id": "p1",
                    "blob_id": BLOB,
                    "chunk_count": 4,
                    "ranges": [[2, 9]],
                }
            ),
            400,
            "bad_request",
            "$.ranges[0]",
        ),
        (
            "/api/v1/announce",
            msgspec.json.encode(
                {
                    "type": "announce",
                    "peer_id": "ghost",
                    "blob_id": BLOB,
                    "chunk_count": 4,
                    "ranges": [[0, 1]],
                }
            ),
            404,
            "unknown_peer",
            None,
        ),
        (
            "/api/v1/schedule",
            msgspec.json.encode(
                {"type": "schedule", "peer_id": "ghost", "blob_id": BLOB, "chunk_count": 4}
            ),
            404,
            "unknown_peer",
            None,
        ),
        (
            "/api/v1/schedule",
            msgspec.json.encode(
                {"type": "schedule", "peer_id": "p1", "blob_id": "xyz", "chunk_count": 4}
            ),
            400,
            "bad_request",
            "$.blob_id",
        ),
    ],
)
async def test_malformed_input_is_a_json_4xx(
    supernode: RunningSupernode,
    path: str,
    body: bytes,
    status: int,
    error: str,
    where: str | None,
) -> None:
    headers = {**PEER_AUTH, "Content-Type": "application/json"}
    async with supernode.http.post(supernode.url + path, data=body, headers=headers) as resp:
        answer = await resp.json()
    assert (resp.status, answer["error"]) == (status, error), answer
    assert answer["detail"]
    if where is not None:
        assert answer.get("path") == where, answer


async def test_chunk_count_conflict_is_409(supernode: RunningSupernode) -> None:
    await register(supernode, "p1")
    await announce(supernode, "p1", [[0, 10]], chunks=10)
    body = {"peer_id": "p1", "blob_id": BLOB, "chunk_count": 12}
    status, answer = await supernode.post("/api/v1/schedule", body)
    assert (status, answer["error"]) == (409, "chunk_count_mismatch")


async def test_oversized_body_is_413(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    node = await start_supernode(supernode_config(str(tmp_path / "db"), max_body=1024), http)
    try:
        body = register_body("p1", labels={f"k{i}": "v" * 100 for i in range(20)})
        status, answer = await node.post("/api/v1/peers/register", body)
        assert (status, answer["error"]) == (413, "payload_too_large")
    finally:
        await node.stop()


async def test_unknown_route_and_method_are_json(supernode: RunningSupernode) -> None:
    status, answer = await supernode.get("/api/v1/nothing")
    assert (status, answer["error"]) == (404, "not_found")
    async with supernode.http.delete(supernode.url + "/api/v1/schedule") as response:
        assert response.status == 405
        assert "POST" in response.headers["Allow"]
        assert (await response.json())["error"] == "method_not_allowed"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"peer_id": "bad id"},
        {"peer_id": "s1", "limit": "0"},
        {"peer_id": "s1", "limit": "many"},
    ],
)
async def test_bad_seed_task_queries(supernode: RunningSupernode, query: dict[str, Any]) -> None:
    status, answer = await supernode.get("/api/v1/seed-tasks", **query)
    assert (status, answer["error"]) == (400, "bad_request")
