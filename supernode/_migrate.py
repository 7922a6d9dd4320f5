"""Schema migrations through Alembic's API, on an engine the caller already holds.

`upgrade` runs at every service start and from `supernode db upgrade`; `downgrade` from
`supernode db downgrade`. Each runs in one transaction on a connection of the given async
engine (Alembic's "connection sharing" recipe), so it works inside a running event loop.
Alembic and SQLAlchemy failures leave as `DatabaseError`.
"""

from __future__ import annotations

from collections.abc import Callable

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from migrations import SCRIPT_LOCATION

from ._database import describe
from ._errors import DatabaseError

Step = Callable[[Config, str], None]


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic config for our script directory, bound to a connection or a URL."""
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["connection"] = connection
    config.attributes["url"] = url
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise DatabaseError(f"no migration versions under {SCRIPT_LOCATION}")
    return head


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    await _run(engine, command.upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    await _run(engine, command.downgrade, revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current)
    except SQLAlchemyError as exc:
        raise DatabaseError(f"reading the schema version failed: {describe(exc)}") from exc


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def _run(engine: AsyncEngine, step: Step, revision: str) -> None:
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_step_on, step, revision)
    except (SQLAlchemyError, CommandError) as exc:
        raise DatabaseError(f"migrating to {revision!r} failed: {describe(exc)}") from exc


def _step_on(connection: Connection, step: Step, revision: str) -> None:
    step(alembic_config(connection=connection), revision)
