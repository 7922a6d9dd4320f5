"""Alembic environment and versions for the supernode database.

This directory is a package so the installed supernode can find it: `SCRIPT_LOCATION` is
what `supernode._migrate` hands Alembic as `script_location`. No alembic.ini is needed;
the database URL or an open connection is passed in programmatically.
"""

from pathlib import Path

SCRIPT_LOCATION = Path(__file__).resolve().parent

__all__ = ["SCRIPT_LOCATION"]
