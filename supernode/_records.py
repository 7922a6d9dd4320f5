"""Plain records that cross between the in-memory scheduler and the database.

The repository takes and returns these, never ORM objects, so nothing outside `_repo.py`
holds a session-bound row. A `WriteBatch` is everything one flush writes in one
transaction; a `Snapshot` is everything loaded at start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class HostRecord:
    host_id: str
    hostname: str = ""
    ip: str = ""
    zone: str = ""
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """A peer and its host; `registration` is the register message as JSON-ready data."""

    peer_id: str
    host: HostRecord
    is_seed: bool = False
    upload_capacity: int = 0
    http_url: str = ""
    multiaddrs: tuple[str, ...] = ()
    registration: dict[str, Any] = field(default_factory=dict)
    registered_at: datetime = field(default_factory=utcnow)
    last_seen: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class BlobRecord:
    blob_id: str
    chunk_count: int
    size: int = 0
    origin: str = ""


@dataclass(frozen=True, slots=True)
class BitmapRecord:
    """Chunks of `blob_id` held by `peer_id`: bit i (LSB first in byte i // 8) is chunk i."""

    peer_id: str
    blob_id: str
    bitmap: bytes
    chunks_held: int


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A preheat job: what to fetch (`blobs`) and how far it got."""

    job_id: str
    state: str
    image: str = ""
    blobs: tuple[dict[str, Any], ...] = ()  # PreheatBlob fields, JSON-ready
    blobs_done: int = 0
    chunks_total: int = 0
    chunks_done: int = 0
    error: str = ""
    created_at: datetime = field(default_factory=utcnow)
    updated_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class BlacklistRecord:
    """`blob_id` empty means the peer may serve no blob at all."""

    peer_id: str
    blob_id: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReputationRecord:
    peer_id: str
    kind: str
    blob_id: str = ""
    delta: float = 0.0
    detail: str = ""
    at: datetime = field(default_factory=utcnow)


@dataclass(slots=True)
class WriteBatch:
    """Everything one flush writes. Upserts are applied before deletions."""

    peers: list[PeerRecord] = field(default_factory=list)
    blobs: list[BlobRecord] = field(default_factory=list)
    bitmaps: list[BitmapRecord] = field(default_factory=list)
    jobs: list[JobRecord] = field(default_factory=list)
    blacklist_added: list[BlacklistRecord] = field(default_factory=list)
    blacklist_removed: list[BlacklistRecord] = field(default_factory=list)
    events: list[ReputationRecord] = field(default_factory=list)
    removed_peers: list[str] = field(default_factory=list)
    removed_bitmaps: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return sum(len(getattr(self, f.name)) for f in fields(self))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The durable state as loaded at start, ready to replay into a fresh scheduler."""

    peers: list[PeerRecord]
    blobs: list[BlobRecord]
    bitmaps: list[BitmapRecord]
    jobs: list[JobRecord]
    blacklist: list[BlacklistRecord]
