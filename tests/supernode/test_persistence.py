"""Write-behind and restarts: state survives a new app on the same database (SQLite, PG)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
from sqlalchemy import text

from supernode import Repository, open_engine
from supernode._keys import ENGINE, METRICS, REPOSITORY, WRITER

from .conftest import ADMIN_AUTH, RunningSupernode, start_supernode, supernode_config
from .test_api import BLOB, OTHER_BLOB, announce, parents, register, schedule

ORIGIN = "http://127.0.0.1:1/v2/app/blobs/sha256:" + OTHER_BLOB


async def _build_state(node: RunningSupernode) -> str:
    for peer in ("p1", "p2", "p3"):
        await register(node, peer, labels={"zone": "z1"})
    await register(node, "s1", seed=True)
    await announce(node, "p1", [[0, 6]])
    await announce(node, "p2", [[0, 10]])
    await announce(node, "p3", [[2, 3]])
    report = {
        "peer_id": "p3",
        "blob_id": BLOB,
        "results": [{"parent_id": "p2", "failure": "digest_mismatch"}],
    }
    assert (await node.post("/api/v1/piece-results", report))[0] == 204
    body = {"peer_id": "p3", "reason": "maintenance"}
    assert (await node.post("/api/v1/admin/blacklist", body, auth=ADMIN_AUTH))[0] == 204
    preheat = {"blobs": [{"blob_id": OTHER_BLOB, "origin_url": ORIGIN, "chunk_count": 4}]}
    status, job = await node.post("/api/v1/admin/preheat", preheat, auth=ADMIN_AUTH)
    assert status == 202
    return str(job["job_id"])


async def test_restart_brings_back_peers_bitmaps_blacklist_and_jobs(
    db_url: str, http: aiohttp.ClientSession
) -> None:
    first = await start_supernode(supernode_config(db_url), http)
    try:
        job_id = await _build_state(first)
    finally:
        await first.stop()  # the last flush happens here

    second = await start_supernode(supernode_config(db_url), http)
    try:
        _, health = await second.get("/healthz", auth={})
        assert (health["peers"], health["blobs"]) == (4, 2)  # BLOB, and the preheated one
        await register(second, "p9")
        plans = await schedule(second, "p9")
        # p2 is blacklisted for BLOB (digest mismatch), p3 for everything (admin)
        assert [(p["start"], p["end"], parents(p)) for p in plans if p["action"] == "parents"] == [
            (0, 6, ["p1"])
        ]
        _, listing = await second.get("/api/v1/admin/blacklist", auth=ADMIN_AUTH)
        assert sorted((e["peer_id"], e["blob_id"]) for e in listing["entries"]) == [
            ("p2", BLOB),
            ("p3", None),
        ]
        status, job = await second.get(f"/api/v1/admin/preheat/{job_id}", auth=ADMIN_AUTH)
        assert (status, job["blobs_total"]) == (200, 1)
        _, tasks = await second.get("/api/v1/seed-tasks", peer_id="s1")
        assert [t["blob_id"] for t in tasks["tasks"]] == [OTHER_BLOB]  # the job was resumed
        events = await second.app[REPOSITORY].events("p2")
        assert [e.kind for e in events] == ["digest_mismatch"]
    finally:
        await second.stop()


async def test_a_re_registering_peer_keeps_its_chunks(
    db_url: str, http: aiohttp.ClientSession
) -> None:
    first = await start_supernode(supernode_config(db_url), http)
    try:
        await register(first, "p1")
        await announce(first, "p1", [[0, 10]])
    finally:
        await first.stop()
    second = await start_supernode(supernode_config(db_url), http)
    try:
        await register(second, "p1")  # the peer notices the restart and registers again
        await register(second, "p2")
        assert [parents(p) for p in await schedule(second, "p2")] == [["p1"]]
    finally:
        await second.stop()


async def test_leaving_peers_are_deleted_from_the_database(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    db = str(tmp_path / "sn.db")
    node = await start_supernode(supernode_config(db), http)
    try:
        await register(node, "p1")
        await announce(node, "p1", [[0, 10]])
        await node.app[WRITER].flush()
        assert len((await node.app[REPOSITORY].load()).bitmaps) == 1
        assert (await node.post("/api/v1/peers/leave", {"peer_id": "p1"}))[0] == 204
        await node.app[WRITER].flush()
        snapshot = await node.app[REPOSITORY].load()
        assert (snapshot.peers, snapshot.bitmaps) == ([], [])
    finally:
        await node.stop()


async def test_writes_happen_behind_without_being_asked(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    node = await start_supernode(supernode_config(str(tmp_path / "sn.db")), http)
    try:
        await register(node, "p1")
        await announce(node, "p1", [[0, 3]])
        repo = node.app[REPOSITORY]
        for _ in range(100):
            if (await repo.load()).bitmaps:
                break
            await asyncio.sleep(0.02)
        assert [b.bitmap for b in (await repo.load()).bitmaps] == [b"\x07\x00"]
    finally:
        await node.stop()


async def test_a_failed_flush_is_retried_in_order(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    config = supernode_config(str(tmp_path / "sn.db"), flush_interval=3600)
    node = await start_supernode(config, http)
    writer, repo = node.app[WRITER], node.app[REPOSITORY]
    try:
        await register(node, "p1")
        await writer.flush()
        async with node.app[ENGINE].begin() as conn:  # a real failure: the table is gone
            await conn.execute(text("ALTER TABLE availability RENAME TO availability_away"))
        await announce(node, "p1", [[0, 4]])
        try:
            await writer.flush()
        except Exception as exc:
            assert "availability" in str(exc)
        else:
            raise AssertionError("the flush should have failed")
        assert writer.backlog == 1
        await announce(node, "p1", [[4, 8]])  # a newer batch queues behind the failed one
        async with node.app[ENGINE].begin() as conn:
            await conn.execute(text("ALTER TABLE availability_away RENAME TO availability"))
        assert await writer.flush() > 0
        assert writer.backlog == 0
        assert [b.bitmap for b in (await repo.load()).bitmaps] == [b"\xff\x00"]
        errors = node.app[METRICS].flush_errors._value.get()
        assert errors == 1
    finally:
        await node.stop()


async def test_repository_of_a_stopped_app_sees_everything(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    db = str(tmp_path / "sn.db")
    node = await start_supernode(supernode_config(db, flush_interval=3600), http)
    await register(node, "p1")
    await announce(node, "p1", [[0, 10]])
    await node.stop()  # nothing was flushed before: the shutdown flush must carry it all
    engine = open_engine(db)
    try:
        snapshot = await Repository(engine).load()
    finally:
        await engine.dispose()
    assert [p.peer_id for p in snapshot.peers] == ["p1"]
    assert [(b.peer_id, b.chunks_held) for b in snapshot.bitmaps] == [("p1", 10)]
