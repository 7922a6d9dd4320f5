"""The chunk-level scheduler service: who holds which chunks, and where each peer fetches.

Layers, each in a private module behind this public surface:

- `Scheduler` (`_policy`): the pure scheduling core, no I/O;
- `Supernode` (`_service`): the scheduler plus clock, persistence records and preheat jobs;
- `make_app` (`_app`, `_api`, `_http`): the aiohttp service, its OpenAPI document, metrics;
- `Repository`, `open_engine`, `upgrade`/`downgrade` (`_repo`, `_database`, `_migrate`):
  SQLAlchemy persistence, written behind the scheduler by `WriteBehind`.
"""

from ._app import make_app, openapi_document
from ._config import SupernodeConfig
from ._database import normalize_url, open_engine
from ._errors import (
    ApiError,
    BadRequest,
    Conflict,
    DatabaseError,
    NotFound,
    PayloadTooLarge,
    SupernodeError,
    Unauthorized,
)
from ._metrics import Metrics
from ._migrate import current_revision, downgrade, head_revision, upgrade
from ._policy import PolicyConfig, Scheduler
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
)
from ._repo import Repository
from ._resolve import ResolveError, parse_reference, resolve_image
from ._service import Supernode
from ._wire import Blacklist, BlacklistItem, BlacklistRequest, ErrorBody, Health
from ._writeback import WriteBehind

__all__ = [
    "ApiError",
    "BadRequest",
    "BitmapRecord",
    "Blacklist",
    "BlacklistItem",
    "BlacklistRecord",
    "BlacklistRequest",
    "BlobRecord",
    "Conflict",
    "DatabaseError",
    "ErrorBody",
    "Health",
    "HostRecord",
    "JobRecord",
    "Metrics",
    "NotFound",
    "PayloadTooLarge",
    "PeerRecord",
    "PolicyConfig",
    "Repository",
    "ReputationRecord",
    "ResolveError",
    "Scheduler",
    "Snapshot",
    "Supernode",
    "SupernodeConfig",
    "SupernodeError",
    "Unauthorized",
    "WriteBatch",
    "WriteBehind",
    "current_revision",
    "downgrade",
    "head_revision",
    "make_app",
    "normalize_url",
    "open_engine",
    "openapi_document",
    "parse_reference",
    "resolve_image",
    "upgrade",
]
