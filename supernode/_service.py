"""The supernode's operations: the pure `Scheduler` plus a clock, records and job metadata.

Rule: this is the one place `PolicyError`s become `ApiError`s, and the one place scheduler
state becomes persistence records (`drain`) and records become scheduler state again
(`restore`). It does no I/O itself: handlers call it, the write-behind task drains it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime

import msgspec

from protocol import (
    Announce,
    ChunkSet,
    Heartbeat,
    HeartbeatAnswer,
    JobState,
    JobStatus,
    Leave,
    PieceResults,
    PreheatBlob,
    Register,
    RegisterAnswer,
    ScheduleAnswer,
    ScheduleRequest,
    SeedTaskBatch,
    SeedTaskFailed,
    Withdraw,
)

from ._errors import ApiError, Conflict, NotFound
from ._policy import (
    ChunkCountMismatch,
    PolicyChanges,
    PolicyConfig,
    PolicyError,
    Scheduler,
    UnknownJob,
    UnknownPeer,
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
from ._wire import Blacklist, BlacklistItem, BlacklistRequest

log = logging.getLogger("supernode")

MISMATCH_REASON = "served a chunk with a wrong digest"
_TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED})


@contextmanager
def _translated() -> Iterator[None]:
    """Policy errors leave as API errors with a stable code."""
    try:
        yield
    except UnknownPeer as exc:
        raise NotFound(str(exc), code="unknown_peer") from None
    except UnknownJob as exc:
        raise NotFound(str(exc), code="unknown_job") from None
    except ChunkCountMismatch as exc:
        raise Conflict(str(exc), code="chunk_count_mismatch") from None
    except PolicyError as exc:
        raise ApiError(str(exc)) from None


def peer_record(msg: Register, seen: datetime) -> PeerRecord:
    host = HostRecord(msg.host_name, msg.host_name, msg.ip, msg.zone or "", dict(msg.labels))
    return PeerRecord(
        peer_id=msg.peer_id,
        host=host,
        is_seed=msg.seed,
        upload_capacity=msg.upload_capacity,
        http_url=msg.http_url or "",
        multiaddrs=tuple(msg.multiaddrs),
        registration=msgspec.to_builtins(msg),
        registered_at=seen,
        last_seen=seen,
    )


def bitmap_record(peer_id: str, blob_id: str, chunks: ChunkSet) -> BitmapRecord:
    data = chunks.bits.to_bytes((chunks.chunk_count + 7) // 8, "little")
    return BitmapRecord(peer_id, blob_id, data, len(chunks))


def chunks_of(bitmap: BitmapRecord, chunk_count: int) -> ChunkSet:
    return ChunkSet(chunk_count, int.from_bytes(bitmap.bitmap, "little"))


@dataclass(slots=True)
class _Job:
    """What the service knows of a preheat job beyond the scheduler's view."""

    job_id: str
    image: str
    blobs: tuple[PreheatBlob, ...]
    created_at: datetime = field(default_factory=utcnow)
    status: JobStatus | None = None  # frozen once terminal, or while not in the scheduler
    written: JobStatus | None = None  # last status handed to the database


class Supernode:
    """Everything the HTTP handlers ask for, over one `Scheduler`."""

    def __init__(
        self,
        config: PolicyConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = Scheduler(config)
        self._clock = clock
        self._jobs: dict[str, _Job] = {}
        self._reasons: dict[tuple[str, str], str] = {}
        self._stored_blobs: set[str] = set()

    # --- peers --------------------------------------------------------------------------

    def register(self, msg: Register) -> RegisterAnswer:
        with _translated():
            return self.scheduler.register(msg, self._clock())

    def heartbeat(self, msg: Heartbeat) -> HeartbeatAnswer:
        with _translated():
            return self.scheduler.heartbeat(msg, self._clock())

    def leave(self, msg: Leave) -> None:
        """Idempotent: leaving twice, or unregistered, is not an error."""
        self.scheduler.leave(msg, self._clock())

    def announce(self, msg: Announce) -> None:
        with _translated():
            self.scheduler.announce(msg, self._clock())

    def seed_task_failed(self, msg: SeedTaskFailed) -> None:
        with _translated():
            self.scheduler.seed_task_failed(msg, self._clock())

    def withdraw(self, msg: Withdraw) -> None:
        with _translated():
            self.scheduler.withdraw(msg, self._clock())

    def schedule(self, msg: ScheduleRequest) -> ScheduleAnswer:
        with _translated():
            return self.scheduler.schedule(msg, self._clock())

    def report(self, msg: PieceResults) -> None:
        with _translated():
            self.scheduler.report(msg, self._clock())
        for result in msg.results:
            if result.digest_mismatch and self.scheduler.is_blacklisted(
                result.parent_id, msg.blob_id
            ):
                self._reasons.setdefault((result.parent_id, msg.blob_id), MISMATCH_REASON)

    def seed_tasks(self, peer_id: str, limit: int | None = None) -> SeedTaskBatch:
        with _translated():
            peer = self.scheduler.peer(peer_id)
            if peer is not None and not peer.seed:
                raise Conflict(f"peer {peer_id!r} is not a seed", code="not_a_seed")
            tasks = self.scheduler.take_seed_tasks(peer_id, self._clock(), limit)
        return SeedTaskBatch(tasks=tuple(tasks))

    def expire(self) -> list[str]:
        return self.scheduler.expire(self._clock())

    @property
    def peer_count(self) -> int:
        return len(self.scheduler.peers())

    @property
    def blob_count(self) -> int:
        return len(self.scheduler.blob_ids())

    @property
    def suspended_count(self) -> int:
        return self.scheduler.suspended_count(self._clock())

    # --- admin --------------------------------------------------------------------------

    def blacklist(self, msg: BlacklistRequest) -> None:
        self._reasons[msg.peer_id, msg.blob_id or ""] = msg.reason or "blacklisted by an admin"
        self.scheduler.blacklist(msg.peer_id, msg.blob_id)

    def blacklist_entries(self) -> Blacklist:
        items = (
            BlacklistItem(peer_id=peer, blob_id=blob or None, reason=reason)
            for (peer, blob), reason in sorted(self._reasons.items())
        )
        return Blacklist(entries=tuple(items))

    def new_job(self, image: str = "", blobs: Sequence[PreheatBlob] = ()) -> JobStatus:
        """Open a job; with blobs it is handed to the scheduler at once."""
        job = _Job(f"job-{uuid.uuid4().hex[:16]}", image, tuple(blobs))
        self._jobs[job.job_id] = job
        if job.blobs:
            return self.start_job(job.job_id, job.blobs)
        job.status = JobStatus(job_id=job.job_id, state=JobState.PENDING)
        return job.status

    def start_job(self, job_id: str, blobs: Sequence[PreheatBlob]) -> JobStatus:
        """Give a job's blobs (known now, e.g. resolved from an image) to the scheduler."""
        job = self._job(job_id)
        job.blobs, job.status = tuple(map(self._known_size, blobs)), None
        with _translated():
            return self.scheduler.preheat(job.blobs, self._clock(), job_id)

    def _known_size(self, item: PreheatBlob) -> PreheatBlob:
        """Fill in the chunk count of a blob the scheduler already knows."""
        blob = self.scheduler.blob(item.blob_id)
        if blob is None or item.chunk_count is not None:
            return item
        return msgspec.structs.replace(item, chunk_count=blob.chunk_count)

    def fail_job(self, job_id: str, error: str) -> None:
        job = self._job(job_id)
        job.status = JobStatus(job_id=job_id, state=JobState.FAILED, error=error[:4096])

    def job_status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        if job.status is None:
            with _translated():
                status = self.scheduler.job_status(job_id)
            if status.state in _TERMINAL:
                job.status = status
            return status
        return job.status

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"preheat job {job_id!r} is unknown", code="unknown_job")
        return job

    # --- persistence --------------------------------------------------------------------

    def drain(self) -> WriteBatch:
        """Everything changed since the last drain, as records to write."""
        changes = self.scheduler.drain_changes()
        now = utcnow()
        batch = WriteBatch(
            peers=[peer_record(msg, now) for msg in changes.peers.values()],
            removed_peers=sorted(changes.removed_peers),
            events=[
                ReputationRecord(e.peer_id, e.kind, e.blob_id, e.delta, e.detail, now)
                for e in changes.events
            ],
        )
        self._drain_holdings(changes, batch)
        batch.blacklist_added = [
            BlacklistRecord(p, b, self._reasons.setdefault((p, b), MISMATCH_REASON))
            for p, b in sorted(changes.blacklisted)
        ]
        batch.jobs = self._job_records(changes.jobs, now)
        return batch

    def _drain_holdings(self, changes: PolicyChanges, batch: WriteBatch) -> None:
        for (peer_id, blob_id), chunks in sorted(changes.holdings.items()):
            if chunks is None:
                batch.removed_bitmaps.append((peer_id, blob_id))
                continue
            batch.bitmaps.append(bitmap_record(peer_id, blob_id, chunks))
            if blob_id not in self._stored_blobs:
                batch.blobs.append(self._blob_record(blob_id))
                self._stored_blobs.add(blob_id)

    def _blob_record(self, blob_id: str) -> BlobRecord:
        blob = self.scheduler.blob(blob_id)
        assert blob is not None  # a holding exists, so does its blob
        return BlobRecord(blob_id, blob.chunk_count, origin=blob.origin_url or "")

    def _job_records(self, changed: set[str], now: datetime) -> list[JobRecord]:
        """Jobs the scheduler marked, plus any whose progress moved since last written."""
        records = []
        for job in self._jobs.values():
            status = self.job_status(job.job_id)
            if job.job_id in changed or status != job.written:
                job.written = status
                records.append(self._job_record(job, status, now))
        return records

    @staticmethod
    def _job_record(job: _Job, status: JobStatus, now: datetime) -> JobRecord:
        return JobRecord(
            job_id=job.job_id,
            state=status.state.value,
            image=job.image,
            blobs=tuple(msgspec.to_builtins(b) for b in job.blobs),
            blobs_done=status.blobs_done,
            chunks_total=status.chunks_total,
            chunks_done=status.chunks_done,
            error=status.error or "",
            created_at=job.created_at,
            updated_at=now,
        )

    def restore(self, snapshot: Snapshot) -> None:
        """Rebuild the scheduler from the database after a restart."""
        now = self._clock()
        for peer in snapshot.peers:
            self._restore_peer(peer, now)
        counts = {b.blob_id: b.chunk_count for b in snapshot.blobs}
        for bitmap in snapshot.bitmaps:
            self._restore_bitmap(bitmap, counts)
        self._restore_origins(snapshot.blobs)
        for entry in snapshot.blacklist:
            self._reasons[(entry.peer_id, entry.blob_id)] = entry.reason
            self.scheduler.blacklist(entry.peer_id, entry.blob_id or None)
        for record in snapshot.jobs:
            self._restore_job(record)
        self._stored_blobs = set(counts)
        self.scheduler.drain_changes()  # all of it is in the database already
        for job in self._jobs.values():
            job.written = self.job_status(job.job_id)

    def _restore_peer(self, peer: PeerRecord, now: float) -> None:
        try:
            msg = msgspec.convert(peer.registration, Register)
        except msgspec.ValidationError as exc:
            log.warning("dropping stored peer %s: bad registration: %s", peer.peer_id, exc)
            return
        self.scheduler.register(msg, now)

    def _restore_bitmap(self, bitmap: BitmapRecord, counts: dict[str, int]) -> None:
        try:
            chunks = chunks_of(bitmap, counts[bitmap.blob_id])
            self.scheduler.restore(bitmap.peer_id, bitmap.blob_id, chunks)
        except (KeyError, ValueError, PolicyError) as exc:
            log.warning(
                "dropping stored chunks of %s in %s: %s", bitmap.peer_id, bitmap.blob_id, exc
            )

    def _restore_origins(self, blobs: list[BlobRecord]) -> None:
        for record in blobs:
            blob = self.scheduler.blob(record.blob_id)
            if blob is not None and record.origin and blob.origin_url is None:
                blob.origin_url = record.origin

    def _restore_job(self, record: JobRecord) -> None:
        try:
            blobs = tuple(msgspec.convert(b, PreheatBlob) for b in record.blobs)
        except msgspec.ValidationError as exc:
            log.warning("dropping stored job %s: %s", record.job_id, exc)
            return
        job = _Job(record.job_id, record.image, blobs, record.created_at)
        self._jobs[job.job_id] = job
        state = JobState(record.state)
        if state in _TERMINAL or not blobs:
            job.status = _status_of(record, state)
        else:
            with _translated():
                self.scheduler.preheat(
                    tuple(map(self._known_size, blobs)), self._clock(), job.job_id
                )


def _status_of(record: JobRecord, state: JobState) -> JobStatus:
    if state not in _TERMINAL:  # an image never resolved before the restart
        state, error = JobState.FAILED, "the supernode restarted before the image was resolved"
        record = replace(record, error=error)
    return JobStatus(
        job_id=record.job_id,
        state=state,
        blobs_total=len(record.blobs),
        blobs_done=record.blobs_done,
        chunks_total=record.chunks_total,
        chunks_done=record.chunks_done,
        error=record.error or None,
    )
