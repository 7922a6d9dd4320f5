"""Migrations up and down on SQLite and PostgreSQL, and the schema they make matches the models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from supernode._database import open_engine
from supernode._errors import DatabaseError
from supernode._migrate import current_revision, downgrade, head_revision, upgrade
from supernode._models import Base

TABLES = {
    "hosts",
    "peers",
    "blobs",
    "availability",
    "preheat_jobs",
    "blacklist",
    "reputation_events",
}


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    engine = open_engine(db_url)
    yield engine
    await engine.dispose()


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_creates_the_models_schema(engine: AsyncEngine) -> None:
    await upgrade(engine)
    assert await current_revision(engine) == head_revision()
    async with engine.connect() as conn:
        assert await conn.run_sync(_tables) == TABLES
        assert await conn.run_sync(_diff) == []


async def test_downgrade_removes_everything_and_upgrade_again(engine: AsyncEngine) -> None:
    await upgrade(engine)
    await downgrade(engine)
    assert await current_revision(engine) is None
    async with engine.connect() as conn:
        assert await conn.run_sync(_tables) == set()
    await upgrade(engine)
    await upgrade(engine)  # a second upgrade is a no-op
    assert await current_revision(engine) == head_revision()


async def test_unknown_revision_is_a_database_error(engine: AsyncEngine) -> None:
    with pytest.raises(DatabaseError, match="nonexistent"):
        await upgrade(engine, "nonexistent")
