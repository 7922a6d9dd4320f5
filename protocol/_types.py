"""Constrained scalar types and size limits shared by every message.

Rule: every string and list that crosses the wire has a bound here, so a decoder refuses
oversized or ill-formed input before any of it reaches the scheduler.
"""

from __future__ import annotations

from typing import Annotated

from msgspec import Meta

__all__ = [
    "MAX_CHUNKS",
    "MAX_LABELS",
    "MAX_MESSAGE_BYTES",
    "MAX_MISMATCHED",
    "MAX_MULTIADDRS",
    "MAX_PARENTS",
    "MAX_PLANS",
    "MAX_PREHEAT_BLOBS",
    "MAX_RANGES",
    "MAX_RESULTS",
    "MAX_SEED_TASKS",
    "PROTOCOL_VERSION",
    "BlobId",
    "ChunkCount",
    "ChunkIndex",
    "ChunkRange",
    "Count",
    "HostName",
    "HttpUrl",
    "ImageRef",
    "IpAddress",
    "LabelKey",
    "LabelValue",
    "Millis",
    "Multiaddr",
    "OriginUrl",
    "PeerId",
    "Port",
    "TaskId",
    "Text",
]

PROTOCOL_VERSION = 1
"""Version carried by every envelope and every chunk frame."""

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
"""Largest encoded message `decode` accepts."""

MAX_CHUNKS = 1 << 24  # chunks per blob: 16 Mi chunks of >= 4 KiB
MAX_RANGES = 65_536  # ranges in one announce / request / seed task
MAX_PARENTS = 16  # candidate parents in one range plan
MAX_PLANS = 65_536  # range plans in one schedule answer
MAX_RESULTS = 1_024  # parent results in one piece report
MAX_MISMATCHED = 4_096  # digest-mismatch chunk indices in one parent result
MAX_LABELS = 32
MAX_MULTIADDRS = 8
MAX_SEED_TASKS = 1_024
MAX_PREHEAT_BLOBS = 4_096

BlobId = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="64 lowercase hex digits")]
PeerId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")]
TaskId = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")]
HostName = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}$")]
IpAddress = Annotated[str, Meta(pattern=r"^[0-9A-Fa-f:.]{2,45}$")]
Port = Annotated[int, Meta(ge=1, le=65_535)]
HttpUrl = Annotated[str, Meta(pattern=r"^https?://[^\s/]+\S*$", max_length=2_048)]
OriginUrl = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9+.-]*://\S+$", max_length=2_048)]
Multiaddr = Annotated[str, Meta(pattern=r"^/\S+$", max_length=512)]
ImageRef = Annotated[str, Meta(pattern=r"^\S+$", max_length=512)]
LabelKey = Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")]
LabelValue = Annotated[str, Meta(max_length=255)]
Text = Annotated[str, Meta(max_length=4_096)]
ChunkIndex = Annotated[int, Meta(ge=0, lt=MAX_CHUNKS)]
ChunkCount = Annotated[int, Meta(ge=1, le=MAX_CHUNKS)]
Count = Annotated[int, Meta(ge=0, le=(1 << 53))]
Millis = Annotated[int, Meta(ge=0, le=86_400_000)]
ChunkRange = tuple[
    Annotated[int, Meta(ge=0, lt=MAX_CHUNKS)],
    Annotated[int, Meta(ge=1, le=MAX_CHUNKS)],
]
"""Half-open range `[start, end)` of chunk indices, encoded as a two-element array."""
