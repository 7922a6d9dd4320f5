"""SQLAlchemy ORM models: the supernode's durable state, one class per table.

The tables hold what must survive a restart: hosts and their peers (with the registration
they sent, so it can be replayed), blobs, one availability bitmap per (peer, blob), preheat
jobs, the admin blacklist and an append-only log of reputation events. Hot scheduling state
lives in memory; these rows are written behind it. Migrations in `migrations/versions`
create exactly this schema; a test compares the two.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = String(255)  # peer, host, job ids and blob digests ("sha256:" + 64 hex fits easily)
UtcDateTime = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Host(Base):
    """A machine running one or more peer daemons; peers on one host never serve each other."""

    __tablename__ = "hosts"

    host_id: Mapped[str] = mapped_column(ID, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), default="")
    ip: Mapped[str] = mapped_column(String(64), default="")
    zone: Mapped[str] = mapped_column(String(255), default="")
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Peer(Base):
    """A registered peer daemon; `registration` is the message it sent, replayed at start."""

    __tablename__ = "peers"

    peer_id: Mapped[str] = mapped_column(ID, primary_key=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.host_id", ondelete="CASCADE"))
    is_seed: Mapped[bool] = mapped_column(Boolean, default=False)
    upload_capacity: Mapped[int] = mapped_column(Integer, default=0)
    http_url: Mapped[str] = mapped_column(Text, default="")
    multiaddrs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    registration: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    registered_at: Mapped[datetime] = mapped_column(UtcDateTime)
    last_seen: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_peers_host_id", "host_id"),)


class Blob(Base):
    """A blob (Dragonfly: a task), known by digest; chunks are numbered 0..chunk_count-1."""

    __tablename__ = "blobs"

    blob_id: Mapped[str] = mapped_column(ID, primary_key=True)
    chunk_count: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    origin: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Availability(Base):
    """Which verified chunks of one blob one peer holds: bit i set means chunk i is there."""

    __tablename__ = "availability"

    peer_id: Mapped[str] = mapped_column(
        ForeignKey("peers.peer_id", ondelete="CASCADE"), primary_key=True
    )
    blob_id: Mapped[str] = mapped_column(
        ForeignKey("blobs.blob_id", ondelete="CASCADE"), primary_key=True
    )
    bitmap: Mapped[bytes] = mapped_column(LargeBinary)
    chunks_held: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_availability_blob_id", "blob_id"),)


class PreheatJob(Base):
    """An admin request to have seeds fetch whole blobs before any peer asks."""

    __tablename__ = "preheat_jobs"

    job_id: Mapped[str] = mapped_column(ID, primary_key=True)
    state: Mapped[str] = mapped_column(String(32))
    image: Mapped[str] = mapped_column(Text, default="")
    blobs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    blobs_done: Mapped[int] = mapped_column(Integer, default=0)
    chunks_total: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_done: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class BlacklistEntry(Base):
    """A peer barred from serving one blob, or every blob when `blob_id` is empty."""

    __tablename__ = "blacklist"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    peer_id: Mapped[str] = mapped_column(ID)
    blob_id: Mapped[str] = mapped_column(ID, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (UniqueConstraint("peer_id", "blob_id", name="uq_blacklist_peer_blob"),)


class ReputationEvent(Base):
    """One thing that changed a peer's standing: a failure, a digest mismatch, a success."""

    __tablename__ = "reputation_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    peer_id: Mapped[str] = mapped_column(ID)
    blob_id: Mapped[str] = mapped_column(ID, default="")
    kind: Mapped[str] = mapped_column(String(64))
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    detail: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UtcDateTime)

    __table_args__ = (Index("ix_reputation_events_peer_id", "peer_id"),)
