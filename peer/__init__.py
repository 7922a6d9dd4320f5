"""The peer daemon (`dfdaemon`): chunk server, supernode session, mesh fetcher, seed mode
and embedded FUSE mounts. See `_wire` for the chunk protocol on the wire, `_origins` for how
seeds learn a blob's chunk table, `_mesh` for how chunks are fetched from parents.

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
