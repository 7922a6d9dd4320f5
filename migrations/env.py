"""Alembic environment for the supernode: async engines, URL or connection given in code.

Callers (see `supernode._migrate`) put either an open synchronous connection in
`config.attributes["connection"]` (used as is, inside the caller's transaction) or a URL in
`config.attributes["url"]` (an async engine is made and disposed of here). Offline mode
renders SQL for the URL's dialect. SQLite gets batch mode so later ALTERs work there too.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from supernode._models import Base

config = context.config
target_metadata = Base.metadata


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(_run_on)
    finally:
        await engine.dispose()


def run_migrations_offline() -> None:
    context.configure(
        url=config.attributes["url"],
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_on(connection)
    else:
        asyncio.run(_run_async(config.attributes["url"]))


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
