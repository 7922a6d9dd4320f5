"""The chunk service's HTTP surface, declared once for the server and its clients.

    GET /api/v1/blobs/{blob_id}/chunks?start=S&end=E

asks for the chunks `[S, E)` of a blob by index (at most `MAX_RUN_CHUNKS` of them). The
answer is `200` with `Content-Type: application/vnd.nydus-mesh.chunks`: a stream of
`protocol` chunk frames, one per chunk the server holds verified, in index order, the last
one flagged LAST; chunks it does not hold are left out (the client sees which). `404` when
it holds none of them; `503` (with `Retry-After`) when every upload slot is busy; `400` for
a bad id or range. Errors are JSON `{"error", "detail"}`.

    GET /api/v1/blobs/{blob_id}/bitmap   the chunks held: bit i of byte i//8, as stored
    GET /metrics                         Prometheus text
    GET /healthz                         200 "ok"

Rule: a blob is named by its 64-hex id and a chunk by its index, never by a path; a frame
carries the chunk exactly as stored in the blob, and the receiver verifies its digest.
"""

from __future__ import annotations

import re

from ._errors import PeerError

API = "/api/v1"
CHUNKS_PATH = API + "/blobs/{blob_id}/chunks"
BITMAP_PATH = API + "/blobs/{blob_id}/bitmap"
CHUNKS_MEDIA_TYPE = "application/vnd.nydus-mesh.chunks"
MAX_RUN_CHUNKS = 1024
BLOB_ID = re.compile(r"^[0-9a-f]{64}$")


class BadChunkRequest(PeerError):
    """A chunk request whose blob id or range cannot be served."""


def chunks_url(base_url: str, blob_id: str, start: int, end: int) -> str:
    """Where to GET chunks `[start, end)` of a blob from the peer at `base_url`."""
    path = CHUNKS_PATH.format(blob_id=blob_id)
    return f"{base_url.rstrip('/')}{path}?start={start}&end={end}"


def parse_run(blob_id: str, start: str | None, end: str | None) -> tuple[int, int]:
    """Check a request's blob id and range; `(start, end)` or `BadChunkRequest`."""
    if not BLOB_ID.fullmatch(blob_id):
        raise BadChunkRequest(f"blob id {blob_id!r} is not 64 lowercase hex digits")
    if start is None or end is None or not start.isdigit() or not end.isdigit():
        raise BadChunkRequest(f"start {start!r} and end {end!r} must be chunk indices")
    first, stop = int(start), int(end)
    if not first < stop <= first + MAX_RUN_CHUNKS:
        raise BadChunkRequest(f"range [{first}, {stop}) is empty or longer than {MAX_RUN_CHUNKS}")
    return first, stop
