"""Wire types the supernode's HTTP API adds to `protocol`: admin requests and answers.

Peer messages live in `protocol`; these are the few bodies only the service speaks (the
admin blacklist, health, the error body). Admin requests are `protocol.Message`s, so
they decode, validate and version-check through the same `protocol.decode`.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta, Struct

from protocol import BlobId, Message, PeerId

Reason = Annotated[str, Meta(max_length=4_096)]
MAX_BLACKLIST = 100_000


class BlacklistRequest(Message, tag="blacklist", frozen=True, kw_only=True):
    """Admin: bar a peer from serving one blob, or every blob when `blob_id` is null."""

    peer_id: PeerId
    blob_id: BlobId | None = None
    reason: Reason = ""


class BlacklistItem(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    peer_id: PeerId
    blob_id: BlobId | None = None
    reason: Reason = ""


class Blacklist(Message, tag="blacklist_entries", frozen=True, kw_only=True):
    """Every blacklist entry set by an admin or by a digest mismatch."""

    entries: Annotated[tuple[BlacklistItem, ...], Meta(max_length=MAX_BLACKLIST)] = ()


class Health(Struct, frozen=True, kw_only=True):
    """`/healthz`: the process is up and its database answered."""

    status: str
    peers: int
    blobs: int


class ErrorBody(Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Every 4xx/5xx answer: a stable `error` code, a human `detail`, the field at fault."""

    error: Annotated[str, Meta(pattern=r"^[a-z_]{1,64}$")]
    detail: str
    path: str | None = None


JobId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
SeedTaskLimit = Annotated[int, Meta(ge=1, le=1_024)]


class SeedTasksQuery(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Query of `GET /api/v1/seed-tasks`: which seed polls, and how many tasks at most."""

    peer_id: PeerId
    limit: SeedTaskLimit | None = None
