"""Every message that passes between peers, seeds, admins and the supernode.

Rule: messages are frozen msgspec Structs that validate themselves completely on decode
(types and bounds through `Meta`, cross-field rules in `__post_init__`), so a message that
exists is a message the scheduler may trust. Envelopes carry `type` (the tag a decoder
dispatches on) and `version`; nested parts (range plans, parent results) are tagged too
where they form a union. Chunk ranges are half-open `[start, end)` pairs.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from typing import Annotated

from msgspec import Meta, Struct

from ._chunkset import ChunkSet
from ._errors import InvalidMessage
from ._types import (
    MAX_LABELS,
    MAX_MISMATCHED,
    MAX_MULTIADDRS,
    MAX_PARENTS,
    MAX_PLANS,
    MAX_PREHEAT_BLOBS,
    MAX_RANGES,
    MAX_RESULTS,
    MAX_SEED_TASKS,
    PROTOCOL_VERSION,
    BlobId,
    ChunkCount,
    ChunkIndex,
    ChunkRange,
    Count,
    HostName,
    HttpUrl,
    ImageRef,
    IpAddress,
    LabelKey,
    LabelValue,
    Millis,
    Multiaddr,
    OriginUrl,
    PeerId,
    Port,
    TaskId,
    Text,
)

__all__ = [
    "Announce",
    "AnyMessage",
    "ErrorAnswer",
    "FailureKind",
    "FromOrigin",
    "FromParents",
    "Heartbeat",
    "HeartbeatAnswer",
    "JobState",
    "JobStatus",
    "Leave",
    "Message",
    "Parent",
    "ParentResult",
    "PieceResults",
    "Plan",
    "PreheatBlob",
    "PreheatRequest",
    "RangePlan",
    "Register",
    "RegisterAnswer",
    "RetryLater",
    "ScheduleAnswer",
    "ScheduleRequest",
    "SeedTask",
    "SeedTaskBatch",
    "SeedTaskFailed",
    "Withdraw",
]

Ranges = Annotated[tuple[ChunkRange, ...], Meta(max_length=MAX_RANGES)]
Multiaddrs = Annotated[tuple[Multiaddr, ...], Meta(max_length=MAX_MULTIADDRS)]
Labels = Annotated[dict[LabelKey, LabelValue], Meta(max_length=MAX_LABELS)]


def _check_ranges(ranges: Iterable[ChunkRange], chunk_count: int | None, field: str) -> None:
    """Refuse empty, reversed or out-of-blob ranges, naming the first offender."""
    for i, (start, end) in enumerate(ranges):
        if start >= end:
            raise InvalidMessage(f"range [{start}, {end}) is empty", f"$.{field}[{i}]")
        if chunk_count is not None and end > chunk_count:
            raise InvalidMessage(
                f"range [{start}, {end}) ends past chunk_count {chunk_count}", f"$.{field}[{i}]"
            )


class Message(
    Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", kw_only=True, tag=True
):
    """Base of every envelope: a `type` tag plus the protocol `version`."""

    version: int = PROTOCOL_VERSION


# --- peer lifecycle ---------------------------------------------------------------------


class Register(Message, tag="register", frozen=True, kw_only=True):
    """A peer (or seed) joins: who it is, where it listens, what it can upload."""

    peer_id: PeerId
    host_name: HostName
    ip: IpAddress
    upload_port: Port
    proxy_port: Port | None = None
    http_url: HttpUrl | None = None
    multiaddrs: Multiaddrs = ()
    upload_capacity: Annotated[int, Meta(ge=0, le=4_096)] = 8
    labels: Labels = {}
    seed: bool = False

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.ip)
        except ValueError:
            raise InvalidMessage(f"{self.ip!r} is not an IP address", "$.ip") from None
        if self.http_url is None and not self.multiaddrs:
            raise InvalidMessage("a peer must offer http_url or a multiaddr", "$.http_url")

    @property
    def zone(self) -> str | None:
        """The `zone` label, used for locality."""
        return self.labels.get("zone")


class RegisterAnswer(Message, tag="register_answer", frozen=True, kw_only=True):
    """The supernode accepts a peer and tells it how often to speak."""

    peer_id: PeerId
    heartbeat_interval_ms: Annotated[int, Meta(ge=1, le=3_600_000)]
    expire_after_ms: Annotated[int, Meta(ge=1, le=86_400_000)]


class Heartbeat(Message, tag="heartbeat", frozen=True, kw_only=True):
    """A peer is alive; `current_uploads` is its load right now."""

    peer_id: PeerId
    current_uploads: Annotated[int, Meta(ge=0, le=65_535)] = 0


class Leave(Message, tag="leave", frozen=True, kw_only=True):
    """A peer leaves the mesh; the supernode forgets its chunks."""

    peer_id: PeerId


# --- availability -----------------------------------------------------------------------


class _ChunksOfBlob(Message, frozen=True, kw_only=True):
    """Chunks of one blob, as ranges, said by one peer (the body of announce and withdraw)."""

    peer_id: PeerId
    blob_id: BlobId
    chunk_count: ChunkCount
    ranges: Ranges

    def __post_init__(self) -> None:
        _check_ranges(self.ranges, self.chunk_count, "ranges")

    def chunks(self) -> ChunkSet:
        """The ranges as a set."""
        return ChunkSet.from_ranges(self.chunk_count, self.ranges)


class Announce(_ChunksOfBlob, tag="announce", frozen=True, kw_only=True):
    """Chunks of one blob that a peer holds and has verified (additive)."""


class Withdraw(_ChunksOfBlob, tag="withdraw", frozen=True, kw_only=True):
    """Chunks of one blob that a peer no longer holds (evicted or discarded from its cache)."""


# --- scheduling -------------------------------------------------------------------------


class ScheduleRequest(Message, tag="schedule", frozen=True, kw_only=True):
    """A peer wants chunks of a blob; empty `wanted` means the whole blob."""

    peer_id: PeerId
    blob_id: BlobId
    chunk_count: ChunkCount
    wanted: Ranges = ()
    origin_url: OriginUrl | None = None

    def __post_init__(self) -> None:
        _check_ranges(self.wanted, self.chunk_count, "wanted")

    def wanted_chunks(self) -> ChunkSet:
        """The wanted chunks as a set (every chunk when `wanted` is empty)."""
        if not self.wanted:
            return ChunkSet.full(self.chunk_count)
        return ChunkSet.from_ranges(self.chunk_count, self.wanted)


class Parent(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A peer to fetch from, with every address it offers."""

    peer_id: PeerId
    http_url: HttpUrl | None = None
    multiaddrs: Multiaddrs = ()


class RangePlan(
    Struct, frozen=True, forbid_unknown_fields=True, tag_field="action", kw_only=True, tag=True
):
    """What to do for the chunks `[start, end)` of the requested blob."""

    start: ChunkIndex
    end: Annotated[int, Meta(ge=1, le=1 << 24)]

    def __post_init__(self) -> None:
        if self.start >= self.end:
            raise InvalidMessage(f"range [{self.start}, {self.end}) is empty", "$.end")


class FromParents(RangePlan, tag="parents", frozen=True, kw_only=True):
    """Fetch from these parents, best first."""

    parents: Annotated[tuple[Parent, ...], Meta(min_length=1, max_length=MAX_PARENTS)]


class RetryLater(RangePlan, tag="retry", frozen=True, kw_only=True):
    """Nobody can serve these chunks yet (a seed is fetching them): ask again later."""

    retry_after_ms: Millis


class FromOrigin(RangePlan, tag="origin", frozen=True, kw_only=True):
    """Fetch these chunks from the origin yourself (no seed is available)."""

    origin_url: OriginUrl | None = None


Plan = FromParents | RetryLater | FromOrigin


class ScheduleAnswer(Message, tag="schedule_answer", frozen=True, kw_only=True):
    """One plan per range of the request, in the order to fetch them."""

    blob_id: BlobId
    plans: Annotated[tuple[Plan, ...], Meta(max_length=MAX_PLANS)]


class FailureKind(enum.StrEnum):
    """Why fetching from a parent went wrong (`none` when it did not)."""

    NONE = "none"
    TIMEOUT = "timeout"
    CONNECT = "connect"
    BUSY = "busy"
    NOT_FOUND = "not_found"
    DIGEST_MISMATCH = "digest_mismatch"
    PROTOCOL = "protocol"
    OTHER = "other"


class ParentResult(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What fetching from one parent gave: good chunks, bytes, time, and what failed."""

    parent_id: PeerId
    chunks_ok: Count = 0
    bytes: Count = 0
    duration_ms: Millis = 0
    failure: FailureKind = FailureKind.NONE
    mismatched: Annotated[tuple[ChunkIndex, ...], Meta(max_length=MAX_MISMATCHED)] = ()

    @property
    def digest_mismatch(self) -> bool:
        """True when the parent served at least one chunk with a wrong digest."""
        return bool(self.mismatched) or self.failure is FailureKind.DIGEST_MISMATCH


class PieceResults(Message, tag="piece_results", frozen=True, kw_only=True):
    """A peer reports how its parents served chunks of one blob."""

    peer_id: PeerId
    blob_id: BlobId
    results: Annotated[tuple[ParentResult, ...], Meta(max_length=MAX_RESULTS)]


# --- seeding and preheat ----------------------------------------------------------------


class SeedTask(Message, tag="seed_task", frozen=True, kw_only=True):
    """Supernode to seed: fetch these chunks of this blob from the origin.

    `chunk_count` is None when the blob's size is not known yet (a preheat by blob id);
    then `ranges` is empty and the seed fetches the whole blob.
    """

    task_id: TaskId
    blob_id: BlobId
    origin_url: OriginUrl
    chunk_count: ChunkCount | None = None
    ranges: Ranges = ()

    def __post_init__(self) -> None:
        if self.chunk_count is None and self.ranges:
            raise InvalidMessage("ranges need a chunk_count", "$.ranges")
        _check_ranges(self.ranges, self.chunk_count, "ranges")


class SeedTaskFailed(Message, tag="seed_task_failed", frozen=True, kw_only=True):
    """A seed could not do a task (the origin refused it, or failed): peers waiting on it
    should not wait any longer."""

    peer_id: PeerId
    task_id: TaskId
    blob_id: BlobId
    error: Text


class SeedTaskBatch(Message, tag="seed_tasks", frozen=True, kw_only=True):
    """Seed tasks handed to one seed at once."""

    tasks: Annotated[tuple[SeedTask, ...], Meta(max_length=MAX_SEED_TASKS)] = ()


class HeartbeatAnswer(Message, tag="heartbeat_answer", frozen=True, kw_only=True):
    """`known` is False when the supernode forgot the peer: it must register again."""

    known: bool = True
    seed_tasks: Annotated[tuple[SeedTask, ...], Meta(max_length=MAX_SEED_TASKS)] = ()


class PreheatBlob(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One blob to preheat and where seeds fetch it."""

    blob_id: BlobId
    origin_url: OriginUrl
    chunk_count: ChunkCount | None = None


class PreheatRequest(Message, tag="preheat", frozen=True, kw_only=True):
    """Admin: seed an image (by reference) or a list of blobs before peers ask."""

    image: ImageRef | None = None
    blobs: Annotated[tuple[PreheatBlob, ...], Meta(max_length=MAX_PREHEAT_BLOBS)] = ()

    def __post_init__(self) -> None:
        if (self.image is None) == (not self.blobs):
            raise InvalidMessage("give exactly one of image and blobs", "$.image")


class JobState(enum.StrEnum):
    """Life of a preheat job."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class JobStatus(Message, tag="job_status", frozen=True, kw_only=True):
    """Progress of a preheat job."""

    job_id: TaskId
    state: JobState
    blobs_total: Count = 0
    blobs_done: Count = 0
    chunks_total: Count = 0
    chunks_done: Count = 0
    error: Text | None = None


class ErrorAnswer(Message, tag="error", frozen=True, kw_only=True):
    """A request was refused: a stable `code`, a message, and the field at fault."""

    code: Annotated[str, Meta(pattern=r"^[a-z_]{1,64}$")]
    message: Text
    path: Annotated[str, Meta(max_length=512)] | None = None


AnyMessage = (
    Register
    | RegisterAnswer
    | Heartbeat
    | HeartbeatAnswer
    | Leave
    | Announce
    | Withdraw
    | ScheduleRequest
    | ScheduleAnswer
    | PieceResults
    | SeedTask
    | SeedTaskBatch
    | SeedTaskFailed
    | PreheatRequest
    | JobStatus
    | ErrorAnswer
)
"""Union of every envelope: the default target of `decode`."""
