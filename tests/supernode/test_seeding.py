"""Seeds, preheat jobs, the blacklist and piece results, over HTTP on loopback."""

from __future__ import annotations

import asyncio
from typing import Any

from .conftest import ADMIN_AUTH, RunningSupernode
from .test_api import BLOB, OTHER_BLOB, announce, parents, register, schedule

ORIGIN = "http://127.0.0.1:1/v2/app/blobs/sha256:" + BLOB


async def seed_tasks(node: RunningSupernode, seed: str) -> list[dict[str, Any]]:
    status, answer = await node.get("/api/v1/seed-tasks", peer_id=seed)
    assert status == 200, answer
    return list(answer["tasks"])


async def test_missing_chunks_become_one_seed_task(supernode: RunningSupernode) -> None:
    await register(supernode, "s1", seed=True)
    for peer in ("p1", "p2"):
        await register(supernode, peer)
    for peer in ("p1", "p2"):  # two askers, one task
        plans = await schedule(supernode, peer, origin_url=ORIGIN)
        assert [(p["action"], p["start"], p["end"]) for p in plans] == [("retry", 0, 10)]
    tasks = await seed_tasks(supernode, "s1")
    assert [(t["blob_id"], t["origin_url"], t["ranges"]) for t in tasks] == [
        (BLOB, ORIGIN, [[0, 10]])
    ]
    assert await seed_tasks(supernode, "s1") == []
    await announce(supernode, "s1", [[0, 10]])
    plans = await schedule(supernode, "p1")
    assert [parents(p) for p in plans] == [["s1"]]


async def test_seed_tasks_also_come_with_heartbeats(supernode: RunningSupernode) -> None:
    await register(supernode, "s1", seed=True)
    await register(supernode, "p1")
    await schedule(supernode, "p1", origin_url=ORIGIN)
    status, answer = await supernode.post("/api/v1/peers/heartbeat", {"peer_id": "s1"})
    assert status == 200 and len(answer["seed_tasks"]) == 1


async def test_preheat_blobs_and_follow_the_job(supernode: RunningSupernode) -> None:
    await register(supernode, "s1", seed=True)
    body = {
        "blobs": [
            {"blob_id": BLOB, "origin_url": ORIGIN, "chunk_count": 10},
            {"blob_id": OTHER_BLOB, "origin_url": ORIGIN + "x", "chunk_count": 4},
        ]
    }
    status, job = await supernode.post("/api/v1/admin/preheat", body, auth=ADMIN_AUTH)
    assert status == 202 and job["state"] in ("pending", "running")
    tasks = await seed_tasks(supernode, "s1")
    assert sorted((t["blob_id"], t["ranges"]) for t in tasks) == [
        (BLOB, [[0, 10]]),
        (OTHER_BLOB, [[0, 4]]),
    ]
    await announce(supernode, "s1", [[0, 10]])
    status, mid = await supernode.get(f"/api/v1/admin/preheat/{job['job_id']}", auth=ADMIN_AUTH)
    assert (status, mid["state"], mid["blobs_done"], mid["chunks_done"]) == (200, "running", 1, 10)
    await announce(supernode, "s1", [[0, 4]], blob=OTHER_BLOB, chunks=4)
    _, done = await supernode.get(f"/api/v1/admin/preheat/{job['job_id']}", auth=ADMIN_AUTH)
    assert (done["state"], done["blobs_total"], done["chunks_total"]) == ("succeeded", 2, 14)


async def test_unknown_job_is_404(supernode: RunningSupernode) -> None:
    status, error = await supernode.get("/api/v1/admin/preheat/job-nope", auth=ADMIN_AUTH)
    assert (status, error["error"]) == (404, "unknown_job")


async def test_preheat_needs_image_or_blobs(supernode: RunningSupernode) -> None:
    for body in ({}, {"image": "r/a:1", "blobs": [{"blob_id": BLOB, "origin_url": ORIGIN}]}):
        status, error = await supernode.post("/api/v1/admin/preheat", body, auth=ADMIN_AUTH)
        assert (status, error["error"]) == (400, "bad_request")


async def test_preheat_of_an_unreachable_image_fails_the_job(supernode: RunningSupernode) -> None:
    body = {"image": "127.0.0.1:9/app:1"}  # discard port: connection refused
    status, job = await supernode.post("/api/v1/admin/preheat", body, auth=ADMIN_AUTH)
    assert (status, job["state"]) == (202, "pending")
    for _ in range(100):
        _, job = await supernode.get(f"/api/v1/admin/preheat/{job['job_id']}", auth=ADMIN_AUTH)
        if job["state"] != "pending":
            break
        await asyncio.sleep(0.02)
    assert job["state"] == "failed" and "unreachable" in job["error"]


async def test_admin_blacklist(supernode: RunningSupernode) -> None:
    for peer in ("p1", "p2", "p3"):
        await register(supernode, peer)
    await announce(supernode, "p1", [[0, 10]])
    await announce(supernode, "p2", [[0, 10]])
    body = {"peer_id": "p1", "blob_id": BLOB, "reason": "flaky disk"}
    status, _ = await supernode.post("/api/v1/admin/blacklist", body, auth=ADMIN_AUTH)
    assert status == 204
    assert [parents(p) for p in await schedule(supernode, "p3")] == [["p2"]]
    status, listing = await supernode.get("/api/v1/admin/blacklist", auth=ADMIN_AUTH)
    assert listing["entries"] == [{"peer_id": "p1", "blob_id": BLOB, "reason": "flaky disk"}]


async def test_digest_mismatch_blacklists_the_parent_for_the_blob(
    supernode: RunningSupernode,
) -> None:
    for peer in ("p1", "p2", "p3"):
        await register(supernode, peer)
    await announce(supernode, "p1", [[0, 10]])
    await announce(supernode, "p2", [[0, 10]])
    report = {
        "peer_id": "p3",
        "blob_id": BLOB,
        "results": [
            {"parent_id": "p1", "chunks_ok": 3, "bytes": 3000, "duration_ms": 5, "mismatched": [4]},
            {"parent_id": "p2", "chunks_ok": 10, "bytes": 10000, "duration_ms": 9},
        ],
    }
    status, _ = await supernode.post("/api/v1/piece-results", report)
    assert status == 204
    assert [parents(p) for p in await schedule(supernode, "p3")] == [["p2"]]
    _, listing = await supernode.get("/api/v1/admin/blacklist", auth=ADMIN_AUTH)
    assert [(e["peer_id"], e["blob_id"]) for e in listing["entries"]] == [("p1", BLOB)]
    _, metrics = await supernode.get("/metrics", auth={})
    assert b"supernode_digest_mismatches_total 1.0" in metrics
