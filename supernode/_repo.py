"""The repository: every query the supernode runs, over records rather than ORM rows.

Writes come in `WriteBatch`es applied in one transaction (upserts, then deletions), so a
flush is all-or-nothing. Upserts use the dialect's `INSERT ... ON CONFLICT`, which SQLite
and PostgreSQL share. SQLAlchemy errors leave this module as `DatabaseError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker

from ._database import describe
from ._errors import DatabaseError
from ._models import (
    Availability,
    Base,
    BlacklistEntry,
    Blob,
    Host,
    Peer,
    PreheatJob,
    ReputationEvent,
)
from ._records import (
    BitmapRecord,
    BlacklistRecord,
    BlobRecord,
    HostRecord,
    JobRecord,
    PeerRecord,
    ReputationRecord,
    Snapshot,
    WriteBatch,
    utcnow,
)

Row = dict[str, Any]


def _as_utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; everything stored is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _host_row(host: HostRecord, now: datetime) -> Row:
    return {
        "host_id": host.host_id,
        "hostname": host.hostname,
        "ip": host.ip,
        "zone": host.zone,
        "labels": dict(host.labels),
        "updated_at": now,
    }


def _peer_row(peer: PeerRecord) -> Row:
    return {
        "peer_id": peer.peer_id,
        "host_id": peer.host.host_id,
        "is_seed": peer.is_seed,
        "upload_capacity": peer.upload_capacity,
        "http_url": peer.http_url,
        "multiaddrs": list(peer.multiaddrs),
        "registration": peer.registration,
        "registered_at": peer.registered_at,
        "last_seen": peer.last_seen,
    }


def _blob_row(blob: BlobRecord, now: datetime) -> Row:
    return {
        "blob_id": blob.blob_id,
        "chunk_count": blob.chunk_count,
        "size": blob.size,
        "origin": blob.origin,
        "created_at": now,
    }


def _bitmap_row(bitmap: BitmapRecord, now: datetime) -> Row:
    return {
        "peer_id": bitmap.peer_id,
        "blob_id": bitmap.blob_id,
        "bitmap": bitmap.bitmap,
        "chunks_held": bitmap.chunks_held,
        "updated_at": now,
    }


def _job_row(job: JobRecord) -> Row:
    return {
        "job_id": job.job_id,
        "state": job.state,
        "image": job.image,
        "blobs": list(job.blobs),
        "blobs_done": job.blobs_done,
        "chunks_total": job.chunks_total,
        "chunks_done": job.chunks_done,
        "error": job.error,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
    }


def _blacklist_row(entry: BlacklistRecord, now: datetime) -> Row:
    return {
        "peer_id": entry.peer_id,
        "blob_id": entry.blob_id,
        "reason": entry.reason,
        "created_at": now,
    }


def _event_row(event: ReputationRecord) -> Row:
    return {
        "peer_id": event.peer_id,
        "blob_id": event.blob_id,
        "kind": event.kind,
        "delta": event.delta,
        "detail": event.detail,
        "at": event.at,
    }


def _peer_record(peer: Peer, host: Host) -> PeerRecord:
    host_record = HostRecord(host.host_id, host.hostname, host.ip, host.zone, dict(host.labels))
    return PeerRecord(
        peer_id=peer.peer_id,
        host=host_record,
        is_seed=peer.is_seed,
        upload_capacity=peer.upload_capacity,
        http_url=peer.http_url,
        multiaddrs=tuple(peer.multiaddrs),
        registration=dict(peer.registration),
        registered_at=_as_utc(peer.registered_at),
        last_seen=_as_utc(peer.last_seen),
    )


def _job_record(job: PreheatJob) -> JobRecord:
    return JobRecord(
        job_id=job.job_id,
        state=job.state,
        image=job.image,
        blobs=tuple(job.blobs),
        blobs_done=job.blobs_done,
        chunks_total=job.chunks_total,
        chunks_done=job.chunks_done,
        error=job.error,
        created_at=_as_utc(job.created_at),
        updated_at=_as_utc(job.updated_at),
    )


def _dedupe(rows: list[Row], keys: Sequence[str]) -> list[Row]:
    """Last row per key wins: one statement may not touch a row twice on PostgreSQL."""
    return list({tuple(row[k] for k in keys): row for row in rows}.values())


class Repository:
    """Queries over one engine. Create it with an engine; the caller owns the engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._sessions = async_sessionmaker(engine, expire_on_commit=False)
        self._dialect = engine.dialect.name
        self._upserts: dict[str, Any] = {}

    async def apply(self, batch: WriteBatch) -> None:
        """Write a whole batch in one transaction."""
        if not len(batch):
            return
        try:
            async with self._engine.begin() as connection:
                await self._apply(connection, batch, utcnow())
        except SQLAlchemyError as exc:
            raise DatabaseError(f"writing {len(batch)} records failed: {describe(exc)}") from exc

    async def load(self) -> Snapshot:
        """Everything needed to rebuild the scheduler after a restart."""
        try:
            async with self._sessions() as session:
                return await self._load(session)
        except SQLAlchemyError as exc:
            raise DatabaseError(f"loading state failed: {describe(exc)}") from exc

    async def ping(self) -> bool:
        """True when the database answers a trivial query."""
        try:
            async with self._engine.connect() as connection:
                await connection.execute(select(1))
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def job(self, job_id: str) -> JobRecord | None:
        async with self._sessions() as session:
            row = await session.get(PreheatJob, job_id)
            return None if row is None else _job_record(row)

    async def events(self, peer_id: str, limit: int = 100) -> list[ReputationRecord]:
        """The newest reputation events of one peer, newest first."""
        query = (
            select(ReputationEvent)
            .where(ReputationEvent.peer_id == peer_id)
            .order_by(ReputationEvent.id.desc())
            .limit(limit)
        )
        async with self._sessions() as session:
            rows = (await session.scalars(query)).all()
        return [
            ReputationRecord(e.peer_id, e.kind, e.blob_id, e.delta, e.detail, _as_utc(e.at))
            for e in rows
        ]

    async def prune_events(self, before: datetime) -> int:
        """Drop reputation events older than `before`; returns how many went."""
        try:
            async with self._engine.begin() as connection:
                result = await connection.execute(
                    delete(ReputationEvent).where(ReputationEvent.at < before)
                )
        except SQLAlchemyError as exc:
            raise DatabaseError(f"pruning events failed: {describe(exc)}") from exc
        return int(result.rowcount)

    async def _apply(self, conn: AsyncConnection, batch: WriteBatch, now: datetime) -> None:
        await self._upsert(conn, Host, [_host_row(p.host, now) for p in batch.peers], ["host_id"])
        await self._upsert(
            conn, Peer, [_peer_row(p) for p in batch.peers], ["peer_id"], keep=("registered_at",)
        )
        await self._upsert(
            conn, Blob, [_blob_row(b, now) for b in batch.blobs], ["blob_id"], keep=("created_at",)
        )
        await self._upsert(
            conn, Availability, [_bitmap_row(b, now) for b in batch.bitmaps], ["peer_id", "blob_id"]
        )
        await self._upsert(
            conn, PreheatJob, [_job_row(j) for j in batch.jobs], ["job_id"], keep=("created_at",)
        )
        await self._upsert(
            conn,
            BlacklistEntry,
            [_blacklist_row(e, now) for e in batch.blacklist_added],
            ["peer_id", "blob_id"],
            keep=("created_at",),
        )
        if batch.events:
            await conn.execute(insert(ReputationEvent), [_event_row(e) for e in batch.events])
        await self._delete_pairs(
            conn, BlacklistEntry, [(e.peer_id, e.blob_id) for e in batch.blacklist_removed]
        )
        await self._delete_pairs(conn, Availability, batch.removed_bitmaps)
        await self._delete_peers(conn, batch.removed_peers)

    async def _upsert(
        self,
        conn: AsyncConnection,
        model: type[Base],
        rows: list[Row],
        keys: list[str],
        keep: tuple[str, ...] = (),
    ) -> None:
        """`INSERT ... ON CONFLICT (keys) DO UPDATE` every column but the keys and `keep`."""
        if not rows:
            return
        rows = _dedupe(rows, keys)
        name = model.__tablename__
        statement = self._upserts.get(name)
        if statement is None:
            dialect_insert = postgresql.insert if self._dialect == "postgresql" else sqlite.insert
            stmt = dialect_insert(model)
            updated = {c: stmt.excluded[c] for c in rows[0] if c not in keys and c not in keep}
            statement = stmt.on_conflict_do_update(index_elements=keys, set_=updated)
            self._upserts[name] = statement
        await conn.execute(statement, rows)

    async def _delete_pairs(
        self,
        conn: AsyncConnection,
        model: type[Availability] | type[BlacklistEntry],
        pairs: list[tuple[str, str]],
    ) -> None:
        if pairs:
            columns = tuple_(model.peer_id, model.blob_id)
            await conn.execute(delete(model).where(columns.in_(pairs)))

    async def _delete_peers(self, conn: AsyncConnection, peer_ids: list[str]) -> None:
        if not peer_ids:
            return
        await conn.execute(delete(Availability).where(Availability.peer_id.in_(peer_ids)))
        await conn.execute(delete(Peer).where(Peer.peer_id.in_(peer_ids)))
        orphans = select(Peer.host_id).distinct()
        await conn.execute(delete(Host).where(Host.host_id.not_in(orphans)))

    async def _load(self, session: AsyncSession) -> Snapshot:
        peers = (await session.execute(select(Peer, Host).join(Host))).all()
        blobs = (await session.scalars(select(Blob))).all()
        bitmaps = (await session.scalars(select(Availability))).all()
        jobs = (await session.scalars(select(PreheatJob))).all()
        blacklist = (await session.scalars(select(BlacklistEntry))).all()
        return Snapshot(
            peers=[_peer_record(p, h) for p, h in peers],
            blobs=[BlobRecord(b.blob_id, b.chunk_count, b.size, b.origin) for b in blobs],
            bitmaps=[BitmapRecord(a.peer_id, a.blob_id, a.bitmap, a.chunks_held) for a in bitmaps],
            jobs=[_job_record(j) for j in jobs],
            blacklist=[BlacklistRecord(e.peer_id, e.blob_id, e.reason) for e in blacklist],
        )
