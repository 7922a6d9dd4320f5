"""The peer daemon (`dfdaemon`): chunk server, supernode session, mesh fetcher, seed mode
and embedded FUSE mounts.

Design decisions (details in the modules named):

- Chunks on the wire (`_wire`): `GET /api/v1/blobs/{blob_id}/chunks?start=S&end=E` asks
  for a run of at most 1024 consecutive chunk indices; the answer streams `protocol` chunk
  frames (48-byte header: magic, version, LAST flag, codec, blob id, chunk index, length;
  then the chunk exactly as stored in the blob), one per chunk held, the last flagged. A
  chunk is named by blob id and index only. The receiver verifies every chunk.
- Serving by index (`rafs._cache`): the cache keeps a `<blob>.chunk_index` sidecar of
  56-byte records (offset, sizes, flags, compressor, digest), synced before a chunk's bit is
  set; the server serves a chunk only while its bit is set and its record unchanged.
- Chunk tables for seeds (`_origins`): a blob's origin URL carries the digest of its
  image's bootstrap layer, `.../blobs/sha256:B#nydus-bootstrap=sha256:D`; a seed fetches
  that layer (checked against D by the registry client) and so can verify every chunk it
  fetches. The supernode passes origin URLs through untouched: no message changed.
- Fetching (`_mesh`): cache -> mesh -> origin; parents in parallel, pipelined batches,
  per-round reports, failing/slow parents dropped, liars distrusted for the blob for good.
- Transports (`_parentclient.ChunkTransport`) and origins are classes a fetcher is given:
  libp2p, a registry mirror and dfget plug in beside the HTTP ones.
- Plain files and OCI layers (`_pieces`, `_download`, `_mirror`, `dfget`): fixed-size
  pieces of a blob keyed by the content digest (or URL), sha256 per piece recorded by the
  origin fetcher and published as a one-chunk "piece table" blob; the whole-file digest is
  checked before any byte is handed out (`GET /api/v1/download`, the `--mirror` registry).

Data dir: `cache/` (the verified chunk cache), `blobs/` (chunk counts known, to re-announce
after a restart), `bootstraps/` and `seed-bootstraps/`, `peer_id`, `mounts/N.sock` (the
nydusd API of a single mount), `fuse-root/` (the shared session of several mounts).

Rule: `peer` imports `protocol`, `rafs` and `fuse`, and none of them imports `peer`.
"""

from ._catalog import BlobCatalog, BlobEntry, entries_from_bootstrap
from ._chunkserver import UploadSlots, make_chunk_app
from ._errors import (
    ChunkTableMissing,
    OriginUrlError,
    ParentError,
    PeerError,
    SupernodeError,
    SupernodeRefused,
    SupernodeUnavailable,
    UnknownPeer,
    UsageError,
)
from ._mesh import Mesh, MeshConfig, MeshSource
from ._metrics import PeerMetrics
from ._options import DaemonOptions, MountSpec
from ._origins import OriginPool, RegistryBlobUrl
from ._parentclient import ChunkTransport, HttpChunkTransport
from ._parents import ParentBoard, SwitchPolicy
from ._ratelimit import RateLimiter, TokenBucket, parse_rate
from ._session import Backoff, SupernodeSession
from ._supernode import SupernodeClient

__all__ = [
    "Backoff",
    "BlobCatalog",
    "BlobEntry",
    "ChunkTableMissing",
    "ChunkTransport",
    "DaemonOptions",
    "HttpChunkTransport",
    "Mesh",
    "MeshConfig",
    "MeshSource",
    "MountSpec",
    "OriginPool",
    "OriginUrlError",
    "ParentBoard",
    "ParentError",
    "PeerError",
    "PeerMetrics",
    "RateLimiter",
    "RegistryBlobUrl",
    "SupernodeClient",
    "SupernodeError",
    "SupernodeRefused",
    "SupernodeSession",
    "SupernodeUnavailable",
    "SwitchPolicy",
    "TokenBucket",
    "UnknownPeer",
    "UploadSlots",
    "UsageError",
    "entries_from_bootstrap",
    "make_chunk_app",
    "parse_rate",
]
