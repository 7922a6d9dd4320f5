"""Opening the database: URL rules and the async engine with per-dialect settings.

A bare path means a SQLite file; SQLite runs in WAL mode with foreign keys on and a busy
timeout, so the write-behind flusher and readers do not block each other. PostgreSQL is
used through asyncpg. Anything else is refused with a `DatabaseError` naming the URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ._errors import DatabaseError

DEFAULT_DB_PATH = "supernode.db"
_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
_SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",
    "PRAGMA foreign_keys=ON",
    "PRAGMA busy_timeout=5000",
)


def normalize_url(url_or_path: str) -> str:
    """Turn a path or a driverless URL into an async SQLAlchemy URL string."""
    if "://" not in url_or_path:
        return f"sqlite+aiosqlite:///{Path(url_or_path).resolve()}"
    try:
        url = make_url(url_or_path)
    except (ArgumentError, ValueError) as exc:
        raise DatabaseError(f"malformed database URL {url_or_path!r}") from exc
    backend = url.get_backend_name()
    if backend not in _DRIVERS:
        raise DatabaseError(f"unsupported database {backend!r} in {url_or_path!r}")
    return url.set(drivername=_DRIVERS[backend]).render_as_string(hide_password=False)


def describe(exc: Exception) -> str:
    """One line about a database failure: the driver's own error when there is one."""
    original = getattr(exc, "orig", None) or exc
    lines = str(original).strip().splitlines() or [""]
    return f"{type(original).__name__}: {lines[0]}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _set_sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    for pragma in _SQLITE_PRAGMAS:
        cursor.execute(pragma)
    cursor.close()


def _check_sqlite_directory(url: str) -> None:
    """Refuse early: a SQLite file in a missing directory cannot be created."""
    database = make_url(url).database or ""
    if database and database != ":memory:" and not Path(database).parent.is_dir():
        raise DatabaseError(f"no directory {str(Path(database).parent)!r} for {database!r}")


def open_engine(url_or_path: str) -> AsyncEngine:
    """An engine for `url_or_path`; the caller disposes of it."""
    url = normalize_url(url_or_path)
    if is_sqlite(url):
        _check_sqlite_directory(url)
        engine = create_async_engine(url)
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)
