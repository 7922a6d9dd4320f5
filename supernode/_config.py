"""Settings of one supernode service, as given on the command line or by a test."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import MAX_MESSAGE_BYTES

from ._database import DEFAULT_DB_PATH
from ._policy import PolicyConfig


@dataclass(frozen=True)
class SupernodeConfig:
    """`token` guards peer endpoints (None: open); admin endpoints need `admin_token`."""

    db_url: str = DEFAULT_DB_PATH
    token: str | None = None
    admin_token: str | None = None
    flush_interval: float = 0.2  # seconds between write-behind flushes
    expire_interval: float = 1.0  # seconds between sweeps for silent peers
    event_retention: float = 7 * 86_400.0  # seconds reputation events are kept
    migrate: bool = True  # run `db upgrade` at start
    max_body: int = MAX_MESSAGE_BYTES
    policy: PolicyConfig = field(default_factory=PolicyConfig)
