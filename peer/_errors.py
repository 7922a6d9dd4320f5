"""The one exception tree of `peer`.

Every failure the peer daemon raises on purpose is a `PeerError`; aiohttp and registry
exceptions are translated where they are caught (the supernode client, the parent client,
the origin pool), each error carrying what it was about: the supernode URL and path, the
parent and blob and chunk range, the origin URL.

    PeerError
    ├── UsageError              a command-line value that cannot be used
    ├── OriginUrlError          an origin URL this peer cannot fetch from
    ├── ChunkTableMissing       no chunk table for a blob (nothing to verify chunks with)
    ├── SupernodeError          status, code
    │   ├── SupernodeUnavailable  refused connection, timeout, 5xx: fall back to the origin
    │   └── SupernodeRefused      a 4xx answer
    │       └── UnknownPeer         the supernode forgot us: register again
    ├── ParentError             parent_id, blob_id, kind (a protocol.FailureKind)
    ├── BadPieceTable           a file's piece table that does not parse (`_pieces`)
    └── DownloadError           a file not delivered; status, code (`_download`)
        ├── NotFoundAtOrigin        404
        ├── ContentDigestMismatch   409: the whole file is not the digest expected
        └── OriginUnreachable       502: refused connection, timeout
"""

from __future__ import annotations

from protocol import FailureKind


class PeerError(Exception):
    """Base of every error raised by the peer daemon."""


class UsageError(PeerError):
    """A command-line value that cannot be used."""


class OriginUrlError(PeerError):
    """An origin URL that does not name a blob this peer knows how to fetch."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"origin {url!r}: {reason}")
        self.url = url


class ChunkTableMissing(PeerError):
    """No chunk table is known for a blob, so its chunks cannot be verified."""

    def __init__(self, blob_id: str, reason: str) -> None:
        super().__init__(f"blob {blob_id}: no chunk table ({reason})")
        self.blob_id = blob_id


class SupernodeError(PeerError):
    """A request to the supernode failed."""

    def __init__(self, message: str, *, status: int | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SupernodeUnavailable(SupernodeError):
    """The supernode did not answer (refused, reset, timeout) or answered 5xx."""


class SupernodeRefused(SupernodeError):
    """The supernode answered a 4xx: the request itself was wrong."""


class UnknownPeer(SupernodeRefused):
    """The supernode does not know this peer (it expired or the supernode restarted)."""


class ParentError(PeerError):
    """Fetching chunks from a parent failed; `kind` is what to report."""

    def __init__(self, parent_id: str, blob_id: str, kind: FailureKind, detail: str) -> None:
        super().__init__(f"parent {parent_id}, blob {blob_id}: {kind.value}: {detail}")
        self.parent_id = parent_id
        self.blob_id = blob_id
        self.kind = kind
