"""Repository tests, each run on SQLite and on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from supernode._database import normalize_url, open_engine
from supernode._errors import DatabaseError
from supernode._migrate import upgrade
from supernode._records import (
    BitmapRecord,
    BlacklistRecord,
    BlobRecord,
    HostRecord,
    JobRecord,
    PeerRecord,
    ReputationRecord,
    WriteBatch,
)
from supernode._repo import Repository

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
HOST_A = HostRecord("host-a", "a.example", "10.0.0.1", "zone-1", {"rack": "r1"})
HOST_B = HostRecord("host-b", "b.example", "10.0.0.2", "zone-2")
BLOB = BlobRecord("ab" * 32, chunk_count=20, size=20 << 20, origin="registry")


def _peer(peer_id: str, host: HostRecord = HOST_A, seen: datetime = T0) -> PeerRecord:
    return PeerRecord(
        peer_id,
        host,
        is_seed=peer_id.startswith("seed"),
        upload_capacity=8,
        http_url="http://127.0.0.1:65001",
        multiaddrs=("/ip4/127.0.0.1/tcp/4001",),
        registration={"peer_id": peer_id, "ports": [65001]},
        registered_at=T0,
        last_seen=seen,
    )


def _bitmap(peer_id: str, bits: bytes = b"\xff\x0f\x00") -> BitmapRecord:
    held = sum(bin(b).count("1") for b in bits)
    return BitmapRecord(peer_id, BLOB.blob_id, bits, held)


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(db_url)
    await upgrade(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def repo(engine: AsyncEngine) -> Repository:
    return Repository(engine)


async def _seed(repo: Repository) -> None:
    await repo.apply(
        WriteBatch(
            peers=[_peer("p1"), _peer("p2", HOST_B), _peer("seed1", HOST_B)],
            blobs=[BLOB],
            bitmaps=[_bitmap("p1"), _bitmap("p2", b"\x01\x00\x00")],
        )
    )


async def test_batch_round_trips_through_load(repo: Repository) -> None:
    job = JobRecord(
        "job-1",
        "running",
        image="reg/app:1",
        blobs=({"blob_id": BLOB.blob_id, "origin_url": "http://o/b"},),
        chunks_total=20,
        created_at=T0,
        updated_at=T0,
    )
    await _seed(repo)
    await repo.apply(WriteBatch(jobs=[job], blacklist_added=[BlacklistRecord("p2", "", "bad")]))
    snap = await repo.load()
    assert sorted(snap.peers, key=lambda p: p.peer_id) == [
        _peer("p1"),
        _peer("p2", HOST_B),
        _peer("seed1", HOST_B),
    ]
    assert snap.blobs == [BLOB]
    assert sorted(snap.bitmaps, key=lambda b: b.peer_id) == [
        _bitmap("p1"),
        _bitmap("p2", b"\x01\x00\x00"),
    ]
    assert snap.jobs == [job]
    assert snap.blacklist == [BlacklistRecord("p2", "", "bad")]


async def test_upserts_update_in_place_and_keep_first_registration(repo: Repository) -> None:
    await _seed(repo)
    later = T0 + timedelta(minutes=5)
    moved = _peer("p1", HOST_B, seen=later)
    renewed = PeerRecord(
        moved.peer_id, moved.host, upload_capacity=16, registered_at=later, last_seen=later
    )
    await repo.apply(WriteBatch(peers=[renewed], bitmaps=[_bitmap("p1", b"\xff\xff\x0f")]))
    snap = await repo.load()
    p1 = next(p for p in snap.peers if p.peer_id == "p1")
    assert (p1.host, p1.upload_capacity, p1.last_seen) == (HOST_B, 16, later)
    assert p1.registered_at == T0
    assert _bitmap("p1", b"\xff\xff\x0f") in snap.bitmaps
    assert len(snap.bitmaps) == 2


async def test_removing_peers_drops_their_bitmaps_and_orphan_hosts(repo: Repository) -> None:
    await _seed(repo)
    await repo.apply(WriteBatch(removed_peers=["p1", "p2"]))
    snap = await repo.load()
    assert [p.peer_id for p in snap.peers] == ["seed1"]
    assert snap.bitmaps == []
    assert {p.host.host_id for p in snap.peers} == {"host-b"}
    async with repo._sessions() as session:  # host-a had no peer left
        hosts = (await session.execute(text("SELECT host_id FROM hosts"))).scalars().all()
    assert hosts == ["host-b"]


async def test_removed_bitmaps_and_blacklist_entries(repo: Repository) -> None:
    await _seed(repo)
    entry = BlacklistRecord("p1", BLOB.blob_id, "digest mismatch")
    await repo.apply(WriteBatch(blacklist_added=[entry, BlacklistRecord("p2")]))
    await repo.apply(WriteBatch(removed_bitmaps=[("p1", BLOB.blob_id)], blacklist_removed=[entry]))
    snap = await repo.load()
    assert [b.peer_id for b in snap.bitmaps] == ["p2"]
    assert snap.blacklist == [BlacklistRecord("p2")]


async def test_duplicates_in_one_batch_last_wins(repo: Repository) -> None:
    await repo.apply(
        WriteBatch(
            peers=[_peer("p1"), _peer("p1", HOST_B)],
            blobs=[BLOB, BLOB],
            bitmaps=[_bitmap("p1"), _bitmap("p1", b"\x03\x00\x00")],
        )
    )
    snap = await repo.load()
    assert [p.host for p in snap.peers] == [HOST_B]
    assert snap.bitmaps == [_bitmap("p1", b"\x03\x00\x00")]


async def test_a_failing_batch_writes_nothing(repo: Repository) -> None:
    orphan = BitmapRecord("p1", "sha256:unknown", b"\x01", 1)  # no such blob: FK violation
    with pytest.raises(DatabaseError, match="writing"):
        await repo.apply(WriteBatch(peers=[_peer("p1")], bitmaps=[orphan]))
    snap = await repo.load()
    assert snap.peers == [] and snap.bitmaps == []


async def test_large_batches_pass_parameter_limits(repo: Repository) -> None:
    peers = [_peer(f"p{i}") for i in range(3000)]
    bitmaps = [_bitmap(f"p{i}", bytes([i % 256]) * 3) for i in range(3000)]
    await repo.apply(WriteBatch(peers=peers, blobs=[BLOB], bitmaps=bitmaps))
    snap = await repo.load()
    assert len(snap.peers) == 3000 and len(snap.bitmaps) == 3000
    await repo.apply(WriteBatch(removed_peers=[p.peer_id for p in peers]))
    assert (await repo.load()).peers == []


async def test_events_newest_first_and_pruning(repo: Repository) -> None:
    events = [
        ReputationRecord("p1", "failure", BLOB.blob_id, -0.1, "timeout", T0),
        ReputationRecord("p1", "digest_mismatch", BLOB.blob_id, -1.0, "chunk 3", T0 + timedelta(1)),
        ReputationRecord("p2", "success", at=T0),
    ]
    await repo.apply(WriteBatch(events=events))
    assert await repo.events("p1") == [events[1], events[0]]
    assert await repo.prune_events(T0 + timedelta(hours=1)) == 2
    assert await repo.events("p1") == [events[1]]


async def test_job_lookup(repo: Repository) -> None:
    job = JobRecord(
        "job-9",
        "pending",
        blobs=({"blob_id": "a"}, {"blob_id": "b"}),
        blobs_done=1,
        created_at=T0,
        updated_at=T0,
    )
    await repo.apply(WriteBatch(jobs=[job]))
    assert await repo.job("job-9") == job
    assert await repo.job("nope") is None


async def test_sqlite_runs_in_wal_mode(tmp_path: object) -> None:
    engine = open_engine(f"{tmp_path}/wal.db")
    try:
        async with engine.connect() as conn:
            mode = (await conn.execute(text("PRAGMA journal_mode"))).scalar()
            fks = (await conn.execute(text("PRAGMA foreign_keys"))).scalar()
    finally:
        await engine.dispose()
    assert (mode, fks) == ("wal", 1)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("/var/lib/sn.db", "sqlite+aiosqlite:////var/lib/sn.db"),
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p%40ss@h:5432/db", "postgresql+asyncpg://u:p%40ss@h:5432/db"),
        ("postgresql+asyncpg://h/db", "postgresql+asyncpg://h/db"),
    ],
)
def test_normalize_url(given: str, expected: str) -> None:
    assert normalize_url(given) == expected


@pytest.mark.parametrize("url", ["mysql://h/db", "postgresql://h:notaport/db"])
def test_unsupported_or_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(DatabaseError):
        normalize_url(url)
